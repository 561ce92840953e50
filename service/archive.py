"""Unpacking an uploaded zip of ``<subject_id>/<image>`` entries without trusting it.

Refused before anything is written: absolute paths, ``..`` components, drive letters, symlinks
and other special entries, more entries than allowed, a declared total size over the limit, and
any entry compressed more than ``max_ratio`` to 1 (a zip bomb). While writing, the bytes actually
inflated are counted too, so a lying header cannot get past the size limit.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from service.errors import InvalidArchive, PayloadTooLarge

_CHUNK = 1 << 20


def _safe_name(name: str) -> PurePosixPath:
    """The entry's relative path, or InvalidArchive for anything that could escape."""
    if "\\" in name or "\x00" in name:
        raise InvalidArchive(f"entry {name!r} has a backslash or NUL in its name")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise InvalidArchive(f"entry {name!r} has an absolute path")
    if any(part == ".." for part in path.parts):
        raise InvalidArchive(f"entry {name!r} climbs out of the archive with '..'")
    return path


def extract_zip(
    archive: Path,
    dest: Path,
    *,
    max_entries: int,
    max_unpacked_bytes: int,
    max_ratio: float,
) -> int:
    """Check every entry, then unpack into ``dest``; returns the number of files written."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidArchive(f"the upload is not a readable zip file ({exc})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise InvalidArchive(f"{len(infos)} entries; at most {max_entries} are accepted")
        declared = 0
        files: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for info in infos:
            path = _safe_name(info.filename)
            mode = info.external_attr >> 16
            if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise InvalidArchive(f"entry {info.filename!r} is a link or special file")
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise InvalidArchive(f"entry {info.filename!r} is encrypted")
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > 1024 * 1024 and ratio > max_ratio:
                raise InvalidArchive(
                    f"entry {info.filename!r} inflates {ratio:.0f}:1, over {max_ratio:.0f}:1 "
                    "(a zip bomb?)"
                )
            declared += info.file_size
            files.append((info, path))
        if declared > max_unpacked_bytes:
            raise PayloadTooLarge(
                f"the archive unpacks to {declared} bytes, over {max_unpacked_bytes}",
                limit=max_unpacked_bytes,
            )
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = 0
        for info, path in files:
            target = (dest / Path(*path.parts)).resolve()
            if root not in target.parents:
                raise InvalidArchive(f"entry {info.filename!r} resolves outside the archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, target.open("wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_unpacked_bytes:
                            raise PayloadTooLarge(
                                f"the archive unpacks to more than {max_unpacked_bytes} bytes",
                                limit=max_unpacked_bytes,
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise InvalidArchive(f"entry {info.filename!r} cannot be read ({exc})") from exc
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
