"""Face chips: cut from real photos, the face is found again where ``face_box_in_chip`` says,
and re-embedding it from the stored JPEG gives the embedding it was enrolled with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.vision.chip import CHIP_MAX_SIDE, chip_jpeg, cut_chip, face_box_in_chip
from service.vision.image import decode_image
from service.vision.pipeline import FacePipeline
from tests.conftest import DATA, lfw


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


PHOTOS = [
    DATA / "detection/insightface/t1.jpg",  # six small faces of a group photo
    lfw("Colin_Powell", 1),
    lfw("Tony_Blair", 3),
    lfw("Serena_Williams", 2),
    lfw("George_W_Bush", 10),
]


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: Path(p).stem)
def test_a_chip_holds_the_face_where_it_says_and_re_embeds_it(
    photo: Path, pipeline: FacePipeline
) -> None:
    image = decode_image(photo.read_bytes())
    faces = pipeline.analyze(image)
    assert faces, "the photo's faces were not found"
    for face in faces:
        stored = chip_jpeg(image, face.box)
        assert stored.startswith(b"\xff\xd8\xff")
        chip = decode_image(stored)  # what re-embedding reads: the stored JPEG, decoded as RGB
        side = chip.shape[0]
        assert chip.shape[:2] == (side, side) and side <= CHIP_MAX_SIDE
        expected = face_box_in_chip(face.box, side)
        again = pipeline.analyze(chip)
        assert again, f"no face found again in the chip of {face.box}"
        best = max(again, key=lambda f: iou(f.box, expected))
        assert iou(best.box, expected) > 0.5, (best.box, expected)
        cosine = float(np.dot(best.embedding, face.embedding))
        assert cosine > 0.9, f"re-embedded from its chip: cosine {cosine:.3f}"


def test_chip_colours_are_the_photo_s_own(pipeline: FacePipeline) -> None:
    """The service decodes to RGB and OpenCV encodes BGR: a swapped chip would still hold a
    face, so compare the colours themselves."""
    image = decode_image(lfw("Serena_Williams", 2).read_bytes())
    face = pipeline.analyze(image)[0]
    x1, y1, x2, y2 = (int(v) for v in face.box)
    chip = decode_image(chip_jpeg(image, face.box))
    cx1, cy1, cx2, cy2 = (int(v) for v in face_box_in_chip(face.box, chip.shape[0]))
    source = image[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
    kept = chip[cy1:cy2, cx1:cx2].reshape(-1, 3).mean(axis=0)
    assert np.abs(source - kept).max() < 6, (source, kept)
    assert abs(source[0] - source[2]) > 12  # a face is redder than blue: a swap would show


def test_chip_geometry_pads_with_black_and_never_upscales() -> None:
    image = np.full((100, 200, 3), 200, dtype=np.uint8)
    small = cut_chip(image, (10.0, 20.0, 30.0, 50.0))  # 20 x 30 box: a 60 px square
    assert small.shape == (60, 60, 3)
    # the square runs from x = -10 and y = 5: the first 10 columns lie left of the image
    assert (small[:, :10] == 0).all() and (small[:, 10:] == 200).all()
    large = cut_chip(np.full((1000, 1000, 3), 90, np.uint8), (100.0, 100.0, 900.0, 900.0))
    assert large.shape == (CHIP_MAX_SIDE, CHIP_MAX_SIDE, 3)
    # the square (side 1600) reaches 300 px past each edge: 48 of the chip's 256 px
    assert (large[:48] == 0).all() and (large[:, 208:] == 0).all()
    assert (large[48:208, 48:208] == 90).all()
    assert face_box_in_chip((100.0, 100.0, 900.0, 900.0), 256) == (64.0, 64.0, 192.0, 192.0)
    assert face_box_in_chip((10.0, 20.0, 30.0, 50.0), 60) == (20.0, 15.0, 40.0, 45.0)
    with pytest.raises(ValueError, match="positive width"):
        cut_chip(image, (5.0, 5.0, 5.0, 9.0))
