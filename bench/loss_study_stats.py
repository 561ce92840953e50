"""The loss study's statistics: what three seeds per head can and cannot show.

Every head is compared to softmax seed by seed (a seed fixes the backbone's initial weights and
the batch order for every head, so the paired difference cancels what a seed does to all heads):
the mean paired difference in LFW points, its standardised size (Cohen's d_z: mean / sd of the
differences), a 95% t interval, the paired t-test's two-sided p, the exact sign test's p (and the
smallest p a sign test can reach at this many seeds), and Holm's correction across all heads
compared to softmax (six tests: one "3 of 3" among six is likely by chance alone).

The seed interval is conditional on LFW's 6,000 pairs: every run is scored on the same pairs, so
it says nothing about how LFW's own sample of pairs moves the figure. That sampling error is
bounded here: one run's accuracy has a binomial standard error sqrt(p(1-p)/6000) (0.47 points at
84%); the difference of two runs on the same pairs has sqrt((b + c)/n - d^2)/sqrt(n) where b + c
is the share of pairs exactly one run gets right. Without the per-pair outcomes (the runs are
gone) b + c is at most the sum of the two error rates (no pair wrong for both): that is the
honest upper bound, ``pair_se_bound``; a measured share of discordant pairs (``--discordance``,
from two models of the same recipe scored pair by pair) gives the likely size. The wider
interval adds that error to the seed spread.

Every figure the document quotes about the study is computed here from the committed per-run
data (docs/loss_study_summary.json), none by hand.

Usage: python bench/loss_study_stats.py [SUMMARY_JSON] [OUT_JSON] [--discordance JSON]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scipy import stats

BASELINE = "softmax"
LFW_PAIRS = 6000
CONFIDENCE = 0.95
ALPHA = 0.05
#: the other figures compared to softmax the same way (Holm within each figure)
SECONDARY = (
    "lfw_tar_at_far_1e-2",
    "target_angle_deg",
    "openset_dir_at_fpir_1e-2",
    "steps_to_plain_accuracy",
)
#: each head's claim against softmax, as the literature makes it
CLAIMS = {
    "softmax-nobias": "a zero bias costs nothing (SphereFace)",
    "normface": "normalising weights and features helps (NormFace)",
    "sphereface": "a multiplicative angular margin beats softmax (SphereFace)",
    "cosface": "an additive cosine margin beats softmax (CosFace)",
    "arcface": "an additive angular margin beats softmax (ArcFace)",
    "combined": "the combined margin beats softmax (insightface)",
}


@dataclass(frozen=True)
class PairedTest:
    """One head minus another, seed by seed (accuracies as fractions; figures in points)."""

    seeds: int
    differences: list[float]
    mean: float
    sd: float
    d_z: float  # standardised effect: mean / sd of the differences
    ci_low: float
    ci_high: float
    t: float
    p_t: float  # paired t-test, two-sided
    positive: int
    p_sign: float  # exact sign test, two-sided
    p_sign_min: float  # the smallest two-sided sign-test p at this many seeds


def sign_test_p(differences: Sequence[float]) -> float:
    """Exact two-sided sign test (ties dropped): binomial(n, 1/2) on the positive count."""
    nonzero = [d for d in differences if d != 0]
    if not nonzero:
        return 1.0
    positive = sum(d > 0 for d in nonzero)
    return float(stats.binomtest(positive, len(nonzero), 0.5).pvalue)


def smallest_sign_p(n: int) -> float:
    """The smallest two-sided p an exact sign test can give with n pairs (all n one way)."""
    return min(1.0, 2 * 0.5**n)


def paired_test(differences: Sequence[float], confidence: float = CONFIDENCE) -> PairedTest:
    """Mean difference, d_z, t interval, paired t p and sign-test p for paired differences."""
    n = len(differences)
    if n < 2:
        raise ValueError("a paired test needs at least two pairs")
    mean = statistics.fmean(differences)
    sd = statistics.stdev(differences)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    if sd > 0:
        t = mean / se
        p_t = float(2 * stats.t.sf(abs(t), n - 1))
    else:  # identical differences: no spread to test against
        t, p_t = math.copysign(math.inf, mean) if mean else 0.0, 0.0 if mean else 1.0
    return PairedTest(
        seeds=n,
        differences=list(differences),
        mean=mean,
        sd=sd,
        d_z=mean / sd if sd > 0 else math.copysign(math.inf, mean) if mean else 0.0,
        ci_low=mean - half,
        ci_high=mean + half,
        t=t,
        p_t=p_t,
        positive=sum(d > 0 for d in differences),
        p_sign=sign_test_p(differences),
        p_sign_min=smallest_sign_p(n),
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def binomial_se(accuracy: float, pairs: int = LFW_PAIRS) -> float:
    """The standard error of one accuracy measured on ``pairs`` independent pairs."""
    return math.sqrt(accuracy * (1 - accuracy) / pairs)


def paired_pair_se(
    acc_a: float, acc_b: float, pairs: int = LFW_PAIRS, discordant: float | None = None
) -> float:
    """The pair-sampling standard error of acc_a - acc_b measured on the SAME pairs.

    Per pair the difference is +1, -1 or 0; its variance is (b + c) - d^2 with b + c the share
    of discordant pairs (one run right, the other wrong) and d = acc_a - acc_b. Unknown b + c is
    bounded by the sum of the error rates (every wrong pair wrong for one run only)."""
    d = acc_a - acc_b
    if discordant is None:
        discordant = min(1.0, (1 - acc_a) + (1 - acc_b))
    return math.sqrt(max(0.0, discordant - d * d) / pairs)


def interval_with_pairs(
    mean: float,
    seed_se: float,
    seed_df: int,
    pair_se: float,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """An interval for a mean difference whose error is the seed spread (``seed_se`` on
    ``seed_df`` degrees of freedom) plus LFW's pair sampling (``pair_se``, a known normal
    part): each half-width at its own quantile (t for the seeds, z for the pairs), added in
    quadrature. Never narrower than either part alone (a Welch-Satterthwaite df grows with the
    known part and can give a narrower interval than the seeds alone)."""
    q = 0.5 + confidence / 2
    half = math.hypot(float(stats.t.ppf(q, seed_df)) * seed_se, float(stats.norm.ppf(q)) * pair_se)
    return mean - half, mean + half


def detectable_mean(sd: float, seeds: int, alpha: float = ALPHA) -> float:
    """The smallest |mean difference| a two-sided paired t-test at ``alpha`` calls significant
    with ``seeds`` pairs whose differences spread by ``sd``."""
    return float(stats.t.ppf(1 - alpha / 2, seeds - 1)) * sd / math.sqrt(seeds)


def seeds_needed(d_z: float, alpha: float = ALPHA, power: float = 0.8, most: int = 1000) -> int:
    """Pairs (seeds) a two-sided paired t-test needs to detect a standardised effect ``d_z`` at
    ``alpha`` with ``power`` (noncentral t); ``most`` + 1 when not even that many suffice."""
    for n in range(2, most + 1):
        crit = stats.t.ppf(1 - alpha / 2, n - 1)
        nc = abs(d_z) * math.sqrt(n)
        achieved = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
        if achieved >= power:
            return n
    return most + 1


def head_of(run: dict[str, Any]) -> str:
    return re.sub(r"-s\d+$", "", str(run["run"]))


def accuracies(
    runs: list[dict[str, Any]], key: str = "lfw_accuracy"
) -> dict[str, dict[int, float]]:
    """head -> seed -> figure."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in runs:
        if r.get(key) is not None:
            out[head_of(r)][int(r["seed"])] = float(r[key])
    return dict(out)


def verdict(test: PairedTest, p_holm: float) -> str:
    """What the numbers support, in words: a non-detection is "not shown", never "confirmed"
    (the interval says which sizes are still possible)."""
    if p_holm < ALPHA:
        return "shown"
    if test.p_t < ALPHA:
        return "not shown (p < 0.05 before Holm only)"
    return "not shown"


def compare_to_baseline(
    runs: list[dict[str, Any]],
    baseline: str = BASELINE,
    discordance: float | None = None,
    key: str = "lfw_accuracy",
) -> list[dict[str, Any]]:
    """Every head against ``baseline``: the paired test, Holm across all of them, and the
    interval with LFW's pair-sampling error added (its bound, and the measured size if given)."""
    acc = accuracies(runs, key)
    base = acc[baseline]
    rows = []
    for head in CLAIMS:
        if head not in acc:
            continue
        seeds = sorted(s for s in acc[head] if s in base)
        diffs = [acc[head][s] - base[s] for s in seeds]
        test = paired_test(diffs)
        bound = math.sqrt(
            statistics.fmean(paired_pair_se(acc[head][s], base[s]) ** 2 for s in seeds)
        )
        row: dict[str, Any] = {
            "head": head,
            "claim": CLAIMS[head],
            "baseline": baseline,
            "seeds": seeds,
            **asdict(test),
            "pair_se_bound": bound,
        }
        seed_se = test.sd / math.sqrt(test.seeds)
        row["ci_with_lfw_bound"] = list(
            interval_with_pairs(test.mean, seed_se, test.seeds - 1, bound)
        )
        row["detectable_mean"] = detectable_mean(test.sd, test.seeds)
        row["detectable_mean_holm_first"] = detectable_mean(
            test.sd, test.seeds, ALPHA / len(CLAIMS)
        )
        row["seeds_needed_80pct"] = seeds_needed(test.d_z) if test.d_z else None
        row["seeds_needed_80pct_holm"] = (
            seeds_needed(test.d_z, ALPHA / len(CLAIMS)) if test.d_z else None
        )
        if discordance is not None:
            measured = math.sqrt(
                statistics.fmean(
                    paired_pair_se(acc[head][s], base[s], discordant=discordance) ** 2
                    for s in seeds
                )
            )
            row["pair_se_measured"] = measured
            row["ci_with_lfw_measured"] = list(
                interval_with_pairs(test.mean, seed_se, test.seeds - 1, measured)
            )
        rows.append(row)
    for row, p in zip(rows, holm([r["p_t"] for r in rows]), strict=True):
        row["p_holm"] = p
        row["p_sign_holm_min"] = min(1.0, len(rows) * row["p_sign_min"])
        fields = {k: row[k] for k in PairedTest.__dataclass_fields__}
        row["verdict"] = verdict(PairedTest(**fields), p)
    return rows


def seed_effects(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures the document quotes about seeds and folds, computed, not typed."""
    acc = accuracies(runs)
    fold_std = [float(r["lfw_accuracy_fold_std"]) for r in runs if r.get("lfw_accuracy_fold_std")]
    per_head_range = {h: max(s.values()) - min(s.values()) for h, s in acc.items()}
    seeds = sorted({s for by_seed in acc.values() for s in by_seed})
    worst = {h: min(by_seed, key=lambda s: by_seed[s]) for h, by_seed in acc.items()}
    worst_seed = {s: sorted(h for h, w in worst.items() if w == s) for s in seeds}
    by_seed = {s: [acc[h][s] for h in acc if s in acc[h]] for s in seeds}
    head_means = {h: statistics.fmean(v.values()) for h, v in acc.items()}
    best_run = max(runs, key=lambda r: float(r["lfw_accuracy"]))
    return {
        "fold_std_min": min(fold_std),
        "fold_std_max": max(fold_std),
        "seed_range_per_head": per_head_range,
        "seed_range_max": max(per_head_range.values()),
        "seed_range_max_head": max(per_head_range, key=lambda h: per_head_range[h]),
        "seed_range_min": min(per_head_range.values()),
        "worst_seed_heads": worst_seed,
        "accuracy_range_by_seed": {s: [min(v), max(v)] for s, v in by_seed.items()},
        "head_mean_range": [min(head_means.values()), max(head_means.values())],
        "head_means": head_means,
        "best_run": best_run["run"],
        "best_run_accuracy": best_run["lfw_accuracy"],
        "runs": len(runs),
        "lfw_se_at_mean": binomial_se(
            statistics.fmean(a for v in acc.values() for a in v.values())
        ),
    }


def chance_of_any_all_one_way(seeds: int, heads: int) -> dict[str, float]:
    """With no real difference, the chance that at least one of ``heads`` comparisons is
    positive at every seed (and positive or negative at every seed), heads taken as
    independent (they share the softmax runs, so this is a guide, not exact)."""
    one = 0.5**seeds
    return {
        "positive_at_every_seed": 1 - (1 - one) ** heads,
        "same_sign_at_every_seed": 1 - (1 - 2 * one) ** heads,
    }


def sphereface_margin_weight(
    steps: int = 400,
    lambda_base: float = 1000.0,
    gamma: float = 0.5,
    power: float = 1.0,
    lambda_min: float = 5.0,
) -> dict[str, float]:
    """The weight of SphereFace's margin term in its target logit over a run.

    With λ annealing the target logit is (λ·cos θ + ψ(θ)) / (1 + λ) (training/losses.py), so
    ψ(θ), the multiplicative margin, weighs 1 / (1 + λ) and NormFace's cos θ the rest. Defaults:
    the study's configuration (bench/loss_study.sh: the paper's λ0 = 1000, p = 1, λ_min = 5,
    γ = 0.5 to reach λ_min within 400 steps)."""
    weights = [
        1.0 / (1.0 + max(lambda_min, lambda_base * (1.0 + gamma * t) ** -power))
        for t in range(steps + 1)
    ]
    five = next((t for t, w in enumerate(weights) if w >= 0.05), None)
    return {
        "weight_at_start": weights[0],
        "weight_at_end": weights[-1],
        "weight_mean": statistics.fmean(weights),
        "first_step_at_5pct": float(five) if five is not None else math.nan,
        "steps": float(steps),
    }


def extra_runs(summary: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The 800-step and fine-tuning tables (docs/loss_study_extra_runs.json): their 400-step
    rows checked against the per-run data, each single-seed difference with LFW's pair-sampling
    bound beside it (one seed: the seed spread is unknown and comes on top)."""
    by_run = {r["run"]: r for r in summary["runs"]}
    rows = extra["steps_800"]["runs"]
    checked = []
    for r in rows:
        if r.get("in_summary_json"):
            run = by_run[r["run"]]
            checked.append(
                {
                    "run": r["run"],
                    "agrees": round(run["lfw_accuracy"] * 100, 2) == r["lfw_accuracy_pct"]
                    and round(run["lfw_tar_at_far_1e-2"] * 100, 1) == r["lfw_tar_at_far_1e-2_pct"]
                    and round(run["plain_accuracy"] * 100, 1) == r["plain_accuracy_pct"]
                    and round(run["target_angle_deg"], 1) == r["target_angle_deg"],
                }
            )
    steps: dict[str, Any] = {}
    for budget in sorted({r["steps"] for r in rows}):
        at = {r["run"].split("-s")[0]: r for r in rows if r["steps"] == budget}
        cos, soft = at["cosface"]["lfw_accuracy_pct"] / 100, at["softmax"]["lfw_accuracy_pct"] / 100
        steps[str(budget)] = {
            "cosface_minus_softmax_lfw_pts": (cos - soft) * 100,
            "pair_se_bound_pts": paired_pair_se(cos, soft) * 100,
            "tar_difference_pts": at["cosface"]["lfw_tar_at_far_1e-2_pct"]
            - at["softmax"]["lfw_tar_at_far_1e-2_pct"],
        }
    before, *after = extra["finetune"]["rows"]
    genuine = 21847  # bench/celeba_heldout_pairs.py --skip-first 200
    finetune = []
    for r in after:
        a, b = r["lfw_kfold_accuracy_pct"] / 100, before["lfw_kfold_accuracy_pct"] / 100
        tar = r["heldout_tar_at_far_1e-3_pct"] / 100
        finetune.append(
            {
                "lr": r["lr"],
                "freeze_steps": r["freeze_steps"],
                "heldout_tar_change_pts": r["heldout_tar_at_far_1e-3_pct"]
                - before["heldout_tar_at_far_1e-3_pct"],
                "heldout_tar_binomial_se_pts": binomial_se(tar, genuine) * 100,
                "lfw_change_pts": (a - b) * 100,
                "lfw_pair_se_bound_pts": paired_pair_se(a, b) * 100,
            }
        )
    return {"rows_400_agree_with_summary": checked, "steps": steps, "finetune": finetune}


def study_statistics(
    summary: dict[str, Any],
    discordance: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All of it, from the summary JSON's per-run records (and the extra runs' figures)."""
    runs = summary["runs"]
    return {
        "source": "docs/loss_study_summary.json (runs): each run's LFW 10-fold accuracy",
        "method": {
            "test": "paired over seeds: t-test (two-sided) and exact sign test (two-sided)",
            "correction": "Holm-Bonferroni over every head compared to softmax",
            "confidence": CONFIDENCE,
            "lfw_pairs": LFW_PAIRS,
            "discordance_measured": discordance,
        },
        "against_softmax": compare_to_baseline(runs, discordance=discordance),
        "seeds": seed_effects(runs),
        "secondary": {
            key: [
                {
                    k: r[k]
                    for k in (
                        "head",
                        "differences",
                        "mean",
                        "ci_low",
                        "ci_high",
                        "p_t",
                        "p_holm",
                        "positive",
                    )
                }
                for r in compare_to_baseline(runs, key=key)
            ]
            for key in SECONDARY
        },
        "cosface_minus_arcface_steps_to_plain_accuracy": asdict(
            paired_test(
                [
                    accuracies(runs, "steps_to_plain_accuracy")["cosface"][seed]
                    - accuracies(runs, "steps_to_plain_accuracy")["arcface"][seed]
                    for seed in sorted(accuracies(runs, "steps_to_plain_accuracy")["cosface"])
                ]
            )
        ),
        "chance_of_any_3_of_3": chance_of_any_all_one_way(3, len(CLAIMS)),
        "sphereface_margin_weight": sphereface_margin_weight(),
        **({"extra_runs": extra_runs(summary, extra)} if extra else {}),
    }


def _pts(x: float, signed: bool = True) -> str:
    return f"{x * 100:+.2f}" if signed else f"{x * 100:.2f}"


def _p(x: float) -> str:
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def markdown(result: dict[str, Any]) -> str:
    """The claims table the document carries (with a measured-discordance interval when one
    was given)."""
    measured = result["method"]["discordance_measured"] is not None
    extra = " | 95% CI with LFW's pair sampling (measured)" if measured else ""
    lines = [
        "| head − softmax | per seed (0, 1, 2), points | mean, points | d_z | 95% CI (seeds) "
        f"| 95% CI with LFW's pair sampling (bound){extra} | paired t p | Holm p "
        "| sign p (min possible) | verdict |",
        "|---" * (10 + measured) + "|",
    ]
    for r in result["against_softmax"]:
        per_seed = ", ".join(_pts(d) for d in r["differences"])
        cis = [(r["ci_low"], r["ci_high"]), tuple(r["ci_with_lfw_bound"])]
        if measured:
            cis.append(tuple(r["ci_with_lfw_measured"]))
        ci_text = " | ".join(f"[{_pts(lo)}, {_pts(hi)}]" for lo, hi in cis)
        lines.append(
            f"| {r['head']} | {per_seed} | {_pts(r['mean'])} | {r['d_z']:+.2f} | {ci_text} | "
            f"{_p(r['p_t'])} | {_p(r['p_holm'])} | {_p(r['p_sign'])} ({_p(r['p_sign_min'])}) | "
            f"{r['verdict']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("summary", nargs="?", default="docs/loss_study_summary.json")
    parser.add_argument("out", nargs="?", default="docs/loss_study_stats.json")
    parser.add_argument("--extra", default="docs/loss_study_extra_runs.json")
    parser.add_argument(
        "--discordance",
        help="JSON with 'discordant': the measured share of LFW pairs exactly one of two "
        "models of the study's recipe gets right",
    )
    args = parser.parse_args()
    summary = json.loads(Path(args.summary).read_text())
    discordance = None
    if args.discordance:
        discordance = float(json.loads(Path(args.discordance).read_text())["discordant"])
    extra = json.loads(Path(args.extra).read_text()) if Path(args.extra).is_file() else None
    result = study_statistics(summary, discordance, extra)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print()
    print(json.dumps({k: v for k, v in result.items() if k != "against_softmax"}, indent=2))


if __name__ == "__main__":
    main()
