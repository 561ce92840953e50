"""A corpus of hostile and broken requests, generated here (never downloaded).

Each case is a request and the answers it may get: a documented 4xx code, or a correct 200
(an image without faces is not an error for identify or detect). Used by the replay test against
a real server and by bench/hostile_replay.py (memory over 100 replays).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FACE = DATA / "lfw/images/Colin_Powell/Colin_Powell_0001.jpg"


@dataclass
class Case:
    """One request and what a correct service may answer."""

    name: str
    method: str
    path: str
    expect: set[int]
    codes: set[str] = field(default_factory=set)  # stable error codes allowed (empty: any 4xx)
    files: Any = None
    data: dict[str, str] | None = None
    json: Any = None
    content: bytes | None = None
    headers: Any = field(default_factory=dict)  # a dict, or (name, value) pairs to repeat one

    def request(self) -> dict[str, Any]:
        """Keyword arguments for httpx / TestClient ``request``."""
        kwargs: dict[str, Any] = {"headers": self.headers}
        for key in ("files", "data", "json", "content"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        return kwargs


def zip_of(entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of (name, bytes) entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def deflate64_zip(data: bytes) -> bytes:
    """A zip whose entry claims compression method 9 (Deflate64), which zipfile cannot read."""
    raw = bytearray(zip_of([("p/x.jpg", data)], compression=zipfile.ZIP_STORED))
    for sig, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = raw.index(sig)
        raw[at + offset : at + offset + 2] = struct.pack("<H", 9)
    return bytes(raw)


def corrupt_deflate_zip(data: bytes) -> bytes:
    """A zip whose deflate stream is garbage (zlib raises while inflating)."""
    raw = bytearray(zip_of([("p/x.jpg", data)]))
    start = raw.index(b"p/x.jpg") + len("p/x.jpg")
    for i in range(start + 4, start + 40):
        raw[i] ^= 0xFF
    return bytes(raw)


def bad_utf8_name_zip() -> bytes:
    """An entry whose name is flagged UTF-8 (general purpose bit 11) but holds a lone 0xE9."""
    raw = bytearray(zip_of([("p/cafX.jpg", b"x")]))
    raw = bytearray(bytes(raw).replace(b"p/cafX.jpg", b"p/caf\xe9.jpg"))
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.index(sig)
        flags = struct.unpack_from("<H", raw, at + offset)[0] | 0x800
        struct.pack_into("<H", raw, at + offset, flags)
    return bytes(raw)


def small_entry_bomb(entries: int = 64) -> bytes:
    """Entries of exactly 1 MiB of zeros: each under a "large entry" rule, a bomb together."""
    return zip_of([(f"p{i}/x{i}.jpg", b"\0" * (1 << 20)) for i in range(entries)])


def overlap_bomb(files: int = 12, kernel_mib: int = 90) -> bytes:
    """The overlapped-file construction (Fifield, "A better zip bomb", 2019), about
    ``kernel_mib`` / 90 MB: every entry's data runs to the end of one shared deflate kernel,
    each entry's own stream first quoting the next entry's local header in a stored block.
    Each entry, and the sum of declared sizes against the sum of compressed sizes, stays
    under 100:1 (the shared kernel is counted once per entry), and every CRC and local
    header is right, yet ``files`` x ``kernel_mib`` MiB are written (12 x 90 MiB: 1.1 GB from
    0.95 MB, as in issue 25)."""
    import struct
    import zlib as _zlib

    chunk = bytearray(1 << 20)  # zeros with a byte every 250: deflates about 90:1
    for k, at in enumerate(range(0, len(chunk), 250)):
        chunk[at] = 1 + (k * 37) % 255
    deflater = _zlib.compressobj(9, _zlib.DEFLATED, -15)
    block = deflater.compress(bytes(chunk)) + deflater.flush(_zlib.Z_FULL_FLUSH)
    kernel = block * kernel_mib + b"\x03\x00"  # full flushes: blocks repeat; a final empty block
    names = [f"p{i:02d}/x{i:02d}.jpg".encode() for i in range(files)]

    def local(i: int, crc: int, compressed: int, size: int) -> bytes:
        return (
            struct.pack(
                "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, compressed, size, len(names[i]), 0
            )
            + names[i]
        )

    def quote(header: bytes) -> bytes:  # a non-final stored block holding ``header``
        return b"\x00" + struct.pack("<HH", len(header), 0xFFFF ^ len(header))

    # from the last entry back: entry i outputs the later local headers, then the kernel's data
    entries: list[tuple[bytes, int, int, int]] = []  # (local header, crc, compressed, size)
    quoted = b""  # the later local headers, in order
    compressed = len(kernel)
    for i in reversed(range(files)):
        crc = _zlib.crc32(quoted)
        for _ in range(kernel_mib):
            crc = _zlib.crc32(chunk, crc)
        size = len(quoted) + kernel_mib * len(chunk)
        header = local(i, crc, compressed, size)
        entries.insert(0, (header, crc, compressed, size))
        quoted = header + quoted
        compressed += len(quote(header)) + len(header)
    body, offsets = bytearray(), []
    for i, (header, *_rest) in enumerate(entries):
        offsets.append(len(body))
        body += header
        if i + 1 < files:
            body += quote(entries[i + 1][0])
    body += kernel
    directory = bytearray()
    for i, (_, crc, comp, size) in enumerate(entries):
        directory += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                8,
                0,
                0,
                crc,
                comp,
                size,
                len(names[i]),
                0,
                0,
                0,
                0,
                0,
                offsets[i],
            )
            + names[i]
        )
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, files, files, len(directory), len(body), 0)
    return bytes(body + directory + end)


def local_header_disagrees(photo: bytes) -> bytes:
    """A zip whose entry's local header declares another CRC and size than the central
    directory (Python's zipfile compares only the names)."""
    data = bytearray(zip_of([("p/x.jpg", photo)]))
    assert data[:4] == b"PK\x03\x04"
    data[14:18] = b"\xde\xad\xbe\xef"  # CRC-32
    data[22:26] = (len(photo) * 3).to_bytes(4, "little")  # uncompressed size
    return bytes(data)


#: archives that must be refused with 422 invalid_archive, by name
MALFORMED_ARCHIVES = {
    "file-then-folder": lambda photo: zip_of([("p", b"a file"), ("p/x.jpg", photo)]),
    "folder-then-file": lambda photo: zip_of([("p/x.jpg", photo), ("p", b"a file")]),
    "long-folder-name": lambda photo: zip_of([("p" * 300 + "/x.jpg", photo)]),
    "corrupt-deflate": corrupt_deflate_zip,
    "deflate64": deflate64_zip,
    "bad-utf8-name": lambda photo: bad_utf8_name_zip(),
    "small-entry-bomb": lambda photo: small_entry_bomb(),
    "overlapping-entries": lambda photo: overlap_bomb(files=4, kernel_mib=8),
    "local-header-disagrees": local_header_disagrees,
    "not-a-zip": lambda photo: photo,
    "traversal": lambda photo: zip_of([("../escape/x.jpg", photo)]),
}


def nested(levels: int) -> object:
    """A list nested ``levels`` deep."""
    value: object = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 dimensions were rewritten to width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 90, 90)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def bitflip(data: bytes, every: int = 97) -> bytes:
    out = bytearray(data)
    for i in range(len(out) // 3, len(out), every):
        out[i] ^= 0x5A
    return bytes(out)


def fifty_faces() -> bytes:
    face = Image.open(FACE).convert("RGB").crop((60, 50, 190, 200)).resize((110, 126))
    sheet = Image.new("RGB", (110 * 10, 126 * 5), (255, 255, 255))
    for i in range(50):
        sheet.paste(face, ((i % 10) * 110, (i // 10) * 126))
    return encode(sheet, "JPEG", quality=92)


def image_cases() -> dict[str, tuple[bytes, set[str]]]:
    """Upload bodies and the error codes they may get when a face is required."""
    face = Image.open(FACE).convert("RGB")
    jpeg = FACE.read_bytes()
    png = encode(face, "PNG")
    zip_buf = io.BytesIO()
    with zipfile.ZipFile(zip_buf, "w") as zf:
        zf.writestr("a.txt", "hello")
    gif_frames = [face.convert("P"), face.rotate(8).convert("P")]
    apng = encode(face, "PNG", save_all=True, append_images=[face.rotate(8)])
    sixteen = Image.fromarray(np.asarray(face.convert("L"), dtype=np.uint16) * 257)  # I;16
    invalid = {"invalid_image"}
    return {
        "zero_bytes": (b"", invalid),
        "text_named_jpg": (b"hello, I am not an image\n" * 10, invalid),
        "pdf_named_jpg": (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n", invalid),
        "zip_named_jpg": (zip_buf.getvalue(), invalid),
        "truncated_jpeg": (jpeg[: len(jpeg) // 3], invalid),
        "truncated_png": (png[: len(png) // 2], invalid),
        "bitflipped_jpeg": (bitflip(jpeg), {"invalid_image", "no_face"}),
        "bitflipped_png": (bitflip(png), invalid),
        "png_bomb_header": (png_claiming(100_000, 100_000), {"image_too_large"}),
        "jpeg_bomb_header": (jpeg_claiming(60_000, 60_000), {"image_too_large"}),
        "one_by_one": (encode(Image.new("RGB", (1, 1)), "PNG"), {"unsupported_image"}),
        "ten_thousand_by_one": (
            encode(Image.new("RGB", (10_000, 1)), "PNG"),
            {"unsupported_image"},
        ),
        "twenty_thousand_square": (
            encode(Image.new("1", (20_000, 20_000)), "PNG"),
            {"image_too_large"},
        ),
        "animated_gif": (
            encode(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:]),
            {"unsupported_image"},
        ),
        "animated_png": (apng, {"unsupported_image"}),
        "cmyk_jpeg": (encode(face.convert("CMYK"), "JPEG"), set()),
        "sixteen_bit_png": (encode(sixteen, "PNG"), set()),
        "no_face": (encode(Image.new("RGB", (300, 300), (120, 130, 140)), "PNG"), {"no_face"}),
    }


def corpus() -> list[Case]:
    """Every hostile request, with the answers allowed."""
    cases: list[Case] = []
    for name, (body, codes) in image_cases().items():
        ok_or = {200} if not codes or codes == {"no_face"} else set()
        for content_type in ("image/jpeg", "application/octet-stream"):
            suffix = "" if content_type == "image/jpeg" else "_octet"
            cases.append(
                Case(
                    f"detect_{name}{suffix}",
                    "POST",
                    "/v1/detect",
                    ok_or | {413, 422},
                    codes - {"no_face"},
                    files={"image": ("x.jpg", body, content_type)},
                )
            )
        cases.append(
            Case(
                f"enroll_{name}",
                "POST",
                "/v1/subjects/victim/faces",
                {201} if not codes else {413, 422},
                codes,
                files=[("files", ("x.jpg", body, "image/jpeg"))],
            )
        )
        cases.append(
            Case(
                f"identify_{name}",
                "POST",
                "/v1/identify",
                ok_or | {413, 422},
                codes - {"no_face"},
                files={"image": ("x.jpg", body, "image/jpeg")},
            )
        )
    face = FACE.read_bytes()
    photo = {"image": ("p.jpg", face, "image/jpeg")}
    long_id = "a" * 5000
    bad_ids = {
        "long": long_id,
        "unicode": "Zoë_Ünïcødé_名前",
        "control": "bad\x00id\x07",
        "newline": "two\nlines",
        "slashes": "..%2F..%2Fetc",
        "emoji": "😀",
        "empty": "",
        "spaces": "   ",
    }
    for label, subject_id in bad_ids.items():
        cases.append(
            Case(
                f"create_id_{label}",
                "POST",
                "/v1/subjects",
                {422},
                {"invalid_subject_id"},
                json={"id": subject_id, "name": "x"},
            )
        )
    for label, name in {"long": "n" * 100_000, "empty": "", "control": "\x00" * 10}.items():
        cases.append(
            Case(
                f"create_name_{label}",
                "POST",
                "/v1/subjects",
                {201, 422},
                {"validation_error"},
                json={"id": f"name-{label}", "name": name},
            )
        )
    cases += [
        Case("get_long_id", "GET", "/v1/subjects/" + long_id, {422}, {"invalid_subject_id"}),
        Case("get_unicode_id", "GET", "/v1/subjects/Zo%C3%AB", {422}, {"invalid_subject_id"}),
        Case(
            "malformed_json",
            "POST",
            "/v1/subjects",
            {422},
            {"validation_error"},
            content=b'{"id": "x", "name":',
            headers={"content-type": "application/json"},
        ),
        Case("json_array", "POST", "/v1/subjects", {422}, {"validation_error"}, json=[1, 2]),
        Case(
            "json_nested_deep",
            "POST",
            "/v1/subjects",
            {400, 422},
            {"validation_error", "bad_request"},
            content=b'{"id": ' + b"[" * 5000 + b"]" * 5000 + b', "name": "x"}',
            headers={"content-type": "application/json"},
        ),
        Case(
            "unknown_field",
            "POST",
            "/v1/subjects",
            {422},
            {"validation_error"},
            json={"id": "u", "name": "u", "admin": True},
        ),
        Case(
            "wrong_content_type_json",
            "POST",
            "/v1/subjects",
            {422},
            {"validation_error"},
            content=b"id=x&name=y",
            headers={"content-type": "text/plain"},
        ),
        Case(
            "form_instead_of_file",
            "POST",
            "/v1/identify",
            {422},
            {"validation_error"},
            data={"image": "not a file"},
        ),
        Case(
            "json_to_multipart_route",  # base64 JSON is accepted: "x" is not base64
            "POST",
            "/v1/identify",
            {422},
            {"invalid_image"},
            json={"image": "x"},
        ),
        # base64 JSON on the image routes (issue 28): every broken shape is a clear 422
        Case("b64_number", "POST", "/v1/identify", {422}, {"invalid_image"}, json={"image": 5}),
        Case("b64_nested", "POST", "/v1/detect", {422}, {"invalid_request"}, json={"image": "AA==", "x": {"a": 1}}),  # noqa: E501
        Case("b64_list_of_numbers", "POST", "/v1/subjects/victim/faces", {422}, {"invalid_image"}, json={"files": [1, 2]}),  # noqa: E501
        Case("b64_missing", "POST", "/v1/embed", {422}, {"invalid_image"}, json={"aligned": True}),
        Case("b64_top_k_text", "POST", "/v1/identify", {422}, {"validation_error"}, json={"image": base64.b64encode(FACE.read_bytes()).decode(), "top_k": "many"}),  # noqa: E501
        Case("b64_bad_key", "POST", "/v1/verify", {422}, {"invalid_request"}, json={"image_a": "AA==", "a b": 1}),  # noqa: E501
        Case("raw_jpeg_body", "POST", "/v1/identify", {422}, {"validation_error"}, content=FACE.read_bytes(), headers={"content-type": "image/jpeg"}),  # noqa: E501
        Case(
            "oversized_body",
            "POST",
            "/v1/detect",
            {413},
            {"payload_too_large"},
            files={"image": ("big.jpg", b"\xff\xd8" + b"\0" * (70 * 1024 * 1024), "image/jpeg")},
        ),
        Case(
            "fifty_faces",
            "POST",
            "/v1/detect",
            {200},
            files={"image": ("f.jpg", fifty_faces(), "image/jpeg")},
        ),
    ]
    for label, value in {
        "negative": "-1",
        "zero": "0",
        "huge": "1000000000",
        "text": "many",
        "float": "2.5",
    }.items():
        cases.append(
            Case(
                f"top_k_{label}",
                "POST",
                "/v1/identify",
                {422},
                {"validation_error", "invalid_request"},
                files=photo,
                data={"top_k": value},
            )
        )
    for label, value in {
        "above": "1.5",
        "below": "-1.01",
        "nan": "nan",
        "inf": "inf",
        "text": "high",
    }.items():
        cases.append(
            Case(
                f"threshold_{label}",
                "POST",
                "/v1/identify",
                {422},
                {"validation_error", "invalid_request"},
                files=photo,
                data={"threshold": value},
            )
        )
    for label, value in {
        "zero": "0",
        "one": "1",
        "negative": "-0.1",
        "big": "3",
        "tiny": "1e-30",
        "nan": "nan",
    }.items():
        cases.append(
            Case(
                f"far_{label}",
                "POST",
                "/v1/verify",
                {422},
                {"validation_error", "invalid_request"},
                files={"image_a": photo["image"], "image_b": photo["image"]},
                data={"far": value},
            )
        )
    cases.append(
        Case(
            "threshold_and_far",
            "POST",
            "/v1/identify",
            {422},
            {"invalid_request"},
            files=photo,
            data={"threshold": "0.3", "far": "0.001"},
        )
    )
    cases.append(
        Case("offset_negative", "GET", "/v1/subjects?offset=-5", {422}, {"validation_error"})
    )
    cases.append(
        Case("limit_huge", "GET", "/v1/subjects?limit=100000000", {422}, {"validation_error"})
    )
    cases.append(  # found by the long fuzzing run: was a 500 (SQLite integer overflow)
        Case("offset_huge", "GET", f"/v1/subjects?offset={10**30}", {422}, {"validation_error"})
    )
    cases.append(Case("face_id_text", "DELETE", "/v1/faces/abc", {422}, {"validation_error"}))
    face = FACE.read_bytes()
    for name, build in MALFORMED_ARCHIVES.items():
        cases.append(
            Case(
                f"archive_{name}",
                "POST",
                "/v1/jobs/index",
                {422},
                {"invalid_archive"},
                files={"archive": ("a.zip", build(face), "application/zip")},
            )
        )
    for name, path in {
        "nul": "/srv/a\x00b",
        "long": "/srv/" + "a" * 5000,
        "long_name": "/srv/" + "b" * 300 + "/c",
    }.items():
        cases.append(
            Case(f"job_path_{name}", "POST", "/v1/jobs/index", {422}, {"invalid_request"},
                 data={"path": path})
        )  # fmt: skip
    cases.append(
        Case("job_path_not_allowed", "POST", "/v1/jobs/index", {403}, {"forbidden"},
             data={"path": "/etc"})
    )  # fmt: skip
    json_headers = {"Content-Type": "application/json"}
    for name, body in {
        "lone_surrogate": b'{"name": "S", "metadata": {"x": "\\ud800"}}',
        "surrogate_name": b'{"name": "\\udfff"}',
        "deep_metadata": json.dumps({"name": "S", "metadata": {"x": nested(300)}}).encode(),
        "nan_metadata": b'{"name": "S", "metadata": {"x": NaN}}',
        "huge_metadata": json.dumps({"name": "S", "metadata": {"x": "y" * 20_000}}).encode(),
    }.items():
        cases.append(
            Case(f"create_{name}", "POST", "/v1/subjects", {422},
                 {"invalid_request", "validation_error"}, content=body, headers=json_headers)
        )  # fmt: skip
        cases.append(
            Case(f"patch_{name}", "PATCH", "/v1/subjects/victim", {422},
                 {"invalid_request", "validation_error"}, content=body, headers=json_headers)
        )  # fmt: skip
    cases.append(
        Case("two_keys", "GET", "/v1/subjects", {400}, {"ambiguous_credentials"},
             headers=[("X-API-Key", "a-key"), ("X-API-Key", "another")])
    )  # fmt: skip
    cases.append(
        Case("empty_key", "GET", "/v1/subjects", {401}, {"unauthorized"},
             headers={"X-API-Key": ""})
    )  # fmt: skip
    cases.append(
        Case("wrong_key_on_a_big_upload", "POST", "/v1/jobs/index", {401}, {"unauthorized"},
             headers={"X-API-Key": "nope"},
             files={"archive": ("a.zip", b"\0" * (2 << 20), "application/zip")})
    )  # fmt: skip
    cases.append(
        Case(
            "face_id_huge",
            "DELETE",
            "/v1/faces/99999999999999999999999",
            {422},
            {"validation_error"},
        )
    )
    return cases
