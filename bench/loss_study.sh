#!/usr/bin/env bash
# The loss study: one backbone, one budget, seven heads, three seeds each; LFW 10-fold on all
# 6,000 pairs, open-set DIR on Glint-24, angle histograms, then the table and the figures.
# Usage: bash bench/loss_study.sh [STEPS] [SEEDS]
#   LOSS_STUDY_HEADS="cosface combined" runs only those heads (e.g. two shells with
#   OMP_NUM_THREADS=1 each, splitting the heads, use both cores better than one shell)
#   (needs data/celeba299_aligned from `python -m training.train prepare`; about 10 minutes per
#   run on 2 CPU cores at the default 400 steps; runs already finished are skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}
SEEDS=${2:-"0 1 2"}
OUT=${LOSS_STUDY_OUT:-runs/loss_study}
mkdir -p "$OUT"
# name=overrides; scale unset everywhere: derived from the class count (training/losses.py)
HEADS=(
  "softmax=--head.preset=softmax"
  "softmax-nobias=--head.preset=softmax --head.bias=false"
  "normface=--head.preset=normface"
  # the paper's λ annealing (λ0 = 1000, p = 1, λ_min = 5) compressed into this budget: γ = 0.5
  # brings λ to 5 at step 400 (the paper's γ = 0.12 would leave λ >= 20, SphereFace ≈ NormFace)
  "sphereface=--head.preset=sphereface --head.lambda_gamma=0.5"
  "cosface=--head.preset=cosface"
  "arcface=--head.preset=arcface"
  "combined=--head.preset=combined"
)
for seed in $SEEDS; do
  for entry in "${HEADS[@]}"; do
    name=${entry%%=*}
    overrides=${entry#*=}
    if [ -n "${LOSS_STUDY_HEADS:-}" ] && [[ " $LOSS_STUDY_HEADS " != *" $name "* ]]; then
      continue
    fi
    run="$OUT/$name-s$seed"
    if [ -f "$run/metrics.json" ]; then
      echo "skip $run (done)"
      continue
    fi
    rm -rf "$run"
    # shellcheck disable=SC2086
    nice -n 10 .venv/bin/python -m training.train \
      --data.root=data/celeba299_aligned \
      --data.val_images=../shared/data/lfw/images --data.val_pairs=../shared/data/lfw/pairs.txt \
      --data.val_cache="$OUT/lfw_val_crops.npz" --data.workers=1 \
      --data.openset_images=../shared/data/glint24_aligned \
      --model.backbone=iresnet18 --model.width=16 --model.embedding_dim=128 \
      $overrides --batch_size=64 --max_steps="$STEPS" --optim.lr=0.1 \
      --optim.warmup_steps=40 --log_every=10 --checkpoint_every=100000 \
      --angle_snapshots=5 --angle_samples=1024 --seed="$seed" \
      --output_dir="$run" > "$OUT/$name-s$seed.log" 2>&1
    echo "done $run"
  done
done
# the study of record writes docs/; any other LOSS_STUDY_OUT keeps its summary and figures
if [ "$OUT" = runs/loss_study ]; then DOCS=docs; else DOCS=$OUT; fi
.venv/bin/python bench/loss_study_table.py "$OUT" "$DOCS/loss_study_summary.json"
.venv/bin/python bench/loss_study_plot.py "$OUT" "$DOCS"
