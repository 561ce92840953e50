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
