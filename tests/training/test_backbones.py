"""Every registered backbone: output shape, finite values, train/eval modes, loud unknown names."""

from __future__ import annotations

import pytest
import torch

from training.backbones import create_backbone, list_backbones, register_backbone


def test_registry_lists_the_family() -> None:
    assert set(list_backbones()) >= {
        "iresnet18",
        "iresnet34",
        "iresnet50",
        "iresnet100",
        "mobilefacenet",
    }


def test_unknown_name_is_loud() -> None:
    with pytest.raises(KeyError, match="registered: iresnet100"):
        create_backbone("resnet9000")


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_backbone("mobilefacenet")(lambda **_: torch.nn.Identity())


@pytest.mark.parametrize("name", list_backbones())
def test_shapes_and_modes(name: str) -> None:
    torch.manual_seed(0)
    # the deep IResNets at a quarter of the width: same depth and shapes, CI-sized on 2 cores
    kwargs = {"width": 16} if name in ("iresnet50", "iresnet100") else {}
    model = create_backbone(name, embedding_dim=64, **kwargs)
    x = torch.randn(2, 3, 112, 112)
    model.train()
    out = model(x)
    assert out.shape == (2, 64) and torch.isfinite(out).all()
    out.sum().backward()
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)  # eval is deterministic (no dropout, running BN stats)
    assert torch.isfinite(a).all()


def test_an_exported_model_is_one_file_its_sha256_covers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """torch's dynamo exporter writes the weights of a model this size (6 MB) to a side file
    (model.onnx.data) that the manifest's sha256 would not cover."""
    import onnx

    from training.export import export_onnx

    model = create_backbone("iresnet18", embedding_dim=128, width=16)
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert path.stat().st_size > 5_000_000  # the weights are in it
    onnx.checker.check_model(onnx.load(str(path), load_external_data=False))
