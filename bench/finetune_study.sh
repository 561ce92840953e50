#!/usr/bin/env bash
# Fine-tuning from a pretrained recognizer, measured: SFace (the shipped model) fine-tuned with
# an ArcFace head on the first N CelebA-299 identities, then verification on the identities it
# never saw (TAR at FAR 1e-3, all same-identity pairs and 5x as many different ones) and on LFW
# View-2 (10-fold, 6,000 pairs), before and after. Figures land in runs/finetune/*/report.json.
# Usage: [FINETUNE_LR=0.01] [FINETUNE_FREEZE=0] [FINETUNE_OUT=runs/finetune] bash bench/finetune_study.sh
#          [TRAIN_IDENTITIES] [STEPS]
#   (needs data/celeba299_aligned from `python -m training.train prepare`)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
STEPS=${2:-150}
LR=${FINETUNE_LR:-0.01}
FREEZE=${FINETUNE_FREEZE:-0}  # steps with the backbone held (only the head learns)
OUT=${FINETUNE_OUT:-runs/finetune}
NAME=sface-ft-celeba$N-arcface
DATA=../shared/data
mkdir -p "$OUT/models"
# the service's models plus the fine-tuned one, in a registry of its own
for m in retinaface-mnet025 yunet-2023mar sface-2021dec; do
  ln -sfn "$PWD/models/$m" "$OUT/models/$m"
done
.venv/bin/python bench/celeba_heldout_pairs.py --aligned data/celeba299_aligned \
  --skip-first "$N" > "$OUT/heldout_pairs.csv"
eval_both() {  # model, label (a report already there is kept: reruns resume)
  [ -f "$OUT/$2-heldout/report.json" ] ||
    .venv/bin/marginface eval pairs --csv "$OUT/heldout_pairs.csv" --model "$1" \
      --models-dir "$OUT/models" --device cpu --json --out "$OUT/$2-heldout" > /dev/null
  [ -f "$OUT/$2-lfw/report.json" ] ||
    .venv/bin/marginface eval lfw --images $DATA/lfw/images --pairs $DATA/lfw/pairs.txt \
      --model "$1" --models-dir "$OUT/models" --device cpu --json --out "$OUT/$2-lfw" > /dev/null
}
eval_both sface-2021dec before
if [ ! -f "$OUT/run/metrics.json" ]; then
  nice -n 5 .venv/bin/python -m training.train --data.root=data/celeba299_aligned \
    --data.max_identities="$N" --data.workers=1 \
    --model.init=sface-2021dec --model.embedding_dim=128 \
    --head.preset=arcface --batch_size=32 --max_steps="$STEPS" \
    --optim.lr="$LR" --model.freeze_steps="$FREEZE" --optim.warmup_steps=20 --log_every=10 --checkpoint_every=100000 \
    --seed=0 --output_dir="$OUT/run" > "$OUT/train.log" 2>&1
fi
.venv/bin/python -m training.train export "$OUT/run" --name "$NAME" --models-dir "$OUT/models" \
  --parity-images "data/celeba299_aligned/$(ls data/celeba299_aligned | head -1)" \
  --licence "CelebA: non-commercial research only" > "$OUT/export.json"
eval_both "$NAME" after
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for when in ("before", "after"):
    h = json.loads((out / f"{when}-heldout/report.json").read_text())
    l = json.loads((out / f"{when}-lfw/report.json").read_text())
    rows[when] = {
        "heldout_tar_at_far_1e-3": h["tar_at_far"]["1e-03"]["tar"],
        "heldout_pairs": h.get("pairs"),
        "lfw_kfold_accuracy": l["kfold_accuracy_mean"],
        "lfw_kfold_std": l["kfold_accuracy_std"],
        "lfw_tar_at_far_1e-3": l["tar_at_far"]["1e-03"]["tar"],
    }
print(json.dumps(rows, indent=2))
(out / "summary.json").write_text(json.dumps(rows, indent=2))
PY
