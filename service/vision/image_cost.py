"""What an image will cost to decode, read from its container before any pixel is decoded.

The pixel limit bounds the memory of a decode, not its CPU: a file can make the decoder walk the
same pixels many times (a progressive JPEG whose scans are repeated thousands of times: 436 KB,
a minute of CPU at 36 MP), or make Pillow's Python parsers walk millions of tiny chunks, blocks,
pages or strip offsets. Each walker below reads only the container's structure, stops as soon as
a count is past what real encoders write, and costs at most a few milliseconds itself.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from service.errors import ImageTooComplex, UnsupportedImage

_FILL = re.compile(rb"\xff+")
# the next marker after entropy-coded data: 0xFF not followed by a stuffed 0x00, RSTn or a fill
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


@dataclass(frozen=True)
class DecodeCost:
    """The bounds (defaults: several times what common encoders write)."""

    #: libjpeg writes 10 scans for a progressive colour JPEG (6 for grey); mozjpeg about as many.
    #: Each scan walks the whole image again (about 1 ms per megapixel here), so this bounds a
    #: JPEG decode to about 64 passes over at most ``max_pixels``.
    max_jpeg_scans: int = 64
    #: markers of any kind in a JPEG (tables, APPn, COM, SOS); real files have tens
    max_jpeg_segments: int = 1024
    #: PNG chunks, GIF sub-blocks and WebP chunks allowed beyond ``1 per min_bytes_per_block``
    base_blocks: int = 1024
    #: below this average block size a file is all framing (libpng writes 8 KiB IDATs, GIF
    #: writes 255-byte sub-blocks)
    min_bytes_per_block: int = 128
    #: TIFF: entries in one IFD (real files have tens) and strips or tiles in all
    max_tiff_entries: int = 4096
    max_tiff_blocks: int = 1 << 18


def check_decode_cost(data: bytes, cost: DecodeCost | None = None) -> None:
    """Refuse a file whose structure would cost far more to decode than its pixels.

    Raises ImageTooComplex (more scans, chunks, blocks or strips than encoders write) or
    UnsupportedImage (a second frame or page, found without walking the rest). Files this does
    not recognise, or cannot parse, are left to the decoder, which reports them.
    """
    cost = cost or DecodeCost()
    if data.startswith(b"\xff\xd8"):
        _jpeg(data, cost)
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        _png(data, cost)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        _gif(data, cost)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        _webp(data, cost)
    elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        _tiff(data, cost)


def _block_limit(data: bytes, cost: DecodeCost) -> int:
    return cost.base_blocks + len(data) // cost.min_bytes_per_block


def _too_complex(what: str, count: int, limit: int) -> ImageTooComplex:
    return ImageTooComplex(
        f"the image has more {what} than encoders write ({count} > {limit}): it would cost "
        "far more to decode than its size suggests",
        what=what,
        limit=limit,
    )


def _jpeg(data: bytes, cost: DecodeCost) -> None:
    pos, scans, segments, end = 2, 0, 0, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return  # not a marker: corrupt, the decoder says so
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker
            fill = _FILL.match(data, pos)
            pos = (fill.end() if fill else pos + 2) - 1
            continue
        if marker == 0xD9:  # EOI: what follows (an MPO's second image, junk) is not decoded
            return
        if 0xD0 <= marker <= 0xD7 or marker in (0x01, 0x00):
            pos += 2
            continue
        segments += 1
        if segments > cost.max_jpeg_segments:
            raise _too_complex("JPEG segments", segments, cost.max_jpeg_segments)
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if marker == 0xDA:  # SOS: a scan, followed by its entropy-coded data
            scans += 1
            if scans > cost.max_jpeg_scans:
                raise _too_complex("JPEG scans", scans, cost.max_jpeg_scans)
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return
            pos = found.start()


def _png(data: bytes, cost: DecodeCost) -> None:
    pos, chunks, limit, end = 8, 0, _block_limit(data, cost), len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > limit:
            raise _too_complex("PNG chunks", chunks, limit)
        if kind == b"IEND":
            return
        pos += 12 + length


def _gif(data: bytes, cost: DecodeCost) -> None:
    end, limit = len(data), _block_limit(data, cost)
    if end < 13:
        return
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = blocks = 0
    while pos < end:
        kind = data[pos]
        if kind == 0x3B:  # trailer
            return
        if kind == 0x21:  # extension: label, then sub-blocks
            pos += 2
        elif kind == 0x2C:  # image: descriptor, local colour table, LZW code size, sub-blocks
            frames += 1
            if frames > 1:
                raise UnsupportedImage(
                    "animated or multi-frame images are not supported (2 or more frames); "
                    "send a single frame"
                )
            if pos + 10 > end:
                return
            local = data[pos + 9]
            pos += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1
        else:
            return  # corrupt: the decoder says so
        while pos < end:  # sub-blocks, up to the zero-length terminator
            size = data[pos]
            pos += 1 + size
            blocks += 1
            if blocks > limit:
                raise _too_complex("GIF blocks", blocks, limit)
            if size == 0:
                break


def _webp(data: bytes, cost: DecodeCost) -> None:
    pos, chunks, frames, limit, end = 12, 0, 0, _block_limit(data, cost), len(data)
    while pos + 8 <= end:
        kind, length = struct.unpack_from("<4sI", data, pos)
        chunks += 1
        if chunks > limit:
            raise _too_complex("WebP chunks", chunks, limit)
        if kind == b"ANMF":
            frames += 1
            if frames > 1:
                raise UnsupportedImage(
                    "animated or multi-frame images are not supported (2 or more frames); "
                    "send a single frame"
                )
        pos += 8 + length + (length & 1)


def _tiff(data: bytes, cost: DecodeCost) -> None:
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")  # BigTIFF: 64-bit counts and offsets
    count_fmt, entry_fmt, entry_size, head = ("Q", "HHQQ", 20, 16) if big else ("H", "HHII", 12, 8)
    end = len(data)
    if end < head:
        return
    (offset,) = struct.unpack_from(order + ("Q" if big else "I"), data, head - (8 if big else 4))
    count_size = struct.calcsize(count_fmt)
    if offset + count_size > end:
        return
    (entries,) = struct.unpack_from(order + count_fmt, data, offset)
    if entries > cost.max_tiff_entries:
        raise _too_complex("TIFF tags", entries, cost.max_tiff_entries)
    blocks, compression = 0, 1
    for i in range(entries):
        at = offset + count_size + entry_size * i
        if at + entry_size > end:
            return
        tag, _kind, count, value = struct.unpack_from(order + entry_fmt, data, at)
        if tag in (273, 324):  # StripOffsets, TileOffsets
            blocks = max(blocks, count)
        elif tag == 259:  # Compression (a SHORT, left-justified in the value field)
            shift = (64 if big else 32) - 16
            compression = value >> shift if order == ">" else value & 0xFFFF
    if blocks > cost.max_tiff_blocks:
        raise _too_complex("TIFF strips or tiles", blocks, cost.max_tiff_blocks)
    next_at = offset + count_size + entry_size * entries
    next_fmt = order + ("Q" if big else "I")
    if next_at + struct.calcsize(next_fmt) <= end:
        (next_offset,) = struct.unpack_from(next_fmt, data, next_at)
        if 0 < next_offset < end:
            raise UnsupportedImage(
                "multi-page images are not supported (2 or more frames); send a single page"
            )
    if compression in (6, 7):  # JPEG in TIFF: each strip is a JPEG stream, scans included
        scans, limit = data.count(b"\xff\xda"), blocks + cost.max_jpeg_scans
        if scans > limit:
            raise _too_complex("JPEG scans", scans, limit)
