"""How often two models of one recipe disagree pair by pair on a verification .bin: the share of
pairs exactly one of them gets right (b + c), which sets the pair-sampling error of their
accuracy difference on the same pairs (bench/loss_study_stats.py: ``paired_pair_se``). Without
it the loss study can only bound that error.

Each model is scored as in training (flip-averaged embeddings, insightface's 10 contiguous folds,
each fold's threshold chosen on the other nine); a pair counts as right when the model's verdict
at its fold's threshold matches the label.

Usage: python bench/lfw_discordance.py --bin var/lfw.bin RUN_A RUN_B [--out JSON]
(RUN_*: training output folders with checkpoint.pt)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.evaluation import kfold_accuracy


def correct_per_pair(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Whether each pair is judged right at its fold's threshold (chosen on the other folds, as
    ``kfold_accuracy`` does: its mean accuracy is the mean of this per fold)."""
    _, _, thresholds = kfold_accuracy(scores, same, folds)
    right = np.zeros(len(scores), dtype=bool)
    for f, t in zip(np.unique(folds), thresholds, strict=True):
        at = folds == f
        right[at] = (scores[at] >= t) == same[at]
    return right


def discordance(right_a: np.ndarray, right_b: np.ndarray) -> dict[str, float]:
    """b + c (one right, the other wrong), both wrong, and each accuracy, as shares of pairs."""
    return {
        "discordant": float((right_a != right_b).mean()),
        "both_wrong": float((~right_a & ~right_b).mean()),
        "accuracy_a": float(right_a.mean()),
        "accuracy_b": float(right_b.mean()),
        "pairs": float(len(right_a)),
    }


def _scores(run: Path, crops: np.ndarray) -> np.ndarray:
    import torch

    from training.config import ModelConfig
    from training.pretrained import backbone_for
    from training.validation import embed_crops

    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    fields = ModelConfig.__dataclass_fields__
    config = ModelConfig(**{k: v for k, v in state["config"]["model"].items() if k in fields})
    backbone, norm, _ = backbone_for(config)
    backbone.load_state_dict(state["backbone"])
    with torch.no_grad():
        emb = embed_crops(backbone, crops, norm, torch.device("cpu"))
    return np.einsum("ij,ij->i", emb[0::2], emb[1::2])


def main() -> None:
    from service.bin_dataset import read_bin

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", required=True, type=Path)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = read_bin(args.bin)
    crops, same, folds = data.decode(), np.array(data.issame), data.folds()
    right = {run.name: correct_per_pair(_scores(run, crops), same, folds) for run in args.runs}
    pairs = [
        {"a": a, "b": b, **discordance(right[a], right[b])}
        for a, b in itertools.combinations(sorted(right), 2)
    ]
    result = {
        "bin": str(args.bin),
        "pairs_of_models": pairs,
        # what bench/loss_study_stats.py --discordance reads: the mean over the model pairs
        "discordant": float(np.mean([p["discordant"] for p in pairs])),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
