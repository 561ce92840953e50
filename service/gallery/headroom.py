"""Disk space kept back for erasure: a full disk must still let a person be deleted.

The embedded gallery keeps a reserve file of zeros beside its store. When a delete finds the disk
full, the reserve is released (the file deleted), the delete is retried in the space it frees,
and the reserve is written again once there is room for it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from service.errors import InsufficientStorage

log = logging.getLogger(__name__)

T = TypeVar("T")
RESERVE_FILE = ".erasure-reserve"
_CHUNK = 1 << 20


class DiskReserve:
    """A file of ``size_bytes`` zeros that can be given back to the file system on demand."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.ensure()

    @property
    def held(self) -> bool:
        """Whether the reserve is on disk now."""
        try:
            return self.path.stat().st_size >= self.size_bytes > 0
        except OSError:
            return False

    def ensure(self) -> bool:
        """Write the reserve if it is missing and the disk has room for it twice over (a full
        disk keeps what little it has for the gallery); True when it is held."""
        if self.size_bytes <= 0 or self.held:
            return self.held
        try:
            if shutil.disk_usage(self.path.parent).free < 2 * self.size_bytes:
                return False
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("wb") as fh:
                left = self.size_bytes
                while left > 0:
                    fh.write(b"\0" * min(_CHUNK, left))
                    left -= _CHUNK
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.path)
        except OSError as exc:
            self.path.with_suffix(".tmp").unlink(missing_ok=True)
            log.warning("the erasure reserve %s could not be written (%s)", self.path, exc)
            return False
        return True

    def release(self) -> bool:
        """Give the reserve back to the file system; True if there was one to give."""
        if not self.path.exists():
            return False
        self.path.unlink(missing_ok=True)
        log.warning("disk full: released the erasure reserve %s to complete a delete", self.path)
        return True


def with_headroom(reserve: DiskReserve | None, delete: Callable[[], T]) -> T:
    """Run a delete; on a full disk (InsufficientStorage), give back ``reserve`` and retry it
    once in the space that frees (a person can always be erased)."""
    try:
        return delete()
    except InsufficientStorage:
        if reserve is None or not reserve.release():
            raise
        return delete()
