"""Unpacking an uploaded zip of ``<subject_id>/<image>`` entries without trusting it.

Refused before anything is written, each with the entry named: absolute paths, ``..``
components, drive letters, backslashes and NUL, names the file system cannot hold (a component
over 255 bytes, a path over 1024), names flagged UTF-8 that are not, a file and a folder of the
same name, symlinks and other special entries, encryption, compression methods zipfile cannot
inflate, more entries than allowed, a declared total over the limit, and any entry, or the
archive as a whole, compressed more than ``max_ratio`` to 1 (a zip bomb, however small its
entries). The whole archive's ratio is taken against its real size on disk, not the sum of its
entries' compressed sizes: entries whose data overlap (the overlapped-file bomb, where every
entry shares one compressed kernel) would count the shared bytes once per entry. So every
entry's local header is read and must agree with the central directory (name, method, flags,
and CRC and sizes unless a data descriptor follows), and no entry's header and data may overlap
another's or the central directory. The declared total is reserved against a budget shared by
every upload (``reserve``: the jobs' working folders) before a byte is written. While writing,
the bytes actually inflated are counted too, so a lying header cannot get past the size limit
or the reservation; every error the zip layer raises is an ``InvalidArchive``.
"""

from __future__ import annotations

import errno
import itertools
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from service.errors import InsufficientStorage, InvalidArchive, PayloadTooLarge

_CHUNK = 1 << 20
MAX_COMPONENT_BYTES = 255  # ext4, XFS, APFS, NTFS
MAX_PATH_BYTES = 1024
_SUPPORTED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
#: what the zip layer raises on a broken archive or entry (zlib, bz2 and lzma included)
_ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    zlib.error,
    NotImplementedError,
    UnicodeDecodeError,
    ValueError,
    RuntimeError,
    KeyError,
    IndexError,
    OverflowError,
)


def _safe_name(name: str) -> PurePosixPath:
    """The entry's relative path, or InvalidArchive for anything that could escape or that the
    file system cannot hold."""
    if "\\" in name or "\x00" in name:
        raise InvalidArchive(f"entry {name!r} has a backslash or NUL in its name")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise InvalidArchive(f"entry {name!r} has an absolute path")
    if any(part == ".." for part in path.parts):
        raise InvalidArchive(f"entry {name!r} climbs out of the archive with '..'")
    try:
        encoded = [part.encode("utf-8") for part in path.parts]
    except UnicodeEncodeError as exc:
        raise InvalidArchive(f"entry {name!r} has a name that is not valid text") from exc
    if any(len(part) > MAX_COMPONENT_BYTES for part in encoded):
        raise InvalidArchive(
            f"entry {name[:80]!r}... has a name part over {MAX_COMPONENT_BYTES} bytes"
        )
    if sum(len(p) + 1 for p in encoded) > MAX_PATH_BYTES:
        raise InvalidArchive(f"entry {name[:80]!r}... has a path over {MAX_PATH_BYTES} bytes")
    return path


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_DESCRIPTOR_FLAG = 0x08  # CRC and sizes follow the data; the local header holds zeros


def _check_layout(fh: BinaryIO, infos: list[zipfile.ZipInfo], directory_at: int) -> None:
    """Every entry's local header agrees with its central directory record, and no entry's
    header and data overlap another's or the central directory (``directory_at``): each byte
    of the archive belongs to one entry at most. InvalidArchive."""
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        fh.seek(info.header_offset)
        raw = fh.read(_LOCAL_HEADER.size)
        if len(raw) < _LOCAL_HEADER.size:
            raise InvalidArchive(f"entry {info.filename!r} has no local header")
        sig, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = _LOCAL_HEADER.unpack(
            raw
        )
        name = fh.read(name_len)
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        disagrees = (
            sig != _LOCAL_SIGNATURE
            or name != info.orig_filename.encode(encoding, "surrogateescape")
            or method != info.compress_type
            or (flags ^ info.flag_bits) & (0x1 | _DESCRIPTOR_FLAG)
        )
        if not disagrees and not flags & _DESCRIPTOR_FLAG:
            zip64 = 0xFFFFFFFF in (csize, usize)  # the sizes are in the zip64 extra field
            disagrees = crc != info.CRC or (
                not zip64 and (csize, usize) != (info.compress_size, info.file_size)
            )
        if disagrees:
            raise InvalidArchive(
                f"entry {info.filename!r}: its local header disagrees with the central directory"
            )
        data_at = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        spans.append((info.header_offset, data_at + info.compress_size, info.filename))
    spans.sort()
    for (_, end, entry), (next_start, _, next_entry) in itertools.pairwise(spans):
        if next_start < end:
            raise InvalidArchive(
                f"entries {entry!r} and {next_entry!r} overlap in the archive (entries that "
                "share their data: a zip bomb?)"
            )
    if spans and spans[-1][1] > directory_at:
        raise InvalidArchive(f"entry {spans[-1][2]!r} overlaps the central directory")


def _check_entries(
    infos: list[zipfile.ZipInfo],
    *,
    archive_bytes: int,
    max_entries: int,
    max_unpacked_bytes: int,
    max_ratio: float,
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Everything that can be checked from the central directory, before writing a byte."""
    if len(infos) > max_entries:
        raise InvalidArchive(f"{len(infos)} entries; at most {max_entries} are accepted")
    files: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    folders: set[PurePosixPath] = set()
    declared = 0
    for info in infos:
        path = _safe_name(info.filename)
        mode = info.external_attr >> 16
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise InvalidArchive(f"entry {info.filename!r} is a link or special file")
        folders.update(path.parents if not info.is_dir() else (path, *path.parents))
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise InvalidArchive(f"entry {info.filename!r} is encrypted")
        if info.compress_type not in _SUPPORTED_METHODS:
            raise InvalidArchive(
                f"entry {info.filename!r} uses compression method {info.compress_type}, which "
                "cannot be unpacked here (use deflate)"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > max_ratio:
            raise InvalidArchive(
                f"entry {info.filename!r} inflates {ratio:.0f}:1, over {max_ratio:.0f}:1 "
                "(a zip bomb?)"
            )
        declared += info.file_size
        files.append((info, path))
    clashes = sorted(str(p) for _, p in files if p in folders)
    if clashes:
        raise InvalidArchive(f"entry {clashes[0]!r} is both a file and a folder in the archive")
    if declared > max_ratio * archive_bytes and declared > _CHUNK:  # its real size, once
        raise InvalidArchive(
            f"the archive inflates {declared / archive_bytes:.0f}:1 as a whole, over "
            f"{max_ratio:.0f}:1 (a zip bomb?)"
        )
    if declared > max_unpacked_bytes:
        raise PayloadTooLarge(
            f"the archive unpacks to {declared} bytes, over {max_unpacked_bytes}",
            limit=max_unpacked_bytes,
        )
    return files


def extract_zip(
    archive: Path,
    dest: Path,
    *,
    max_entries: int,
    max_unpacked_bytes: int,
    max_ratio: float,
    reserve: Callable[[int], None] | None = None,
) -> int:
    """Check every entry, reserve the declared total (``reserve``: the budget every upload
    shares, which raises when it has no room), then unpack into ``dest``; returns the number
    of files written. Raises InvalidArchive (entry named) or PayloadTooLarge (over the
    unpacked-size limit). What is written is at most the declared total, which is at most
    ``max_ratio`` x the archive's size on disk (and ``max_unpacked_bytes``)."""
    try:
        zf = zipfile.ZipFile(archive)
        infos = zf.infolist()
        archive_bytes = max(archive.stat().st_size, 1)
        with archive.open("rb") as fh:
            _check_layout(fh, infos, zf.start_dir)
    except InvalidArchive:
        raise
    except _ZIP_ERRORS as exc:
        raise InvalidArchive(f"the upload is not a readable zip file ({exc})") from exc
    with zf:
        files = _check_entries(
            infos,
            archive_bytes=archive_bytes,
            max_entries=max_entries,
            max_unpacked_bytes=max_unpacked_bytes,
            max_ratio=max_ratio,
        )
        declared = sum(info.file_size for info, _ in files)
        if reserve is not None:
            reserve(declared)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = 0
        for info, path in files:
            target = root.joinpath(*path.parts)
            if root not in target.parents:
                raise InvalidArchive(f"entry {info.filename!r} resolves outside the archive")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                inflated = 0
                with zf.open(info) as src, target.open("xb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        inflated += len(chunk)
                        if written > max_unpacked_bytes:
                            raise PayloadTooLarge(
                                f"the archive unpacks to more than {max_unpacked_bytes} bytes",
                                limit=max_unpacked_bytes,
                            )
                        if inflated > info.file_size or written > declared:
                            raise InvalidArchive(
                                f"entry {info.filename!r} unpacks past its declared size"
                            )
                        if inflated > _CHUNK and inflated > max_ratio * max(info.compress_size, 1):
                            raise InvalidArchive(
                                f"entry {info.filename!r} inflates past {max_ratio:.0f}:1 while "
                                "unpacking (its header lied about its size)"
                            )
                        out.write(chunk)
            except (PayloadTooLarge, InvalidArchive):
                raise
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise InsufficientStorage(
                        f"the disk holding job uploads ({dest}) is full while unpacking"
                    ) from exc
                if isinstance(exc, FileExistsError):
                    raise InvalidArchive(
                        f"entry {info.filename!r} appears twice in the archive"
                    ) from exc
                raise InvalidArchive(
                    f"entry {info.filename!r} cannot be unpacked ({exc.__class__.__name__}: {exc})"
                ) from exc
            except _ZIP_ERRORS as exc:
                raise InvalidArchive(
                    f"entry {info.filename!r} cannot be unpacked ({exc.__class__.__name__}: {exc})"
                ) from exc
        return len(files)


def archive_root(dest: Path) -> Path:
    """The folder that holds the subject folders: ``dest``, or its single top-level folder
    when the zip wraps everything in one (``people/<subject>/...``) and holds no images itself."""
    entries = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        if all(child.is_dir() for child in inner.iterdir()):
            return inner
    return dest


def remove_tree(path: Path) -> None:
    """Delete an unpacked upload (ignoring what is already gone)."""
    shutil.rmtree(path, ignore_errors=True)
