#!/usr/bin/env bash
# The loss study: one backbone, one budget, six heads; LFW 10-fold accuracy and TAR@FAR=1e-2.
# Usage: bash bench/loss_study.sh [STEPS]   (needs data/celeba299_aligned from `training.train prepare`)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
for head in softmax normface sphereface cosface arcface combined; do
  .venv/bin/python -m training.train \
    --data.root=data/celeba299_aligned \
    --data.val_images=../shared/data/lfw/images --data.val_pairs=../shared/data/lfw/pairs.txt \
    --data.val_cache=runs/loss_study/lfw_val_crops.npz --data.workers=1 \
    --model.backbone=iresnet18 --model.width=16 --model.embedding_dim=128 \
    --head.preset=$head --batch_size=64 --max_steps=$STEPS --optim.lr=0.1 \
    --optim.warmup_steps=20 --log_every=10 --checkpoint_every=100000 --seed=0 \
    --output_dir=runs/loss_study/$head
done
.venv/bin/python bench/loss_study_table.py runs/loss_study
