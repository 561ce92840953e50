"""Files that are cheap to send and expensive to decode, built here (never downloaded).

Each one stays under the pixel and byte limits; what it abuses is the structure of its container:
scans, chunks, blocks, pages or strips. Used by tests/vision/test_image_cost.py, the API tests
and bench/worst_case_load.py.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    """An image in a format, as bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def progressive_jpeg_bomb(scans: int, side: int = 6000) -> bytes:
    """A flat side x side progressive JPEG whose last (tiny AC) scan is repeated until the file
    has ``scans`` scans: each repeat makes libjpeg walk every block again (issue 25, finding 2:
    5,000 scans in 436 KB cost 66 s of CPU)."""
    plain = encode(Image.new("RGB", (side, side), (128, 128, 128)), "JPEG", progressive=True)
    last = plain.rfind(b"\xff\xda")
    body, scan = plain[:-2], plain[last:-2]  # -2: the EOI marker
    have = plain.count(b"\xff\xda")
    return body + scan * max(0, scans - have) + b"\xff\xd9"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_of_tiny_chunks(chunks: int, side: int = 1000) -> bytes:
    """A grey PNG whose pixel data is cut into one-byte IDAT chunks, padded with empty tEXt
    chunks up to ``chunks``: Pillow reads every chunk in Python."""
    raw = zlib.compress(b"".join(b"\0" + b"\x80" * side for _ in range(side)), 9)
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    )
    idat = b"".join(_png_chunk(b"IDAT", raw[i : i + 1]) for i in range(len(raw)))
    text = _png_chunk(b"tEXt", b"a\0b") * max(0, chunks - len(raw))
    return head + text + idat + _png_chunk(b"IEND", b"")


def gif_of_tiny_blocks(blocks: int) -> bytes:
    """A one-frame GIF with a comment made of ``blocks`` one-byte sub-blocks."""
    plain = encode(Image.new("L", (100, 100), 5), "GIF")
    comment = b"\x21\xfe" + b"\x01a" * blocks + b"\x00"
    return plain[:-1] + comment + b"\x3b"


def gif_of_many_frames(frames: int) -> bytes:
    """A GIF with ``frames`` one-pixel frames (Pillow counts them all, in Python)."""
    plain = encode(Image.new("L", (100, 100), 5), "GIF")
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00" + b"\x02\x02\x4c\x01\x00"
    return plain[:-1] + frame * frames + b"\x3b"


def tiff_of_many_strips(strips: int, side: int = 64, *, big: bool = False) -> bytes:
    """An uncompressed grey TIFF (``big``: BigTIFF) whose one strip is listed ``strips`` times
    (Pillow reads the offsets into Python tuples; libtiff walks each)."""
    pixels = bytes(side * side)
    order = "<"
    entry_fmt, entry_size, word = ("HHQQ", 20, "Q") if big else ("HHII", 12, "I")
    entries = [  # tag, type, count, value or offset (LONG8 = 16 in BigTIFF)
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 16 if big else 4, strips, 0),  # StripOffsets: filled below
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, max(1, side // strips) if strips <= side else 1),  # RowsPerStrip
        (279, 16 if big else 4, strips, 0),  # StripByteCounts: filled below
    ]
    head = b"II+\x00" + struct.pack("<HH", 8, 0) + struct.pack("<Q", 16) if big else b""
    if not big:
        head = b"II*\x00" + struct.pack("<I", 8)
    ifd_at = len(head)
    count_size = 8 if big else 2
    ifd_size = count_size + entry_size * len(entries) + struct.calcsize(word)
    word_size = struct.calcsize(word)
    offsets_at = ifd_at + ifd_size
    counts_at = offsets_at + word_size * strips
    pixels_at = counts_at + word_size * strips
    ifd = struct.pack(order + ("Q" if big else "H"), len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = offsets_at if strips > 1 else pixels_at
        elif tag == 279:
            value = counts_at if strips > 1 else len(pixels)
        ifd += struct.pack(order + entry_fmt, tag, kind, count, value)
    ifd += struct.pack(order + word, 0)
    per_strip = max(1, len(pixels) // strips)
    offsets = struct.pack(order + f"{strips}{word}", *([pixels_at] * strips))
    counts = struct.pack(order + f"{strips}{word}", *([per_strip] * strips))
    body = offsets + counts if strips > 1 else b""
    return head + ifd + body + pixels


def webp_of_many_chunks(chunks: int) -> bytes:
    """A still WebP (VP8X) followed by ``chunks`` empty unknown chunks."""
    plain = encode(Image.new("RGB", (64, 64), (90, 90, 90)), "WEBP", exif=b"Exif\0\0")
    extra = b"JUNK\x00\x00\x00\x00" * chunks
    body = plain[12:] + extra
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def float_tiff(side: int = 250) -> tuple[bytes, np.ndarray]:
    """A 32-bit float TIFF with values in [0, 1] (what scientific tools write), and its grey
    values as 8-bit."""
    grey = np.linspace(0.0, 1.0, side * side, dtype=np.float32).reshape(side, side)
    return encode(Image.fromarray(grey, mode="F"), "TIFF"), (grey * 255 + 0.5).astype(np.uint8)


def flat_tiff(side: int = 6000, mode: str = "RGB") -> bytes:
    """A flat side x side deflate TIFF: about 50 KB to send, 36 megapixels to decode (issue 25,
    finding 4: eight of them at once took the server from 310 MB to 3.1 GB)."""
    colour = (128,) * len(mode) if len(mode) > 1 else 128
    return encode(Image.new(mode, (side, side), colour), "TIFF", compression="tiff_deflate")
