"""A folder-per-subject tree of photos (``ROOT/<subject_id>/<image>``), walked and read without
following links.

Batch indexing reads trees it did not make: a server-side job's folder under an allowed root,
an unpacked upload. Every directory and file is opened relative to its parent's descriptor with
``O_NOFOLLOW``, so a symlink anywhere (``allowed/b/s -> /outside``, ``x.jpg -> /etc/shadow``),
even one swapped in after the scan, is never followed: it is skipped and listed. Files are
checked to be regular and are read up to a size cap, never whole.

A job's root is opened once, when the job is accepted (``open_folder``: one component at a time
from ``/``, no link followed), and the tree is built on that descriptor: renaming the folder, or
replacing it or any folder above it by a link, after acceptance changes nothing the job reads.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO must not block the read


class LinkSkipped(Exception):
    """The entry is (or became) a symlink: not followed."""


class FileTooLarge(Exception):
    """The file is over the size cap: not read."""


class TooManyEntries(Exception):
    """The tree lists more entries than ``max_entries``: a job's files are bounded, as a zip's
    are, so a folder of millions of files cannot buy unbounded listing time and memory."""


@dataclass(frozen=True)
class Photo:
    """One image file of the tree."""

    subject_id: str
    file_name: str

    @property
    def name(self) -> str:
        """The path relative to the root, as reports show it."""
        return f"{self.subject_id}/{self.file_name}" if self.subject_id else self.file_name


def open_folder(path: Path) -> int:
    """A descriptor of the folder at the absolute, resolved ``path``, opened one component at a
    time from ``/`` without following any link. Raises LinkSkipped (a component is a link now:
    the path changed since it was resolved), OSError (gone, not a folder)."""
    if not path.is_absolute():
        raise ValueError(f"{path} is not an absolute path")
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in path.parts[1:]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise LinkSkipped(part) from exc
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


class PhotoTree:
    """The photos under one root; use as a context manager (it holds the root's descriptor).

    ``fd``: an open descriptor of the root (``open_folder``), which the tree then owns; the
    root is never looked up by name again. Without it, ``root`` is resolved and opened now."""

    def __init__(
        self,
        root: Path,
        *,
        max_file_bytes: int | None = None,
        fd: int | None = None,
        max_entries: int | None = None,
    ) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.max_entries = max_entries
        #: (why, name) of what the last scan or walk did not read and is not a link:
        #: "special" (a FIFO, socket or device named like a photo), "too_deep" (a folder
        #: below what the layout reads), so a report can list it instead of passing it over
        self.passed_over: list[tuple[str, str]] = []
        if fd is None:
            if not root.is_dir():
                raise FileNotFoundError(f"{root} is not a directory")
            fd = os.open(root.resolve(), _DIR_FLAGS)
        self._fd = fd

    @classmethod
    def held(cls, path: Path) -> PhotoTree:
        """The tree at the resolved ``path``, opened now without following links
        (``open_folder``); LinkSkipped, OSError."""
        return cls(path, fd=open_folder(path))

    def __enter__(self) -> PhotoTree:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the root's descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def scan(self) -> tuple[list[Photo], list[str]]:
        """(photos in a stable order, links skipped): subject folders one level below the root,
        image files one level below them; hidden entries ignored."""
        photos: list[Photo] = []
        skipped: list[str] = []
        self.passed_over = []
        listed = 0
        with os.scandir(self._fd) as top:
            folders = sorted(top, key=lambda e: e.name)
        listed = self._count(listed, len(folders))
        for folder in folders:
            if folder.name.startswith("."):
                continue
            if folder.is_symlink():
                skipped.append(folder.name)
                continue
            if not folder.is_dir(follow_symlinks=False):
                continue
            try:
                fd = os.open(folder.name, _DIR_FLAGS, dir_fd=self._fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    skipped.append(folder.name)
                continue
            try:
                with os.scandir(fd) as inner:
                    files = sorted(inner, key=lambda e: e.name)
            finally:
                os.close(fd)
            listed = self._count(listed, len(files))
            for entry in files:
                name = f"{folder.name}/{entry.name}"
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                    self.passed_over.append(("too_deep", name))  # one level per subject
                    continue
                if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if entry.is_symlink():
                    skipped.append(name)
                elif entry.is_file(follow_symlinks=False):
                    photos.append(Photo(folder.name, entry.name))
                else:
                    self.passed_over.append(("special", name))
        return photos, skipped

    def walk(self, *, max_depth: int = 16) -> tuple[list[Photo], list[str]]:
        """(photos in a stable order, links skipped) of any folder tree, to ``max_depth``
        levels: what clustering reads. A photo's ``subject_id`` is its folder's path relative
        to the root ('' at the root); nothing is inferred from folder names."""
        photos: list[Photo] = []
        skipped: list[str] = []
        self.passed_over = []
        listed = 0
        pending: list[str] = [""]
        while pending:
            rel = pending.pop()
            try:
                fd = self._open_folder(rel)
            except LinkSkipped:
                skipped.append(rel)
                continue
            except OSError:
                continue
            try:
                with os.scandir(fd) as inner:
                    entries = sorted(inner, key=lambda e: e.name)
            finally:
                if fd != self._fd:
                    os.close(fd)
            listed = self._count(listed, len(entries))
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_symlink():
                    skipped.append(path)
                elif entry.is_dir(follow_symlinks=False):
                    if rel.count("/") + 1 < max_depth:
                        pending.append(path)
                    else:
                        self.passed_over.append(("too_deep", path))
                elif Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                elif entry.is_file(follow_symlinks=False):
                    photos.append(Photo(rel, entry.name))
                else:
                    self.passed_over.append(("special", path))
        self.passed_over.sort()
        photos.sort(key=lambda p: (p.subject_id, p.file_name))
        return photos, sorted(skipped)

    def _count(self, listed: int, more: int) -> int:
        """Entries listed so far; TooManyEntries past ``max_entries``."""
        listed += more
        if self.max_entries is not None and listed > self.max_entries:
            raise TooManyEntries(
                f"the folder holds more than {self.max_entries} entries (jobs.max_entries): "
                "split it into several jobs"
            )
        return listed

    def _open_folder(self, rel: str) -> int:
        """A descriptor of the folder ``rel`` (the root's own for ''), opened one component at a
        time without following links; the caller closes it unless it is the root's."""
        fd = self._fd
        done: list[str] = []
        for part in [p for p in rel.split("/") if p]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise LinkSkipped("/".join([*done, part])) from exc
                raise
            finally:
                if fd != self._fd:
                    os.close(fd)
            fd = nxt
            done.append(part)
        return fd

    def read(self, photo: Photo) -> bytes:
        """The file's bytes. Raises LinkSkipped (a link now), FileTooLarge (over the cap),
        OSError (gone, unreadable, not a regular file)."""
        folder = self._open_folder(photo.subject_id)
        try:
            fd = os.open(photo.file_name, _FILE_FLAGS, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LinkSkipped(photo.name) from exc
            raise
        finally:
            if folder != self._fd:
                os.close(folder)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            cap = self.max_file_bytes
            if cap is not None and info.st_size > cap:
                raise FileTooLarge(f"{info.st_size} bytes, over the limit of {cap}")
            chunks, total = [], 0
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if cap is not None and total > cap:  # it grew since the fstat
                    raise FileTooLarge(f"over the limit of {cap} bytes")
            return b"".join(chunks)
        finally:
            os.close(fd)
