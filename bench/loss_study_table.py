"""The loss study's numbers: every run, mean ± std across seeds per head, and each literature
claim checked against them. Writes docs/loss_study_summary.json; prints the Markdown tables.

Usage: python bench/loss_study_table.py [RUNS] [SUMMARY_JSON]
(runs are folders NAME-sSEED with metrics.json, config.json, log.jsonl and angles.jsonl; RUNS
may instead be a summary JSON, whose per-run records are then summarised again, e.g. after a
change to the claims: python bench/loss_study_table.py docs/loss_study_summary.json)
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loss_study_stats import paired_test

#: the plain training accuracy whose first crossing counts as "converged" for the CosFace vs
#: ArcFace claim (about half of what every head reaches at the end of the budget)
CONVERGED_AT = 0.35
ORDER = ("softmax", "softmax-nobias", "normface", "sphereface", "cosface", "arcface", "combined")


def read_run(run: Path) -> dict[str, Any]:
    """One run's final metrics and what its logs say."""
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in log if "plain_accuracy" in r]
    # batch accuracies of 64 samples are noisy: the mean of 3 consecutive logs must cross
    smooth = [
        (train[i]["step"], statistics.fmean(r["plain_accuracy"] for r in train[i - 2 : i + 1]))
        for i in range(2, len(train))
    ]
    crossed = [step for step, a in smooth if a >= CONVERGED_AT]
    angles = []
    if (run / "angles.jsonl").is_file():
        angles = [json.loads(x) for x in (run / "angles.jsonl").read_text().splitlines() if x]
    max_angle = None  # the largest target angle in any snapshot (upper bin edge)
    for snap in angles:
        nonzero = [i for i, c in enumerate(snap["counts"]) if c]
        if nonzero:
            top = (nonzero[-1] + 1) * snap["bin_deg"]
            max_angle = top if max_angle is None else max(max_angle, top)
    head = config["head"]
    return {
        "run": run.name,
        "seed": config.get("seed"),
        "preset": head.get("preset"),
        "lfw_accuracy": metrics["lfw_accuracy"],
        "lfw_accuracy_fold_std": metrics.get("lfw_accuracy_std"),
        "lfw_pairs": metrics.get("lfw_pairs"),
        "lfw_tar_at_far_1e-2": metrics.get("lfw_tar_at_far_1e-2"),
        "openset_dir_at_fpir_1e-2": metrics.get("openset_dir_at_fpir_1e-2"),
        "openset_rank1": metrics.get("openset_rank1"),
        "plain_accuracy": metrics.get("plain_accuracy"),
        "margin_accuracy": metrics.get("accuracy"),
        "target_angle_deg": metrics.get("target_angle_deg"),
        "target_angle_deg_max": max_angle,
        "past_fallback_max": max((r.get("past_arcface_fallback", 0.0) for r in train), default=0),
        "scale": metrics.get("scale"),
        "steps": metrics.get("step"),
        "steps_to_plain_accuracy": crossed[0] if crossed else None,
        "samples_per_s": statistics.median(r["samples_per_s"] for r in train[1:])
        if len(train) > 1
        else None,
    }


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation, ignoring missing values."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return None, None
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per head: seeds and mean ± std of every figure."""
    by_head: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_head[re.sub(r"-s\d+$", "", r["run"])].append(r)
    keys = [k for k in runs[0] if k not in ("run", "seed", "preset")] if runs else []
    out = {}
    for head in sorted(by_head, key=lambda h: ORDER.index(h) if h in ORDER else len(ORDER)):
        rows = by_head[head]
        entry: dict[str, Any] = {"seeds": sorted(r["seed"] for r in rows)}
        for k in keys:
            mean, std = mean_std([r[k] for r in rows])
            entry[k] = {"mean": mean, "std": std}
        out[head] = entry
    return out


def paired(runs: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Head a minus head b seed by seed. A seed fixes the backbone's initial weights and the
    order of the batches for every head, so what a seed does to all heads alike (a hard data
    order) cancels in the difference. With three seeds a consistent sign is weak evidence: the
    paired t-test and the sign test say how weak (bench/loss_study_stats.py adds the interval,
    Holm's correction over all heads and LFW's own sampling error)."""
    by = {
        (re.sub(r"-s\d+$", "", r["run"]), r["seed"]): r["lfw_accuracy"]
        for r in runs
        if r["lfw_accuracy"] is not None
    }
    seeds = sorted(s for h, s in by if h == a and (b, s) in by)
    diffs = [by[(a, s)] - by[(b, s)] for s in seeds]
    mean, std = mean_std(diffs)
    out: dict[str, Any] = {
        "seeds": seeds,
        "differences": diffs,
        "mean": mean,
        "std": std,
        "positive": f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
    }
    if len(diffs) > 1:
        test = paired_test(diffs)
        out.update(ci95=[test.ci_low, test.ci_high], d_z=test.d_z, p_t=test.p_t, p_sign=test.p_sign)
    return out


def claims(
    heads: dict[str, dict[str, Any]], runs: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Each literature claim as a comparison of two heads' seed means, with the seed spread,
    and seed by seed (``paired``)."""

    def acc(h: str) -> tuple[float, float]:
        return heads[h]["lfw_accuracy"]["mean"], heads[h]["lfw_accuracy"]["std"]

    found = []

    def compare(claim: str, a: str, b: str) -> None:
        if a not in heads or b not in heads:
            return
        (ma, sa), (mb, sb) = acc(a), acc(b)
        found.append(
            {
                "claim": claim,
                "a": a,
                "b": b,
                "lfw_a": ma,
                "lfw_b": mb,
                "difference": ma - mb,
                "seed_spread": max(sa, sb),
                "paired": paired(runs or [], a, b),
            }
        )

    compare("normalising weights and features helps (NormFace)", "normface", "softmax")
    compare("a zero bias costs nothing (SphereFace)", "softmax-nobias", "softmax")
    for margin in ("cosface", "arcface", "combined", "sphereface"):
        compare(f"{margin} beats softmax", margin, "softmax")
    if "cosface" in heads and "arcface" in heads:
        found.append(
            {
                "claim": "CosFace converges more easily than ArcFace",
                "steps_to_plain_accuracy": {
                    h: heads[h]["steps_to_plain_accuracy"] for h in ("cosface", "arcface")
                },
                "plain_accuracy_threshold": CONVERGED_AT,
            }
        )
    if "arcface" in heads:
        found.append(
            {
                "claim": "ArcFace's target logit needs its fallback past theta = pi - m2",
                "past_fallback_max": heads["arcface"]["past_fallback_max"],
                "target_angle_deg_max": heads["arcface"]["target_angle_deg_max"],
            }
        )
    found.append(
        {
            "claim": "margins tighten classes (mean target angle at the end)",
            "target_angle_deg": {h: heads[h]["target_angle_deg"] for h in heads},
        }
    )
    return found


def fmt(value: dict[str, float | None], scale: float = 100.0, digits: int = 2) -> str:
    if value["mean"] is None:
        return "-"
    return f"{value['mean'] * scale:.{digits}f} ± {(value['std'] or 0) * scale:.{digits}f}"


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/loss_study")
    summary_path = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/loss_study_summary.json")
    if root.is_file():  # a summary already written: its per-run records
        runs = json.loads(root.read_text())["runs"]
    else:
        runs = [
            read_run(p)
            for p in sorted(root.iterdir())
            if p.is_dir() and (p / "metrics.json").is_file()
        ]
    heads = summarise(runs)
    checked = claims(heads, runs)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps({"runs": runs, "heads": heads, "claims": checked}, indent=2))
    print(
        "| head | seeds | LFW 10-fold accuracy, % | TAR @ FAR 1e-2, % | DIR @ FPIR 1e-2, % "
        "(Glint-24) | plain train acc, % | mean target angle, deg | scale s | steps to "
        f"{CONVERGED_AT:.0%} plain acc |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for head, h in heads.items():
        print(
            f"| {head} | {len(h['seeds'])} | {fmt(h['lfw_accuracy'])} | "
            f"{fmt(h['lfw_tar_at_far_1e-2'], digits=1)} | "
            f"{fmt(h['openset_dir_at_fpir_1e-2'], digits=1)} | "
            f"{fmt(h['plain_accuracy'], digits=1)} | "
            f"{fmt(h['target_angle_deg'], scale=1, digits=1)} | "
            f"{fmt(h['scale'], scale=1, digits=2)} | "
            f"{fmt(h['steps_to_plain_accuracy'], scale=1, digits=0)} |"
        )
    print()
    for c in checked:
        print(json.dumps(c))


if __name__ == "__main__":
    main()
