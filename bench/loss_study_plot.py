"""The loss study's figures for docs/loss_study.md.

- ``loss_study.png``: per head, the mean over seeds (band: min to max) of the training loss,
  the plain (margin-free) training accuracy and the mean target angle, against the step;
- ``loss_study_angles.png``: the distribution of the angle between each training feature and
  its class centre at each snapshot, one panel per head (seed 0), as in the ArcFace paper's
  figure of target-angle distributions.

Usage: python bench/loss_study_plot.py [RUNS] [OUT_DIR]
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_study_table import ORDER


def curves(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per head: step and (seeds, steps) arrays of loss, plain accuracy and target angle."""
    by_head: dict[str, list[list[dict[str, float]]]] = defaultdict(list)
    for run in sorted(p for p in root.iterdir() if (p / "log.jsonl").is_file()):
        rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
        train = [r for r in rows if "plain_accuracy" in r]
        if (run / "metrics.json").is_file() and train:
            by_head[re.sub(r"-s\d+$", "", run.name)].append(train)
    out = {}
    for head, runs in by_head.items():
        n = min(len(r) for r in runs)
        out[head] = {
            "step": np.array([r["step"] for r in runs[0][:n]]),
            **{
                k: np.array([[r[k] for r in run[:n]] for run in runs])
                for k in ("loss", "plain_accuracy", "target_angle_deg")
            },
        }
    return out


def ordered(heads: list[str]) -> list[str]:
    return sorted(heads, key=lambda h: ORDER.index(h) if h in ORDER else len(ORDER))


def plot_curves(data: dict[str, dict[str, np.ndarray]], out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    titles = {
        "loss": "training loss (log scale)",
        "plain_accuracy": "plain training accuracy (margin-free logits)",
        "target_angle_deg": "mean angle to the class centre, degrees",
    }
    for ax, key in zip(axes, titles, strict=True):
        for head in ordered(list(data)):
            d = data[head]
            mean = d[key].mean(axis=0)
            ax.plot(d["step"], mean, label=f"{head} ({len(d[key])} seeds)")
            ax.fill_between(d["step"], d[key].min(axis=0), d[key].max(axis=0), alpha=0.15)
        ax.set(title=titles[key], xlabel="step")
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def plot_angles(root: Path, out: Path) -> None:
    runs = {
        re.sub(r"-s0$", "", p.name): p
        for p in root.iterdir()
        if p.name.endswith("-s0") and (p / "angles.jsonl").is_file()
    }
    heads = ordered(list(runs))
    cols = min(4, len(heads))
    rows = -(-len(heads) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), sharey=True)
    axes = np.atleast_1d(grid).ravel()
    for ax in axes[len(heads) :]:
        ax.axis("off")
    for ax, head in zip(axes, heads, strict=False):
        snaps = [json.loads(x) for x in (runs[head] / "angles.jsonl").read_text().splitlines()]
        colours = plt.cm.viridis(np.linspace(0, 1, len(snaps)))  # type: ignore[attr-defined]
        for snap, colour in zip(snaps, colours, strict=True):
            counts = np.asarray(snap["counts"], dtype=float)
            edges = np.arange(len(counts) + 1) * snap["bin_deg"]
            ax.stairs(counts / counts.sum(), edges, color=colour, label=f"step {snap['step']}")
        ax.set(title=head, xlabel="angle to class centre, deg", xlim=(0, 120))
    for ax in axes[::cols]:
        ax.set_ylabel("share of training features")
    axes[len(heads) - 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/loss_study")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs")
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(curves(root), out / "loss_study.png")
    plot_angles(root, out / "loss_study_angles.png")


if __name__ == "__main__":
    main()
