"""One figure for docs/loss_study.md: training loss per head, and LFW accuracy per head."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/loss_study")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/loss_study.png")
    fig, (ax_loss, ax_acc, ax_lfw) = plt.subplots(1, 3, figsize=(15, 4))
    names, lfw = [], []
    for run in sorted(p for p in root.iterdir() if (p / "log.jsonl").is_file()):
        rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
        train = [r for r in rows if "loss" in r]
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=run.name)
        ax_acc.plot([r["step"] for r in train], [r["accuracy"] for r in train], label=run.name)
        val = [r for r in rows if "lfw_accuracy" in r]
        if val:
            names.append(run.name)
            lfw.append(val[-1]["lfw_accuracy"])
    ax_loss.set(title="training loss (log scale)", xlabel="step", yscale="log")
    ax_acc.set(title="training accuracy on margin logits", xlabel="step", ylim=(0, 1))
    ax_lfw.bar(names, lfw)
    ax_lfw.set(title="LFW 10-fold accuracy at 200 steps", ylim=(0.5, 1.0))
    ax_lfw.tick_params(axis="x", rotation=30)
    ax_loss.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main()
