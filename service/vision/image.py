"""Image decoding: any common upload to an upright 8-bit RGB array, or a specific error.

Everything a caller can send passes through here first, so this is where hostile input stops:
undecodable bytes, decompression bombs (the pixel count is checked from the header, before any
pixel is decoded), CPU bombs (the container's structure is checked first: ``image_cost``),
animations, and images too small to hold a face.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from service.vision.image_cost import DecodeCost, check_decode_cost

# PIL's own bomb check would raise its own exception type past 2x its default; ours runs first.
Image.MAX_IMAGE_PIXELS = None

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
MIN_SIDE_PX = 16


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 40_000_000,
    min_side: int = MIN_SIDE_PX,
    cost: DecodeCost | None = None,
    admit: Callable[[int, int, str], None] | None = None,
) -> np.ndarray:
    """Decode bytes into an (H, W, 3) uint8 RGB array with EXIF orientation applied.

    Raises InvalidImage (not an image, truncated), ImageTooLarge (over ``max_pixels``, checked
    before decoding), ImageTooComplex (more scans, chunks or strips than encoders write, checked
    before decoding), UnsupportedImage (animated, smaller than ``min_side``). ``admit(width,
    height, mode)`` runs after those checks and before any pixel is decoded: a memory budget
    waits there, or raises to refuse.
    """
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    check_decode_cost(data, cost)
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError as exc:
        raise InvalidImage(
            "the data is not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF)"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"the image header cannot be read: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image has {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            width=width,
            height=height,
            max_pixels=max_pixels,
        )
    frames = int(getattr(img, "n_frames", 1))
    if frames > 1 and img.format != "JPEG":
        raise UnsupportedImage(
            f"animated or multi-frame images are not supported ({frames} frames); "
            "send a single frame"
        )
    if admit is not None:
        admit(width, height, img.mode)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            # in place: without an orientation tag, exif_transpose would copy the whole image
            upright: Image.Image = ImageOps.exif_transpose(img, in_place=True) or img
            rgb = _to_rgb8(upright)
            del img, upright  # the decoded image goes before the caller's next step
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"the image data is truncated or corrupt: {exc}") from exc
    if min(rgb.shape[:2]) < min_side:
        raise UnsupportedImage(
            f"the image is {rgb.shape[1]}x{rgb.shape[0]} pixels; each side must be at least "
            f"{min_side} pixels to hold a face"
        )
    return rgb


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode (grey, palette, RGBA, CMYK, 16-bit, float) to 8-bit RGB."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.array(img, dtype=np.float32)  # writable: scaled in place
        np.nan_to_num(arr, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(arr.max(initial=0))
        if mode == "F" and peak <= 1.0:
            top = 1.0  # float images in [0, 1] (scientific tools): scaled, not rounded to black
        elif mode.startswith("I;16") or peak > 255:
            top = 65535.0
        else:
            top = 255.0
        arr *= 255.0 / top
        arr += 0.5
        np.clip(arr, 0, 255, out=arr)
        grey = arr.astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "L":  # grey: repeated in numpy (Pillow's RGB would take 4 bytes a pixel)
        grey8 = np.asarray(img, dtype=np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: a transparent background should not read as black skin.
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, (0, 0), rgba)  # the alpha channel is the mask: a blend, no copies
        del rgba
        img = white
    converted = img if img.mode == "RGB" else img.convert("RGB")  # convert copies even RGB
    return np.ascontiguousarray(np.asarray(converted, dtype=np.uint8))
