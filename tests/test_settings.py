"""Settings: a typo is an error that names the right variable, and the detector's options come
from settings, one default each."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from service.errors import ConfigError
from service.recognition import build_pipeline, detector_options
from service.settings import NOT_SETTINGS, DetectorSettings, Settings, check_environment
from service.vision.detection import DetectorOptions
from tests.conftest import ROOT


def test_a_misspelt_variable_is_refused_naming_the_closest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Was: MARGINFACE_GALERY__PATH quietly fell back to var/gallery."""
    monkeypatch.setenv("MARGINFACE_GALERY__PATH", "/srv/faces")
    with pytest.raises(ConfigError, match=r"MARGINFACE_GALERY__PATH \(did you mean "
                       r"MARGINFACE_GALLERY__PATH\?\)"):  # fmt: skip
        Settings()


def test_a_misspelt_nested_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARGINFACE_DETECTOR__SCORE_THRESHHOLD", "0.7")
    with pytest.raises(ConfigError, match="did you mean MARGINFACE_DETECTOR__SCORE_THRESHOLD"):
        Settings()


def test_unknown_keys_in_code_are_refused() -> None:
    with pytest.raises(ValidationError, match="scor"):
        Settings(detector={"scor": 0.5})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="galery"):
        Settings(galery={"path": "x"})  # type: ignore[call-arg]


def test_valid_and_known_other_variables_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARGINFACE_GALLERY__PATH", "/srv/faces")
    for name in NOT_SETTINGS:  # compose's and the test suite's own knobs
        monkeypatch.setenv(name, "1")
    assert str(Settings().gallery.path) == "/srv/faces"
    check_environment({"marginface_device": "cpu", "PATH": "/bin"})  # case as the OS gives it


def test_every_detector_option_is_a_setting_with_one_default() -> None:
    """Was: upscale_below_px had no setting, and max_faces had two defaults (256 and 64)."""
    defaults = DetectorSettings()
    for option in dataclasses.fields(DetectorOptions):
        assert option.name in DetectorSettings.model_fields, option.name
        assert getattr(defaults, option.name) == option.default, option.name
    assert detector_options(Settings()) == DetectorOptions()


def test_the_pipeline_uses_the_detector_settings() -> None:
    settings = Settings(
        models_dir=ROOT / "models",
        device="cpu",
        detector={"upscale_below_px": 500, "max_faces": 7, "score_threshold": 0.8},
    )
    options = build_pipeline(settings, batching=False).detector.options
    assert (options.upscale_below_px, options.max_faces, options.score_threshold) == (500, 7, 0.8)


def test_the_default_gallery_is_exact_until_300k_faces_then_a_tuned_ivf() -> None:
    """The size-based defaults docs/benchmarks.md chose: a small gallery searches exactly, the
    switch and the tuned factory are named in its stats."""
    import faiss

    from service.gallery.index import FaissIndex

    g = Settings().gallery
    index = FaissIndex(
        128, g.index_factory, search_params=g.search_params, exact_below=g.exact_below
    )
    assert index.active_factory == "Flat"
    assert index.describe() == "Flat (exact until 300000 faces, then IVF4096,PQ32x4fs,RFlat)"
    assert g.search_params == "nprobe=1024,k_factor_rf=16"
    # the tuned factory takes its parameters (a typo in them would fail only at the switch)
    fresh = index._new(g.index_factory)  # what a build past the switch starts from
    inner = faiss.downcast_index(fresh.index)
    assert isinstance(inner, faiss.IndexRefineFlat) and inner.k_factor == 16
    assert faiss.extract_index_ivf(inner).nprobe == 1024


def test_the_shipped_throughput_defaults_are_the_ones_docs_benchmarks_chose() -> None:
    """docs/benchmarks.md, 'Service throughput under concurrent clients': one ONNX Runtime
    thread per call (its own choice, a pool per session, spent a median 46% more server CPU
    per request on 2 cores), no micro-batching on a CPU, 64 requests in flight. The README
    states the same figures."""
    settings = Settings(models_dir=ROOT / "models", device="cpu")
    assert settings.intra_op_threads == 1
    pipeline = build_pipeline(settings)
    assert pipeline.batcher is None  # auto: off on a CPU
    sessions = [pipeline.detector.session, pipeline.embedder.session]  # type: ignore[attr-defined]
    if pipeline.second_detector is not None:
        sessions.append(pipeline.second_detector.session)  # type: ignore[attr-defined]
    assert [s.get_session_options().intra_op_num_threads for s in sessions] == [1] * len(sessions)
    assert settings.limits.max_inflight_requests == 64
    readme = (ROOT / "README.md").read_text()
    assert "`MARGINFACE_INTRA_OP_THREADS` (default 1:" in readme
    assert "`MARGINFACE_LIMITS__MAX_INFLIGHT_REQUESTS` (64)" in readme
