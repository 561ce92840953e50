"""A face is a face: validity (no faces on dogs or cats), the quality score and its factors, and
the documented choice of face for verify and enroll."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from bench.detection_accuracy import ValidFaces, aflw_landmarks, dlib_recall
from bench.face_validity import non_face_images
from service.errors import LowQuality, MultipleFaces, NoFace
from service.vision.alignment import ARCFACE_TEMPLATE_112
from service.vision.detection import DetectorOptions
from service.vision.image import decode_image
from service.vision.pipeline import FacePipeline, require_quality
from service.vision.quality import FACTORS, estimate_pose
from tests.conftest import DATA, lfw

TEMPLATE = np.asarray(ARCFACE_TEMPLATE_112)


def rgb(path: object) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))  # type: ignore[arg-type]


def test_no_human_face_in_the_dogs_photo(pipeline: FacePipeline) -> None:
    """Was a strict xfail: RetinaFace scores three dog faces up to 0.99."""
    image = decode_image((DATA / "detection/dlib_faces/dogs.jpg").read_bytes())
    assert len(pipeline.detect(image)) == 3  # the raw detector still sees them ...
    assert pipeline.analyze(image) == []  # ... the pipeline refuses them as faces
    with pytest.raises(NoFace, match="refused") as info:
        pipeline.choose_face(image)
    assert info.value.details["not_faces"] == 3


@pytest.mark.parametrize("path", non_face_images(DATA)[1:], ids=lambda p: p.stem)
def test_no_face_in_the_photos_scikit_image_bundles(pipeline: FacePipeline, path: object) -> None:
    image = np.ascontiguousarray(rgb(path))
    assert pipeline.analyze(image) == []
    assert pipeline.analyze(np.ascontiguousarray(image[:, ::-1])) == []  # mirrored too


def test_every_real_face_is_kept(pipeline: FacePipeline) -> None:
    """43/43 dlib/VOC faces and 6/6 in t1.jpg through the validity check, as before it."""
    faces = ValidFaces(pipeline)
    faces.options = DetectorOptions(score_threshold=0.5, min_face_px=8)
    assert dlib_recall(faces, DATA / "detection/dlib_faces")["found"] == 43
    t1 = decode_image((DATA / "detection/insightface/t1.jpg").read_bytes())
    assert len(pipeline.analyze(t1)) == 6


def test_no_aflw_face_is_lost_to_the_validity_check(pipeline: FacePipeline) -> None:
    faces = ValidFaces(pipeline)
    root = DATA / "landmarks5_aflw"
    enlarged = aflw_landmarks(faces, root, limit=300)
    native = aflw_landmarks(faces, root, limit=300, upscale_to=0)
    raw_native = aflw_landmarks(pipeline.detector, root, limit=300, upscale_to=0)
    assert enlarged["no_face"] <= 6  # all 2,995: 6 enlarged, 145 native (docs/benchmarks.md)
    assert native["no_face"] == raw_native["no_face"]


# ---- quality


def test_pose_from_landmarks() -> None:
    frontal = estimate_pose(TEMPLATE, TEMPLATE)
    assert abs(frontal.yaw_deg) < 1e-6 and abs(frontal.pitch_deg) < 1e-6
    turned = TEMPLATE.copy()
    turned[2, 0] += 10  # the nose moves towards the right eye
    assert estimate_pose(turned, TEMPLATE).yaw_deg > 25
    down = TEMPLATE.copy()
    down[2, 1] += 8  # towards the mouth
    assert estimate_pose(down, TEMPLATE).pitch_deg > 20
    rolled = TEMPLATE @ np.array([[0.94, 0.34], [-0.34, 0.94]]).T
    pose = estimate_pose(rolled, TEMPLATE)
    assert pose.roll_deg == pytest.approx(-20, abs=0.5) and abs(pose.yaw_deg) < 2


def the_face(pipeline: FacePipeline, image: np.ndarray) -> object:
    return pipeline.choose_face(image).face.quality


def test_every_factor_is_reported_and_the_score_is_in_unit_range(pipeline: FacePipeline) -> None:
    image = decode_image(lfw("Colin_Powell", 1).read_bytes())
    quality = pipeline.choose_face(image).face.quality
    assert quality is not None
    assert set(quality.factors) == set(FACTORS)
    assert 0.0 <= quality.score <= 1.0
    assert all(0.0 <= v <= 1.0 for v in quality.factors.values())
    assert quality.score >= 0.6  # a clear frontal press photo


def test_blur_and_size_lower_quality_and_are_named(pipeline: FacePipeline) -> None:
    image = decode_image(lfw("Colin_Powell", 1).read_bytes())
    sharp = pipeline.choose_face(image).face.quality
    blurred_image = cv2.GaussianBlur(image, (0, 0), 8)
    blurred = pipeline.choose_face(blurred_image).face.quality
    small_image = cv2.resize(cv2.resize(image, (60, 60), interpolation=cv2.INTER_AREA), (250, 250))
    small = pipeline.choose_face(cv2.resize(image, (90, 90), interpolation=cv2.INTER_AREA))
    assert sharp is not None and blurred is not None and small.face.quality is not None
    assert blurred.score < sharp.score - 0.3
    assert blurred.factors["sharpness"] < sharp.factors["sharpness"]
    assert blurred.factors["recognizability"] < 0.5 * sharp.factors["recognizability"]
    assert small.face.quality.factors["size"] < 0.5 * sharp.factors["size"]
    assert small.face.quality.weakest in ("size", "sharpness")  # enlarged: blurred as well
    pixelated = pipeline.choose_face(small_image).face.quality
    assert pixelated is not None and pixelated.score < sharp.score


def test_the_floor_refuses_and_names_the_weakest_factor(pipeline: FacePipeline) -> None:
    image = decode_image(lfw("Colin_Powell", 1).read_bytes())
    blurred = cv2.GaussianBlur(image, (0, 0), 8)
    chosen = pipeline.choose_face(blurred)
    assert chosen.face.quality is not None
    floor = chosen.face.quality.score + 0.01
    with pytest.raises(LowQuality) as info:
        pipeline.choose_face(blurred, min_quality=floor)
    assert info.value.details["weakest"] == chosen.face.quality.weakest == "recognizability"
    assert "recognizability" in info.value.message and "also low: sharpness" in info.value.message
    assert set(info.value.details["factors"]) == set(FACTORS)
    assert require_quality(chosen, 0.0) is chosen  # 0: off
    assert pipeline.choose_face(image, min_quality=floor).face  # the sharp photo passes


# ---- which face


def composed_dogs_and_face() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """dogs.jpg (three dog faces RetinaFace scores up to 0.99, the largest 417 px) with an LFW
    portrait pasted where no dog is: the largest box is not a face."""
    dogs = decode_image((DATA / "detection/dlib_faces/dogs.jpg").read_bytes()).copy()
    person = decode_image(lfw("Colin_Powell", 1).read_bytes())
    dogs[20:270, 20:270] = person
    return dogs, (20, 20, 270, 270)


def test_the_largest_box_is_not_chosen_when_it_is_not_a_face(pipeline: FacePipeline) -> None:
    image, (x1, y1, x2, y2) = composed_dogs_and_face()
    raw = pipeline.detect(image)
    largest = max(raw, key=lambda d: d.area)
    assert largest.box[0] > x2  # the largest detection is a dog
    chosen = pipeline.choose_face(image)
    bx1, by1, bx2, by2 = chosen.face.box
    assert x1 <= bx1 < bx2 <= x2 and y1 <= by1 < by2 <= y2
    assert chosen.faces_found == 1 and chosen.not_faces == 3
    # one real face: the 'reject' policy accepts it (the dogs do not count as faces)
    assert pipeline.choose_face(image, policy="reject").face.box == chosen.face.box


def test_reject_still_refuses_two_real_faces(pipeline: FacePipeline) -> None:
    a = decode_image(lfw("Colin_Powell", 1).read_bytes())
    b = decode_image(lfw("Tony_Blair", 1).read_bytes())
    with pytest.raises(MultipleFaces):
        pipeline.choose_face(np.hstack([a, b]), policy="reject")


def test_a_sharp_face_wins_over_a_slightly_larger_blurred_one(pipeline: FacePipeline) -> None:
    a = decode_image(lfw("Colin_Powell", 1).read_bytes())
    # Blair's photo without its left edge, whose partial bystander would sit at the canvas's
    # centre (the centre prior would rightly prefer it to two faces at the edges)
    blair = decode_image(lfw("Tony_Blair", 1).read_bytes())[:, 30:]
    b = cv2.GaussianBlur(cv2.resize(blair, (242, 275)), (0, 0), 6)
    canvas = np.full((275, 532, 3), 127, np.uint8)  # a gap: no box straddles the two
    canvas[:250, :250] = a
    canvas[:, 290:] = b
    chosen = pipeline.choose_face(canvas)
    assert chosen.faces_found == 2
    assert chosen.face.box[2] <= 250  # Powell, sharp, not Blair, larger but blurred


def test_judging_fewer_candidates_chooses_what_judging_all_of_them_does(
    pipeline: FacePipeline,
) -> None:
    """choose_face embeds a smaller candidate only when it could still win; the choice must be
    the one the full rule (every one of the 5 largest judged) makes, on photos with bystanders,
    a group photo and the composed dogs."""
    from service.vision.pipeline import CHOICE_CANDIDATES, centrality, merit

    photos = [
        decode_image(p.read_bytes()) for p in sorted((DATA / "lfw/images").glob("*/*.jpg"))[::400]
    ]
    photos += [decode_image((DATA / "detection/insightface/t1.jpg").read_bytes())]
    photos += [composed_dogs_and_face()[0]]
    several = 0
    for image in photos:
        detections = pipeline.detect(image)
        if not detections:
            continue
        everyone = pipeline.embed_detections(
            image, sorted(detections, key=lambda d: -d.area)[:CHOICE_CANDIDATES]
        )
        real = [f for f in everyone if f.quality is None or f.quality.valid]
        if not real:
            continue
        several += len(real) > 1
        largest = max(f.area for f in real)
        h, w = image.shape[:2]
        expected = max(real, key=lambda f: merit(f, largest, centrality(f.box, w, h)))
        assert pipeline.choose_face(image).face.box == expected.box
    assert several >= 5  # the rule was tested where it has a choice to make


@pytest.mark.parametrize(
    "photo",
    [
        "Alejandro_Avila_0003",
        "Julianne_Moore_0016",
        "Laura_Bush_0011",
        "Cheryl_Hines_0001",
        # what the first centre prior (floor 0.75) still got wrong (bench/face_choice.py)
        "Charles_Schumer_0002",
        "Elena_de_Chavez_0001",
        "Kosuke_Kitajima_0002",
    ],
)
def test_a_sharp_bystander_at_the_frame_edge_is_not_the_main_face(
    pipeline: FacePipeline, photo: str
) -> None:
    """Found on LFW with --face choice (99.23% against the protocol's 99.48%): in 16 of the 7,701
    photos the rule took a bystander cut by the frame's edge, sharper or larger than the
    person in the middle. The main face is the central one."""
    from service.calibration import central_face

    name = photo.rsplit("_", 1)[0]
    image = decode_image((DATA / "lfw/images" / name / f"{photo}.jpg").read_bytes())
    central, _ = central_face(pipeline, image)
    assert central is not None
    chosen = pipeline.choose_face(image)
    assert chosen.faces_found >= 2
    assert chosen.face.box == central.box


@pytest.mark.parametrize(
    "photo",
    [
        "Arsinee_Khanjian_0001",
        "Colin_Montgomerie_0004",
        "Jeff_Feldman_0001",
        "Tatiana_Shchegoleva_0001",
    ],
)
def test_a_large_face_the_detector_is_sure_of_is_kept(pipeline: FacePipeline, photo: str) -> None:
    """Found by replaying the rule on every LFW photo (bench/face_choice.py): these four photos'
    only face was refused (feature norm 8.9 to 9.95 under the large-face bound 10, YuNet 0.85 to
    0.89 under 0.9) although RetinaFace scores it 0.996 or more; verify answered no_face. No false
    detection in the negatives combines such a score with such a norm (docs/benchmarks.md)."""
    name = photo.rsplit("_", 1)[0]
    image = decode_image((DATA / "lfw/images" / name / f"{photo}.jpg").read_bytes())
    chosen = pipeline.choose_face(image)
    assert chosen.face.quality is not None and chosen.face.quality.valid
    assert chosen.not_faces == 0
