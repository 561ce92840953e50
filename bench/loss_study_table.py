"""Collect the loss study's runs into a JSON summary and a Markdown table (stdout)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/loss_study")
    rows = []
    for run in sorted(p for p in root.iterdir() if (p / "metrics.json").is_file()):
        m = json.loads((run / "metrics.json").read_text())
        c = json.loads((run / "config.json").read_text())
        log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
        speeds = [r["samples_per_s"] for r in log if "samples_per_s" in r][1:]
        rows.append(
            {
                "head": c["head"]["preset"],
                "lfw_accuracy": m.get("lfw_accuracy"),
                "lfw_accuracy_std": m.get("lfw_accuracy_std"),
                "tar_at_far_1e-2": m.get("lfw_tar_at_far_1e-2"),
                "final_loss": m.get("loss"),
                "final_train_accuracy": m.get("accuracy"),
                "samples_per_s": sum(speeds) / len(speeds) if speeds else None,
                "steps": m.get("step"),
            }
        )
    (root / "summary.json").write_text(json.dumps(rows, indent=2))
    print("| head | LFW 10-fold acc | TAR@FAR=1e-2 | final loss | train acc | samples/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['head']} | {r['lfw_accuracy']:.4f} ± {r['lfw_accuracy_std']:.4f} | "
            f"{r['tar_at_far_1e-2']:.4f} | {r['final_loss']:.3f} | "
            f"{r['final_train_accuracy']:.3f} | {r['samples_per_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
