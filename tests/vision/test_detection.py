"""Detection, landmarks and alignment on real ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from bench.detection_accuracy import aflw_landmarks, dlib_recall
from service.evaluation import interocular_nme
from service.vision.alignment import ARCFACE_TEMPLATE_112, align_face, estimate_similarity
from service.vision.detection import DetectorOptions, nms
from service.vision.image import decode_image
from service.vision.pipeline import FacePipeline
from tests.conftest import DATA


def test_similarity_recovers_a_known_transform() -> None:
    src = np.asarray(ARCFACE_TEMPLATE_112)
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + shift
    matrix = estimate_similarity(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_similarity_refuses_degenerate_points() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        estimate_similarity(np.ones((5, 2)), np.asarray(ARCFACE_TEMPLATE_112))


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=float)
    assert nms(boxes, np.array([0.9, 0.95, 0.5]), 0.4) == [1, 2]


def test_group_photo_has_six_faces(pipeline: FacePipeline) -> None:
    image = decode_image((DATA / "detection/insightface/t1.jpg").read_bytes())
    faces = pipeline.detect(image)
    assert len(faces) == 6
    assert all(f.score > 0.9 for f in faces)


def test_recall_on_small_voc_faces(pipeline: FacePipeline) -> None:
    report = dlib_recall(pipeline.detector, DATA / "detection/dlib_faces")
    assert report["faces"] == 43
    assert report["recall"] >= 0.95  # measured: 43/43 (docs/benchmarks.md)


def test_landmark_error_on_aflw(pipeline: FacePipeline) -> None:
    report = aflw_landmarks(pipeline.detector, DATA / "landmarks5_aflw", limit=300)
    assert report["no_face"] <= 6
    assert report["nme_mean"] < 0.11  # measured on all 2,995 crops: 0.097


def test_aligned_crop_puts_landmarks_on_the_template(pipeline: FacePipeline) -> None:
    """Aligning a detected face and detecting again finds the landmarks on the template."""
    image = decode_image((DATA / "lfw/images/Colin_Powell/Colin_Powell_0001.jpg").read_bytes())
    face = max(pipeline.detect(image), key=lambda f: f.area)
    crop = align_face(image, face.landmarks)
    assert crop.shape == (112, 112, 3)
    again = pipeline.detect(crop, DetectorOptions(score_threshold=0.3, upscale_below_px=224))
    assert again
    nme = interocular_nme(again[0].landmarks, np.asarray(ARCFACE_TEMPLATE_112))[0]
    assert nme < 0.1


def naive_input(image: np.ndarray, mean: np.ndarray, std: np.ndarray, bgr: bool) -> np.ndarray:
    """The detector input as the manifest defines it, written the plain way: (pixel - mean) /
    std in the model's channel order, zero-padded to a multiple of 32, laid out (1, 3, H, W)."""
    x = (image[:, :, ::-1] if bgr else image).astype(np.float32)
    x = (x - mean) / std
    h, w = x.shape[:2]
    padded = np.zeros((-(-h // 32) * 32, -(-w // 32) * 32, 3), dtype=np.float32)
    padded[:h, :w] = x
    return padded.transpose(2, 0, 1)[None]


@pytest.mark.parametrize("bgr", [True, False])
def test_the_detector_input_is_the_manifest_formula_bit_for_bit(
    pipeline: FacePipeline, bgr: bool
) -> None:
    """The preprocessing writes each channel straight into the padded tensor (a bench finding:
    1.4 ms of CPU a photo went to float copies); the values stay exactly the plain formula's,
    for either channel order and a std other than 1 (SCRFD-style 127.5 / 128)."""
    detector = pipeline.detector
    photo = decode_image((DATA / "lfw/images/Colin_Powell/Colin_Powell_0001.jpg").read_bytes())
    odd = np.ascontiguousarray(photo[7:200, 3:131])  # 193x128: padded on one side only
    mean = np.asarray([127.5, 120.0, 110.25], dtype=np.float32)
    std = np.asarray([128.0, 57.1, 1.0], dtype=np.float32)
    original = (detector.manifest, detector._mean, detector._std)
    detector.manifest = detector.manifest.model_copy(deep=True)
    detector.manifest.input.color_order = "BGR" if bgr else "RGB"
    try:
        for image in (photo, odd):
            for m, s in ((original[1], original[2]), (mean, std)):
                detector._mean, detector._std = m, s
                tensor, scale = detector._preprocess(image, 960, 0)
                assert scale == 1.0
                assert tensor.flags.c_contiguous and tensor.dtype == np.float32
                np.testing.assert_array_equal(tensor, naive_input(image, m, s, bgr))
    finally:
        detector.manifest, detector._mean, detector._std = original


def naive_anchors(strides: list[int], min_sizes: list[list[int]], h: int, w: int) -> np.ndarray:
    """RetinaFace's prior boxes the plain way: every cell of every stride, row by row, each
    cell's sizes in turn."""
    rows = []
    for stride, sizes in zip(strides, min_sizes, strict=True):
        for y in range(-(-h // stride)):
            for x in range(-(-w // stride)):
                rows += [((x + 0.5) * stride, (y + 0.5) * stride, float(s)) for s in sizes]
    return np.asarray(rows)


def test_retinaface_decodes_only_the_anchors_it_keeps_and_they_are_the_grids() -> None:
    from service.models import DetectorSpec
    from service.vision.detectors.retinaface import anchor_count, anchors_at, make_anchors

    spec = DetectorSpec()
    rng = np.random.default_rng(0)
    for h, w in ((256, 256), (224, 320), (96, 160)):
        full = naive_anchors(spec.strides, spec.min_sizes, h, w)
        assert anchor_count(spec, h, w) == len(full)
        np.testing.assert_array_equal(make_anchors(spec, h, w), full)
        some = np.sort(rng.choice(len(full), size=25, replace=False))
        np.testing.assert_array_equal(anchors_at(spec, h, w, some), full[some])
        assert anchors_at(spec, h, w, np.arange(0)).shape == (0, 3)
