"""Face chips: the detected face with margin enough to detect and re-align it again.

A chip is what re-embedding a gallery with another recognizer needs (any 5-point template fits in
it) and what a client shows as "the example image of this face". It is the square of side
``2 * max(w, h)`` of the detection box, centred on the box, black where it leaves the image, shrunk
(never enlarged) to at most ``CHIP_MAX_SIDE`` pixels. Where the face lies in a chip follows from
the box alone (``face_box_in_chip``), so nothing about the chip needs to be stored beside it.
"""

from __future__ import annotations

import cv2
import numpy as np

#: the largest side a chip has (a face of up to 128 px keeps every pixel it had)
CHIP_MAX_SIDE = 256
#: the chip's side over the box's longest side
CHIP_MARGIN = 2.0
#: JPEG quality of a stored chip (re-embedding from it must stay close to the original)
CHIP_JPEG_QUALITY = 95

Box = tuple[float, float, float, float]


def _source_square(box: Box) -> tuple[int, int, int]:
    """(left, top, side) of the square a chip is cut from, in whole image pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    if not (w > 0 and h > 0 and np.isfinite([x1, y1, x2, y2]).all()):
        raise ValueError(f"a face box needs a positive width and height, got {box}")
    side = max(1, round(CHIP_MARGIN * max(w, h)))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return round(cx - side / 2), round(cy - side / 2), side


def cut_chip(image_bgr: np.ndarray, box: Box) -> np.ndarray:
    """The chip of the face in ``box`` (x1, y1, x2, y2 in image pixels); the chip keeps the
    image's channel order. Only the chip is allocated, whatever the padding: a face that fills a
    large photo does not cost a square twice its size. ValueError for an empty box."""
    left, top, side = _source_square(box)
    out_side = min(side, CHIP_MAX_SIDE)
    scale = out_side / side
    chip = np.zeros((out_side, out_side, *image_bgr.shape[2:]), dtype=image_bgr.dtype)
    height, width = image_bgr.shape[:2]
    ix0, iy0 = max(left, 0), max(top, 0)
    ix1, iy1 = min(left + side, width), min(top + side, height)
    if ix1 <= ix0 or iy1 <= iy0:
        return chip  # the box lies outside the image: nothing to copy
    dx0, dy0 = round((ix0 - left) * scale), round((iy0 - top) * scale)
    dx1, dy1 = round((ix1 - left) * scale), round((iy1 - top) * scale)
    if dx1 <= dx0 or dy1 <= dy0:
        return chip
    part = image_bgr[iy0:iy1, ix0:ix1]
    if (dx1 - dx0, dy1 - dy0) != (ix1 - ix0, iy1 - iy0):
        part = cv2.resize(part, (dx1 - dx0, dy1 - dy0), interpolation=cv2.INTER_AREA)
    chip[dy0:dy1, dx0:dx1] = part.reshape(chip[dy0:dy1, dx0:dx1].shape)
    return chip


def face_box_in_chip(box: Box, chip_side: int) -> Box:
    """Where the face of ``box`` lies in its chip of side ``chip_side`` (x1, y1, x2, y2): the box
    centre is the chip centre, its size scaled by ``chip_side / (2 * max(w, h))``. Exact to
    half a source pixel (the chip is cut on whole pixels). ValueError for an empty box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    if not (w > 0 and h > 0):
        raise ValueError(f"a face box needs a positive width and height, got {box}")
    scale = chip_side / (CHIP_MARGIN * max(w, h))
    half = chip_side / 2
    return (half - w / 2 * scale, half - h / 2 * scale, half + w / 2 * scale, half + h / 2 * scale)


def encode_chip(chip: np.ndarray) -> bytes:
    """A chip as JPEG bytes (quality CHIP_JPEG_QUALITY); the chip in OpenCV's BGR order.
    ValueError when OpenCV cannot encode it."""
    ok, data = cv2.imencode(".jpg", chip, [cv2.IMWRITE_JPEG_QUALITY, CHIP_JPEG_QUALITY])
    if not ok:
        raise ValueError(f"OpenCV could not encode a chip of shape {chip.shape} as JPEG")
    return bytes(data.tobytes())


def chip_jpeg(image_rgb: np.ndarray, box: Box) -> bytes:
    """The stored form of a face's chip, from the service's decoded RGB image
    (``service.vision.image.decode_image``): every enrollment path keeps exactly this, so
    decoding it again (RGB) gives the colours the face was embedded from."""
    chip = cut_chip(image_rgb, box)
    if chip.ndim == 3 and chip.shape[2] == 3:
        chip = np.ascontiguousarray(chip[:, :, ::-1])  # RGB -> BGR for OpenCV's encoder
    return encode_chip(chip)
