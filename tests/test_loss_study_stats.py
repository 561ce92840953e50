"""The loss study's statistics (bench/loss_study_stats.py) against hand-computed values and
scipy's own tests, and the figures docs/loss_study.md quotes against the committed per-run data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bench.loss_study_stats import (
    binomial_se,
    compare_to_baseline,
    detectable_mean,
    holm,
    interval_with_pairs,
    paired_pair_se,
    paired_test,
    seed_effects,
    seeds_needed,
    sign_test_p,
    smallest_sign_p,
    sphereface_margin_weight,
    study_statistics,
)

SUMMARY = Path(__file__).resolve().parents[1] / "docs/loss_study_summary.json"


def test_paired_test_matches_the_closed_form_for_two_degrees_of_freedom() -> None:
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3; with 2 df the t
    # distribution has a closed form: two-sided p = 1 - t / sqrt(t^2 + 2)
    test = paired_test([1.0, 2.0, 3.0])
    t = 2 * math.sqrt(3)
    assert test.mean == pytest.approx(2.0)
    assert test.sd == pytest.approx(1.0)
    assert test.d_z == pytest.approx(2.0)
    assert test.t == pytest.approx(t)
    assert test.p_t == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    # t(0.975, 2) = 4.302653 (tables): half-width 4.302653 / sqrt 3
    assert test.ci_high - test.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert test.positive == 3
    assert test.p_sign == pytest.approx(0.25)


def test_paired_test_agrees_with_scipy_ttest_rel() -> None:
    a = np.array([0.847, 0.843, 0.83567, 0.8505, 0.8401])
    b = np.array([0.8385, 0.83817, 0.8345, 0.8401, 0.8399])
    test = paired_test(list(a - b))
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert test.t == pytest.approx(ref.statistic)
    assert test.p_t == pytest.approx(ref.pvalue)
    assert (test.ci_low, test.ci_high) == pytest.approx((ci.low, ci.high))


def test_sign_test_exact_values() -> None:
    assert sign_test_p([0.1, 0.2, 0.3]) == pytest.approx(0.25)  # 2 * (1/2)^3
    assert sign_test_p([0.1, -0.2, 0.3]) == pytest.approx(1.0)
    assert sign_test_p([1.0] * 10) == pytest.approx(2 / 1024)
    assert sign_test_p([1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.25)  # the tie is dropped
    assert smallest_sign_p(3) == pytest.approx(0.25)
    assert smallest_sign_p(1) == 1.0


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.2]) == pytest.approx([0.2])


def test_binomial_standard_error_of_lfw() -> None:
    assert binomial_se(0.84, 6000) == pytest.approx(math.sqrt(0.84 * 0.16 / 6000))
    assert 100 * binomial_se(0.84, 6000) == pytest.approx(0.47, abs=0.005)


def test_paired_pair_se_is_the_standard_error_of_the_per_pair_difference() -> None:
    # two models on the same 6,000 pairs: A right on 5,100, B on 5,040, both right on 4,800
    n = 6000
    a = np.zeros(n, dtype=bool)
    b = np.zeros(n, dtype=bool)
    a[:5100] = True
    b[300:5340] = True
    assert (a & b).sum() == 4800
    discordant = float((a != b).mean())
    empirical = float(np.std(a.astype(float) - b.astype(float)) / math.sqrt(n))
    assert paired_pair_se(a.mean(), b.mean(), n, discordant) == pytest.approx(empirical)
    # the bound (no pair wrong for both) is at least as large as any measured size
    assert paired_pair_se(a.mean(), b.mean(), n) >= empirical
    worst = np.zeros(n, dtype=bool)
    worst[:5040] = True
    worst_a = np.zeros(n, dtype=bool)
    worst_a[n - 5100 :] = True  # errors as disjoint as they can be
    disjoint = float(np.std(worst_a.astype(float) - worst.astype(float)) / math.sqrt(n))
    assert paired_pair_se(worst_a.mean(), worst.mean(), n) == pytest.approx(disjoint)


def test_interval_with_pairs_is_never_narrower_than_either_part() -> None:
    low, high = interval_with_pairs(0.5, 0.2, 2, 0.0)
    t = paired_test([0.3, 0.5, 0.7])
    assert (low, high) == pytest.approx(
        (0.5 - stats.t.ppf(0.975, 2) * 0.2, 0.5 + stats.t.ppf(0.975, 2) * 0.2)
    )
    seed_half = stats.t.ppf(0.975, 2) * t.sd / math.sqrt(3)
    low, high = interval_with_pairs(t.mean, t.sd / math.sqrt(3), 2, 0.3)
    assert high - t.mean >= seed_half
    assert high - t.mean >= 1.96 * 0.3
    assert high - t.mean == pytest.approx(math.hypot(seed_half, stats.norm.ppf(0.975) * 0.3))


def test_detectable_mean_is_where_p_reaches_alpha() -> None:
    sd, n = 0.4, 3
    edge = detectable_mean(sd, n)
    # differences with exactly that mean and sd: p = 0.05
    diffs = [edge - sd, edge, edge + sd]
    assert paired_test(diffs).p_t == pytest.approx(0.05, rel=1e-6)


def test_seeds_needed_matches_the_published_power_tables() -> None:
    # paired t, d_z = 1, alpha 0.05 two-sided, power 0.8: 10 pairs (Cohen; G*Power gives 10)
    assert seeds_needed(1.0) == 10
    # d_z = 0.5: 34 pairs
    assert seeds_needed(0.5) == 34


def test_the_studys_figures_come_from_the_committed_runs() -> None:
    summary = json.loads(SUMMARY.read_text())
    rows = {r["head"]: r for r in compare_to_baseline(summary["runs"])}
    assert set(rows) == {
        "softmax-nobias",
        "normface",
        "sphereface",
        "cosface",
        "arcface",
        "combined",
    }
    cos = rows["cosface"]
    # the figures: paired t p about 0.15, 3 of 3 positive, sign test 0.25 two-sided
    assert cos["mean"] * 100 == pytest.approx(0.48, abs=0.005)
    assert cos["p_t"] == pytest.approx(0.15, abs=0.005)
    assert cos["positive"] == 3 and cos["p_sign"] == pytest.approx(0.25)
    assert cos["p_holm"] > 0.05 and cos["verdict"].startswith("not shown")
    assert not any(r["verdict"].startswith("shown") for r in rows.values())
    # Holm: every adjusted p at least its raw p
    assert all(r["p_holm"] >= r["p_t"] for r in rows.values())
    seeds = seed_effects(summary["runs"])
    # the 10-fold std within a run is 1.49 to 2.28 points (not "1.7 to 2.3")
    assert (round(seeds["fold_std_min"] * 100, 2), round(seeds["fold_std_max"] * 100, 2)) == (
        1.49,
        2.28,
    )
    # a seed moves ArcFace by 2.10 points (not "every head by up to 1.7")
    assert seeds["seed_range_max_head"] == "arcface"
    assert seeds["seed_range_max"] * 100 == pytest.approx(2.10, abs=0.005)
    assert len(seeds["worst_seed_heads"][2]) == 7
    assert seeds["best_run"] == "arcface-s0"


def test_study_statistics_with_a_measured_discordance_narrows_the_lfw_part() -> None:
    summary = json.loads(SUMMARY.read_text())
    result = study_statistics(summary, discordance=0.08)
    for row in result["against_softmax"]:
        assert row["pair_se_measured"] < row["pair_se_bound"]
        lo_m, hi_m = row["ci_with_lfw_measured"]
        lo_b, hi_b = row["ci_with_lfw_bound"]
        assert lo_b <= lo_m <= row["ci_low"] and row["ci_high"] <= hi_m <= hi_b


def test_sphereface_margin_weight_follows_the_training_schedule() -> None:
    from training.losses import MarginSchedule

    schedule = MarginSchedule(lambda_base=1000.0, lambda_gamma=0.5)
    weight = sphereface_margin_weight(400)
    assert weight["weight_at_start"] == pytest.approx(1 / (1 + schedule.lam(0)))
    assert weight["weight_at_end"] == pytest.approx(1 / (1 + schedule.lam(400)))
    assert weight["weight_at_end"] == pytest.approx(1 / 6)  # λ_min = 5
    step = int(weight["first_step_at_5pct"])
    assert 1 / (1 + schedule.lam(step)) >= 0.05 > 1 / (1 + schedule.lam(step - 1))


def test_the_summary_json_claims_carry_the_paired_test_not_a_spread_rule() -> None:
    from bench.loss_study_table import claims, summarise

    runs = json.loads(SUMMARY.read_text())["runs"]
    found = {c["a"]: c for c in claims(summarise(runs), runs) if "a" in c}
    cos = found["cosface"]["paired"]
    assert cos["positive"] == "3/3"
    assert cos["p_t"] == pytest.approx(0.150, abs=0.001)
    assert cos["ci95"][0] < 0 < cos["ci95"][1]
    assert not any("beyond" in k for c in found.values() for k in [*c, *c["paired"]])


def test_per_pair_outcomes_reproduce_the_10_fold_accuracy_and_their_discordance() -> None:
    from bench.lfw_discordance import correct_per_pair, discordance
    from service.bin_dataset import fold_of
    from service.evaluation import kfold_accuracy

    rng = np.random.default_rng(0)
    same = np.arange(600) % 2 == 0
    folds = fold_of(600)
    base = np.where(same, 0.5, 0.1) + rng.normal(0, 0.2, 600)
    a = base + rng.normal(0, 0.05, 600)  # two models that share most of their errors
    b = base + rng.normal(0, 0.05, 600)
    right_a = correct_per_pair(a, same, folds)
    right_b = correct_per_pair(b, same, folds)
    for scores, right in ((a, right_a), (b, right_b)):
        mean, _, _ = kfold_accuracy(scores, same, folds)
        # equal folds: the mean of the folds' accuracies is the share of pairs right
        assert right.mean() == pytest.approx(mean)
    found = discordance(right_a, right_b)
    assert found["discordant"] == pytest.approx(float((right_a != right_b).mean()))
    # shared errors: far fewer discordant pairs than the bound (the two error rates summed)
    bound = (1 - found["accuracy_a"]) + (1 - found["accuracy_b"])
    assert found["discordant"] < bound
    assert paired_pair_se(
        found["accuracy_a"], found["accuracy_b"], 600, found["discordant"]
    ) == pytest.approx(
        float(np.std(right_a.astype(float) - right_b.astype(float)) / math.sqrt(600))
    )


def test_the_documents_claims_table_is_the_scripts_output() -> None:
    from bench.loss_study_stats import markdown

    summary = json.loads(SUMMARY.read_text())
    doc = (SUMMARY.parent / "loss_study.md").read_text()
    assert markdown(study_statistics(summary)) in doc
    measured = markdown(study_statistics(summary, discordance=0.08)).splitlines()
    assert "(measured)" in measured[0] and measured[1].count("---") == 11
