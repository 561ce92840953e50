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
