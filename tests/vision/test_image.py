"""Decoding: formats, modes, EXIF orientation, and every hostile input we know of."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from service.vision.image import decode_image
from tests.conftest import lfw, png_bytes


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR that claims width x height, with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def face_rgb() -> Image.Image:
    return Image.open(lfw("George_W_Bush", 1)).convert("RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_formats_decode_to_rgb8(face_rgb: Image.Image, fmt: str) -> None:
    out = decode_image(encode(face_rgb, fmt))
    assert out.dtype == np.uint8 and out.shape == (250, 250, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_modes_become_rgb8(face_rgb: Image.Image, mode: str) -> None:
    if mode == "I;16":
        grey = np.asarray(face_rgb.convert("L"), dtype=np.uint16) * 257
        data = encode(Image.fromarray(grey), "PNG")
    else:
        fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
        data = encode(face_rgb.convert(mode), fmt)
    out = decode_image(data)
    assert out.shape == (250, 250, 3) and out.dtype == np.uint8
    reference = np.asarray(face_rgb.convert("L"), dtype=np.float64)
    # the same picture, not noise or a black frame
    corr = np.corrcoef(out.mean(axis=2).ravel(), reference.ravel())[0, 1]
    assert corr > 0.95


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(face_rgb: Image.Image, orientation: int) -> None:
    upright = np.asarray(face_rgb)
    # store the pixels as a camera would (the inverse of what the tag asks for)
    t = Image.Transpose
    inverse = {
        1: None,
        2: t.FLIP_LEFT_RIGHT,
        3: t.ROTATE_180,
        4: t.FLIP_TOP_BOTTOM,
        5: t.TRANSPOSE,
        6: t.ROTATE_90,
        7: t.TRANSVERSE,
        8: t.ROTATE_270,
    }[orientation]
    stored = np.asarray(face_rgb if inverse is None else face_rgb.transpose(inverse))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(stored), "PNG", exif=exif.tobytes())
    out = decode_image(data)
    assert out.shape == upright.shape
    assert np.abs(out.astype(int) - upright.astype(int)).mean() < 1.0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidImage),
        (b"this is not an image at all", InvalidImage),
        (b"%PDF-1.4\n1 0 obj<<>>endobj", InvalidImage),
        (b"PK\x03\x04" + b"\0" * 60, InvalidImage),
        (png_bytes(np.zeros((1, 1, 3), np.uint8)), UnsupportedImage),
        (png_bytes(np.zeros((1, 500, 3), np.uint8)), UnsupportedImage),
        (huge_png_header(100_000, 100_000), ImageTooLarge),
    ],
    ids=["empty", "text", "pdf", "zip", "1x1", "1x500", "bomb"],
)
def test_bad_inputs_raise_specific_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_image(data)


def test_truncated_and_bitflipped_jpeg(face_rgb: Image.Image) -> None:
    data = encode(face_rgb, "JPEG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[2:40] = bytes(38)  # wreck the header segments
    with pytest.raises(InvalidImage):
        decode_image(bytes(flipped))


def test_animated_gif_is_refused_with_its_own_code(face_rgb: Image.Image) -> None:
    frames = [face_rgb, face_rgb.rotate(10)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(UnsupportedImage, match="frames"):
        decode_image(buf.getvalue())


def test_pixel_limit_is_checked_before_decoding(face_rgb: Image.Image) -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(encode(face_rgb, "PNG"), max_pixels=250 * 250 - 1)
