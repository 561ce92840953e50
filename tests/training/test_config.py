"""Typed configs: JSON plus dotted overrides, checked when loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import load_config


def test_overrides_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": {"root": "x"}, "head": {"preset": "cosface"}}))
    config = load_config(
        str(path), ["--optim.lr=0.05", "--head.m3=0.4", "--data.flip=false", "--amp=bf16"]
    )
    assert config.optim.lr == 0.05 and config.head.margin().m3 == 0.4
    assert config.data.flip is False and config.amp == "bf16"
    config.save(tmp_path / "saved.json")
    assert load_config(str(tmp_path / "saved.json"), []).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--data.root=x", "--nope=1"], "unknown config key"),
        (["--data.root=x", "--accumulate=0"], "accumulate"),
        (["--data.root=x", "--head.preset=magic"], "unknown head preset"),
        (["--data.root=x", "--head.preset=arcface", "--head.m1=4"], "no monotonic form"),
        (["--data.root=x", "--head.sample_rate=0"], "sample_rate"),
        (["--data.root=x", "--data.rec=y"], "exactly one"),
        (["--data.root=x", "--amp=fp8"], "not one of"),
        (["--data.root=x", "--head.preset=softmax", "--head.sample_rate=0.5"], "Partial FC"),
    ],
)
def test_bad_configs_fail_at_load(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_scale_is_derived_from_the_class_count_when_unset(tmp_path: Path) -> None:
    """AdaCos's fixed scale √2·ln(C−1), raised so a margin head's best target logit
    (s·ψ(0)) equals it: with 299 classes s = 64 saturates the softmax from the first step."""
    import math

    config = load_config(None, [f"--data.root={tmp_path}", "--head.preset=cosface"])
    assert config.head.scale is None  # the presets no longer pin s = 64
    cosface = config.head.margin(num_classes=299)
    assert cosface.scale == pytest.approx(math.sqrt(2) * math.log(298) / (1 - 0.35), rel=1e-6)
    arcface = load_config(None, [f"--data.root={tmp_path}", "--head.preset=arcface"])
    assert arcface.head.margin(num_classes=299).scale == pytest.approx(
        math.sqrt(2) * math.log(298) / math.cos(0.5), rel=1e-6
    )
    normface = load_config(None, [f"--data.root={tmp_path}", "--head.preset=normface"])
    assert normface.head.margin(num_classes=299).scale == pytest.approx(
        math.sqrt(2) * math.log(298), rel=1e-6
    )
    # a scale set by hand is kept
    fixed = load_config(
        None, [f"--data.root={tmp_path}", "--head.preset=cosface", "--head.scale=30"]
    )
    assert fixed.head.margin(num_classes=299).scale == 30


def test_a_scale_far_above_the_derived_one_warns_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(299):
        (tmp_path / str(i)).mkdir()
    with caplog.at_level("WARNING"):
        load_config(None, [f"--data.root={tmp_path}", "--head.preset=cosface", "--head.scale=64"])
    assert "head.scale=64" in caplog.text and "299 classes" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_config(None, [f"--data.root={tmp_path}", "--head.preset=cosface"])
    assert "head.scale" not in caplog.text


def test_amp_bf16_is_honoured_on_the_cpu_and_fp16_refused() -> None:
    """amp=bf16 on the CPU was silently fp32 (issue 29, finding 7): it autocasts to bf16 now;
    fp16 (which needs CUDA's loss scaler) is refused when the config loads."""
    import torch

    from training.engine import amp_dtype

    cpu = torch.device("cpu")
    bf16 = load_config(None, ["--data.root=x", "--amp=bf16", "--device=cpu"])
    assert amp_dtype(bf16, cpu) == torch.bfloat16
    assert amp_dtype(load_config(None, ["--data.root=x", "--amp=auto"]), cpu) is None
    assert amp_dtype(load_config(None, ["--data.root=x", "--amp=off"]), cpu) is None
    with pytest.raises(ValueError, match="amp=fp16 needs CUDA"):
        load_config(None, ["--data.root=x", "--amp=fp16", "--device=cpu"])
    with pytest.raises(ValueError, match="amp=fp16 needs CUDA"):
        amp_dtype(load_config(None, ["--data.root=x", "--amp=fp16"]), cpu)  # auto fell to CPU


@pytest.mark.parametrize("classes", [10_000, 85_742, 360_232, 1_000_000])
@pytest.mark.parametrize("preset", ["arcface", "cosface", "combined", "normface", "sphereface"])
def test_the_default_scale_from_10k_classes_up_is_the_published_64(
    tmp_path: Path, classes: int, preset: str
) -> None:
    """MS1MV2 (85,742), Glint360K (360,232), WebFace (up to 2M): every published margin recipe
    uses s = 64; the AdaCos-derived scale would silently give 13-30 there (issue 29, finding 5).
    Below 10k classes (no published recipe; our study at 299) the derived one stays."""
    import math

    from training.losses import PUBLISHED_SCALE, PUBLISHED_SCALE_MIN_CLASSES

    assert PUBLISHED_SCALE == 64.0 and PUBLISHED_SCALE_MIN_CLASSES == 10_000
    config = load_config(None, [f"--data.root={tmp_path}", f"--head.preset={preset}"])
    assert config.head.margin(num_classes=classes).scale == 64.0
    below = config.head.margin(num_classes=PUBLISHED_SCALE_MIN_CLASSES - 1).scale
    assert below is not None and below < 30 and not math.isclose(below, 64.0)


def test_the_published_scale_on_a_large_image_folder_is_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """s = 64 on 10,000 identity folders is the published recipe: no "may not train"."""
    for i in range(10_000):
        (tmp_path / str(i)).mkdir()
    with caplog.at_level("WARNING"):
        load_config(None, [f"--data.root={tmp_path}", "--head.preset=arcface", "--head.scale=64"])
    assert "may not train" not in caplog.text


def test_tensorboard_without_its_package_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tensorboard=true where the package is missing is a clear error when the config loads,
    not a traceback at the first log line (the shared venv has no tensorboard)."""
    from training import tensorboard_log

    monkeypatch.setattr(tensorboard_log, "available", lambda: False)
    with pytest.raises(ValueError, match=r"needs the tensorboard package.*marginface\[train\]"):
        load_config(None, ["--data.root=x", "--tensorboard=true"])
    assert load_config(None, ["--data.root=x"]).tensorboard is False  # off by default
