"""Thresholds by FAR: monotone, honest about what the data supports, valid on held-out folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.calibration import (
    PairScores,
    calibrate,
    calibrated_far,
    cross_identity_scores,
    threshold_for_far,
)
from service.errors import InvalidRequest
from service.evaluation import far_at, kfold_accuracy, threshold_at_far
from service.models import load_manifest
from tests.conftest import ROOT


def synthetic(n_genuine: int, n_impostor: int, seed: int = 0) -> PairScores:
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(0.6, 0.12, n_genuine), rng.normal(0.05, 0.1, n_impostor)])
    same = np.concatenate([np.ones(n_genuine, bool), np.zeros(n_impostor, bool)])
    folds = np.arange(len(scores)) % 10
    return PairScores(scores=scores, same=same, folds=folds, images=0)


def test_threshold_at_far_is_exact_on_the_data() -> None:
    impostors = np.linspace(-1, 1, 1000)
    for far in (0.1, 0.01, 0.001):
        t = threshold_at_far(impostors, far)
        assert far_at(impostors, t) <= far
        assert far_at(impostors, np.nextafter(t, -np.inf) - 1e-9) > far or far * 1000 < 1


def test_unsupported_far_is_refused() -> None:
    with pytest.raises(ValueError, match="needs at least 10000"):
        threshold_at_far(np.zeros(3000), 1e-4)
    calibration = calibrate(synthetic(3000, 3000), "synthetic")
    assert "1e-04" not in calibration.thresholds_by_far  # 3000 impostors cannot support it
    with pytest.raises(InvalidRequest, match="below the lowest FAR"):
        threshold_for_far(calibration, 1e-4)
    with pytest.raises(InvalidRequest):
        threshold_for_far(None, 1e-2)


def test_lower_far_never_gives_a_lower_threshold() -> None:
    calibration = calibrate(synthetic(3000, 30000), "synthetic")
    table = sorted((float(k), v) for k, v in calibration.thresholds_by_far.items())
    assert [f for f, _ in table] == [1e-4, 1e-3, 1e-2, 1e-1]
    thresholds = [t for _, t in table]
    assert thresholds == sorted(thresholds, reverse=True)
    # a FAR between calibrated ones takes the stricter calibrated point
    t, used = threshold_for_far(calibration, 5e-3)
    assert used == 1e-3 and t == calibration.thresholds_by_far["1e-03"]


def test_calibrated_far_holds_on_held_out_folds() -> None:
    """Calibrate on 9 folds, measure the FAR on the 10th: within binomial sampling error."""
    data = synthetic(5000, 50000, seed=3)
    impostor_scores, impostor_folds = data.scores[~data.same], data.folds[~data.same]
    for far in (1e-2, 1e-3):
        observed = []
        for fold in range(10):
            t = threshold_at_far(impostor_scores[impostor_folds != fold], far)
            observed.append(far_at(impostor_scores[impostor_folds == fold], t))
        n = int((impostor_folds == 0).sum())
        sigma = np.sqrt(far * (1 - far) / n)
        assert abs(np.mean(observed) - far) < 3 * sigma / np.sqrt(10) + far * 0.2


def test_cross_identity_scores_count_each_impostor_pair_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb = {}
    for person, n in (("a", 3), ("b", 2), ("c", 1)):
        for i in range(n):
            v = rng.standard_normal(8).astype(np.float32)
            emb[tmp_path / person / f"{i}.jpg"] = v / np.linalg.norm(v)
    scores = cross_identity_scores(emb, block=2)
    assert len(scores) == 3 * 2 + 3 * 1 + 2 * 1  # pairs of different people only
    expected = sorted(
        float(emb[p] @ emb[q]) for p in emb for q in emb if p < q and p.parent != q.parent
    )
    np.testing.assert_allclose(sorted(scores), expected, rtol=1e-6)


def test_kfold_accuracy_uses_thresholds_from_other_folds() -> None:
    data = synthetic(3000, 3000)
    mean, std, thresholds = kfold_accuracy(data.scores, data.same, data.folds)
    assert 0.95 < mean <= 1.0 and std < 0.05 and len(thresholds) == 10


def test_default_recognizer_ships_calibrated() -> None:
    manifest = load_manifest(ROOT / "models" / "sface-2021dec")
    calibration = manifest.calibration
    assert calibration is not None and calibration.pairs == 6000
    # every cross-identity pair among the 7,701 LFW images, not only the 3,000 listed ones
    assert calibration.impostor_pairs > 29_000_000
    table = sorted((float(k), v) for k, v in calibration.thresholds_by_far.items())
    assert {f for f, _ in table} == {1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6}
    assert [t for _, t in table] == sorted((t for _, t in table), reverse=True)
    assert manifest.thresholds is not None and "calibration" in manifest.thresholds.source
    assert calibration.model_dump()["kfold_accuracy_mean"] >= 0.993


def test_pairs_csv_accepts_yes_no_and_rejects_garbage(tmp_path: Path) -> None:
    from service.calibration import read_pairs_csv

    good = tmp_path / "pairs.csv"
    good.write_text("image_a,image_b,same\na.jpg,b.jpg,yes\nc.jpg,d.jpg,0\ne.jpg,f.jpg,1\n")
    pairs = read_pairs_csv(good)
    assert [p.same for p in pairs] == [True, False, True]
    assert pairs[0].a == tmp_path / "a.jpg"
    bad = tmp_path / "bad.csv"
    bad.write_text("image_a,image_b,same\na.jpg,b.jpg,maybe\n")
    with pytest.raises(ValueError, match="row 2"):
        read_pairs_csv(bad)


def test_identification_report_dir_at_fpir() -> None:
    from service.evaluation import identification_report

    mated = [(0.9, True)] * 90 + [(0.3, True)] * 5 + [(0.8, False)] * 5
    non_mated = list(np.linspace(0.0, 0.5, 100))
    report = identification_report(mated, [True] * 100, non_mated)
    assert report["rank1"] == 0.95 and report["rank5"] == 1.0
    dirs = report["dir_at_fpir"]
    assert isinstance(dirs, dict)
    assert dirs["1e-01"]["dir"] == 0.9  # the five weak genuine matches fall below the threshold
    assert dirs["1e-02"]["dir"] == 0.9


def test_a_cosine_reaches_the_strictest_calibrated_far_whose_threshold_it_is_at() -> None:
    calibration = load_manifest(ROOT / "models" / "sface-2021dec").calibration
    assert calibration is not None
    table = sorted((float(k), t) for k, t in calibration.thresholds_by_far.items())
    loosest, strictest = table[-1], table[0]
    assert calibrated_far(calibration, strictest[1]) == strictest[0]
    assert calibrated_far(calibration, 1.0) == strictest[0]
    assert calibrated_far(calibration, loosest[1]) == loosest[0]
    assert calibrated_far(calibration, loosest[1] - 1e-3) is None
    assert calibrated_far(None, 0.9) is None
