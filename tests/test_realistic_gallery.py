"""The realistic generator behind the 1M index benchmarks (bench/realistic_gallery.py): fitted
on real SFace embeddings, its genuine and impostor cosines match the real ones. Without the
fitted within-identity spread, genuine pairs came out far too alike (std 0.056 against 0.12),
which made any index look perfect on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.aligned_faces import embed_folder
from bench.realistic_gallery import IdentityModel, cosine_summary

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STATS = ("genuine_mean", "genuine_std", "impostor_mean", "impostor_std")


@pytest.fixture(scope="module")
def glint() -> dict[str, np.ndarray]:
    """Real embeddings: Glint-24's first 12 aligned crops of each of its 24 people."""
    return embed_folder(DATA / "glint24_aligned", per_person=12)


def test_the_fitted_generator_matches_real_genuine_cosines(glint: dict[str, np.ndarray]) -> None:
    """24 people are too few to pin the impostor side (their between-identity scatter has 23
    dimensions); the genuine side is what the fit adds."""
    emb, labels = glint["emb"], glint["labels"]
    real = cosine_summary(emb, labels, np.random.default_rng(1), rounded=False)
    model = IdentityModel(emb, labels)
    plain = model.summary(identities=2000, seed=7)
    assert real["genuine_std"] > plain["genuine_std"] + 0.03  # the plain model is too tight
    fit = model.fit_spread(emb, labels)
    assert fit["spread"] > 0.1
    synthetic = model.summary(identities=2000, seed=7)  # other draws than the fit's
    for key in ("genuine_mean", "genuine_std"):
        assert abs(synthetic[key] - real[key]) < 0.01, (key, synthetic[key], real[key])
    # what the fit did not target follows: the hard genuine pairs (1st percentile)
    assert abs(synthetic["genuine_1st_percentile"] - real["genuine_1st_percentile"]) < 0.05


def test_the_fit_recovers_a_known_spread(glint: dict[str, np.ndarray]) -> None:
    """A labelled set drawn with a known per-face spread (3,000 people x 5): a model fitted on
    it reproduces its genuine and impostor cosines, which the plain model does not."""
    truth = IdentityModel(glint["emb"], glint["labels"])
    truth.scale, truth.spread, truth.between_scale, truth.mean_scale = 1.0, 0.45, 1.0, 1.0
    emb, _ = truth.gallery(15_000, per_identity=5, probes=1, seed=3)
    labels = (np.arange(len(emb)) // 5).astype(str)
    real = cosine_summary(emb, labels, np.random.default_rng(1), rounded=False)
    model = IdentityModel(emb, labels)
    plain = model.summary(identities=2000, seed=7)
    assert real["genuine_std"] > plain["genuine_std"] + 0.02
    model.fit_spread(emb, labels)
    synthetic = model.summary(identities=2000, seed=7)
    for key in STATS:
        assert abs(synthetic[key] - real[key]) < 0.01, (key, synthetic[key], real[key])
