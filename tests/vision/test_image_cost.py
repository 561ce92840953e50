"""CPU bombs under the pixel limit (issue 25, finding 2): files whose structure, not their
pixels, makes the decoder work. Each is refused from its container before any pixel is decoded,
and the files real encoders write still decode."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageTooComplex, UnsupportedImage
from service.vision.image import decode_image
from service.vision.image_cost import DecodeCost, check_decode_cost
from tests.conftest import lfw
from tests.reliability import decode_bombs as bombs

LIMITS = DecodeCost()

# each bomb one step past its bound, and what decoding it cost on main (this machine)
OVER: dict[str, Callable[[], bytes]] = {
    # 200 scans: 7.6 s of CPU on main (5,000: 66 s), decoded to a grey image
    "jpeg_scans": lambda: bombs.progressive_jpeg_bomb(200),
    # 1M strip offsets (8 MB): 5.3 s of CPU on main, decoded
    "tiff_strips": lambda: bombs.tiff_of_many_strips(LIMITS.max_tiff_blocks + 1),
    # the same as BigTIFF (64-bit offsets): 1M strips cost 6.6 s of CPU before it was walked too
    "bigtiff_strips": lambda: bombs.tiff_of_many_strips(LIMITS.max_tiff_blocks + 1, big=True),
    # 200k chunks (3 MB): decoded on main
    "png_chunks": lambda: bombs.png_of_tiny_chunks(200_000),
    # a million sub-blocks (2 MB): decoded on main
    "gif_blocks": lambda: bombs.gif_of_tiny_blocks(1_000_000),
    "webp_chunks": lambda: bombs.webp_of_many_chunks(200_000),
}


@pytest.mark.parametrize("case", sorted(OVER))
def test_a_file_past_its_structure_bound_is_image_too_complex(case: str) -> None:
    with pytest.raises(ImageTooComplex) as refused:
        decode_image(OVER[case]())
    assert refused.value.code == "image_too_complex"
    assert refused.value.status == 422


def test_the_scan_bound_is_exact() -> None:
    """64 scans pass (a small image, so it decodes quickly), 65 do not."""
    at = bombs.progressive_jpeg_bomb(LIMITS.max_jpeg_scans, side=64)
    assert at.count(b"\xff\xda") == LIMITS.max_jpeg_scans
    assert decode_image(at).shape == (64, 64, 3)
    with pytest.raises(ImageTooComplex, match="65 > 64"):
        decode_image(bombs.progressive_jpeg_bomb(LIMITS.max_jpeg_scans + 1, side=64))


def test_bigtiff_below_its_bounds_still_decodes() -> None:
    assert decode_image(bombs.tiff_of_many_strips(4, big=True)).shape == (64, 64, 3)


def test_a_second_frame_is_refused_without_walking_the_rest() -> None:
    """100k one-pixel GIF frames: Pillow counted every one before refusing."""
    with pytest.raises(UnsupportedImage, match="frames"):
        check_decode_cost(bombs.gif_of_many_frames(100_000))


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("JPEG", {"progressive": True, "quality": 90}),
        ("JPEG", {"progressive": True, "optimize": True, "subsampling": 0}),
        ("JPEG", {"quality": 75}),
        ("PNG", {"optimize": True}),
        ("GIF", {}),
        ("WEBP", {"quality": 80}),
        ("WEBP", {"lossless": True}),
        ("TIFF", {"compression": "tiff_deflate"}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("TIFF", {"compression": "jpeg"}),
        ("TIFF", {"compression": "packbits"}),
        ("BMP", {}),
    ],
)
def test_files_real_encoders_write_still_decode(fmt: str, options: dict[str, object]) -> None:
    face = Image.open(lfw("Colin_Powell", 1)).convert("RGB").resize((1500, 1500))
    data = bombs.encode(face, fmt, **options)
    assert decode_image(data).shape == (1500, 1500, 3)


def test_real_photos_are_far_below_the_bounds() -> None:
    """Every LFW photo of one person and a big progressive photo with EXIF."""
    for path in sorted(lfw("Colin_Powell", 1).parent.glob("*.jpg"))[:40]:
        check_decode_cost(path.read_bytes())
    big = Image.open(lfw("Colin_Powell", 1)).resize((6000, 4000))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = bombs.encode(big, "JPEG", progressive=True, exif=exif.tobytes(), quality=95)
    check_decode_cost(data)


def test_a_float_tiff_in_zero_to_one_is_scaled_not_black() -> None:
    """Also found in issue 25: a float TIFF with values in [0, 1] (what scientific tools write)
    decoded to black on main (every value rounded to 0 or 1), so no face was ever found."""
    data, expected = bombs.float_tiff()
    rgb = decode_image(data)
    assert int(rgb.max()) == 255
    assert np.abs(rgb[:, :, 0].astype(int) - expected).max() <= 1
