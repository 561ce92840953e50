"""The detector seam: the registry, YuNet as a second real detector, and the SCRFD decoder on a
graph with SCRFD's real output layout (built from the README's example manifest)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.detection_accuracy import dlib_recall
from service.errors import ModelError
from service.models import Manifest, resolve_model
from service.recognition import build_pipeline
from service.settings import Settings
from service.vision.detection import (
    DetectorOptions,
    OnnxDetector,
    create_detector,
    list_detectors,
    register_detector,
)
from service.vision.detectors.scrfd import ScrfdDetector
from service.vision.image import decode_image
from tests.conftest import DATA, ROOT


def test_the_registry_lists_every_decoder_and_refuses_unknown_ones(tmp_path: Path) -> None:
    assert {"retinaface", "yunet", "scrfd"} <= set(list_detectors())
    manifest, weights = resolve_model(ROOT / "models", "yunet-2023mar")
    odd = manifest.model_copy(
        update={"detector": manifest.detector.model_copy(update={"decoder": "ssd"})}  # type: ignore[union-attr]
    )
    with pytest.raises(ModelError, match=r"decoder 'ssd'.*registered: \['retinaface'"):
        create_detector(odd, weights, device="cpu")


def test_a_decoder_name_cannot_be_taken_twice() -> None:
    class Other(ScrfdDetector):
        pass

    register_detector("scrfd", ScrfdDetector)  # the same class again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_detector("scrfd", Other)


@pytest.mark.parametrize("model", ["retinaface-mnet025", "yunet-2023mar"])
def test_both_detectors_are_selectable_by_settings_and_find_every_face(model: str) -> None:
    settings = Settings(models_dir=ROOT / "models", device="cpu", detector={"model": model})
    pipeline = build_pipeline(settings, batching=False)
    assert pipeline.detector.manifest.name == model
    assert isinstance(pipeline.detector, OnnxDetector)
    t1 = decode_image((DATA / "detection/insightface/t1.jpg").read_bytes())
    assert len(pipeline.analyze(t1)) == 6
    pipeline.detector.options = DetectorOptions(score_threshold=0.5, min_face_px=8)
    report = dlib_recall(pipeline.detector, DATA / "detection/dlib_faces")
    assert report["found"] == 43  # both measured 43/43 (docs/benchmarks.md)


# ---- SCRFD: a graph with det_10g.onnx's output layout


def readme_scrfd_manifest() -> dict[str, object]:
    """The SCRFD manifest the README shows (so the documented example is the tested one)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    found = [json.loads(b) for b in blocks if '"decoder": "scrfd"' in b]
    assert len(found) == 1, "the README's insightface-pack section shows one SCRFD manifest"
    return found[0]  # type: ignore[no-any-return]


def scrfd_graph(side: int, planted: dict[int, tuple[int, int, float]], batch_axis: bool) -> bytes:
    """An ONNX graph laid out like det_10g.onnx for a ``side`` x ``side`` input: nine outputs,
    scores (n, 1) for strides 8, 16, 32, then distances (n, 4), then keypoints (n, 10), n =
    (side / stride)^2 x 2 anchors; all zero except the anchors in ``planted`` (stride: (cell,
    anchor, score)), whose box is 2, 3, 2, 3 strides around the centre and whose keypoints sit
    at fixed offsets. The outputs add 0 x mean(input), so the graph really reads its input."""
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outputs = []
    kinds = (("score", 1), ("bbox", 4), ("kps", 10))
    for kind, width in kinds:
        for stride in (8, 16, 32):
            n = (side // stride) ** 2 * 2
            value = np.zeros((n, width), np.float32)
            if stride in planted:
                cell, anchor, score = planted[stride]
                row = cell * 2 + anchor
                value[row] = {
                    "score": [score],
                    "bbox": [2, 3, 2, 3],
                    "kps": [-0.8, -0.8, 0.8, -0.8, 0, 0, -0.6, 1.2, 0.6, 1.2],
                }[kind]
            if batch_axis:
                value = value[None]
            name = f"{kind}_{stride}"
            inits.append(numpy_helper.from_array(value, f"{name}_c"))
            nodes.append(helper.make_node("Add", [f"{name}_c", "nothing"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, value.shape))
    graph = helper.make_graph(
        nodes,
        "scrfd_layout",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def scrfd_detector(tmp_path: Path, graph: bytes) -> OnnxDetector:
    raw = readme_scrfd_manifest()
    path = tmp_path / str(raw["file"])
    path.write_bytes(graph)
    raw["sha256"] = hashlib.sha256(graph).hexdigest()
    manifest = Manifest.model_validate(raw)
    return create_detector(manifest, path, device="cpu")


@pytest.mark.parametrize("batch_axis", [False, True], ids=["(n, k)", "(1, n, k)"])
def test_scrfd_decodes_its_real_output_layout(tmp_path: Path, batch_axis: bool) -> None:
    # stride 16, grid 40 x 40 on a 640 input: cell (x 10, y 20), second anchor
    graph = scrfd_graph(640, {16: (20 * 40 + 10, 1, 0.93)}, batch_axis)
    detector = scrfd_detector(tmp_path, graph)
    assert isinstance(detector, ScrfdDetector)
    # a 1280-px image is scaled by 0.5 to fit max_side 640: image coordinates are doubled
    image = np.full((1280, 1280, 3), 90, np.uint8)
    faces = detector.detect(image, DetectorOptions(max_side_px=640))
    assert len(faces) == 1
    face = faces[0]
    cx, cy = 10 * 16, 20 * 16
    np.testing.assert_allclose(
        face.box, np.array([cx - 32, cy - 48, cx + 32, cy + 48]) * 2, atol=1e-3
    )
    assert face.score == pytest.approx(0.93, abs=1e-6)
    offsets = np.array([-0.8, -0.8, 0.8, -0.8, 0, 0, -0.6, 1.2, 0.6, 1.2]).reshape(5, 2)
    expected = (np.array([cx, cy]) + 16 * offsets) * 2
    np.testing.assert_allclose(face.landmarks, expected, atol=1e-3)
    # below the score threshold: nothing
    assert detector.detect(image, DetectorOptions(max_side_px=640, score_threshold=0.95)) == []


def test_scrfd_keeps_one_of_two_anchors_on_the_same_face(tmp_path: Path) -> None:
    cell = 5 * 20 + 7  # stride 32 on 640: 20 x 20
    graph = scrfd_graph(640, {32: (cell, 0, 0.8), 16: (10 * 40 + 14, 0, 0.7)}, False)
    faces = scrfd_detector(tmp_path, graph).detect(np.zeros((640, 640, 3), np.uint8))
    assert [round(f.score, 2) for f in faces] == [0.8, 0.7]  # distinct places: both, best first


def test_scrfd_refuses_a_graph_without_keypoints(tmp_path: Path) -> None:
    graph = onnx.load_from_string(scrfd_graph(640, {}, False))
    del graph.graph.output[6:]  # scores and boxes only: the pack's detectors without landmarks
    with pytest.raises(ModelError, match="needs 9 outputs"):
        scrfd_detector(tmp_path, graph.SerializeToString())
