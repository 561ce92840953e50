"""The embedded gallery's store file, watched for being deleted, replaced or truncated under a
running service (``SqliteStore.check_file``): SQLite keeps writing to an unlinked file and
answers from its cache over a truncated one, so without this watch writes would be acknowledged
and lost."""

from __future__ import annotations

import os
import time
from pathlib import Path

_HEADER = b"SQLite format 3\x00"
#: a checkpoint by another process (a replica, ``gallery migrate-model`` beside the service)
#: copies pages in page order, so page 1, with the new size in its header, lands before the
#: pages that extend the file: the file is shorter than its header says until the checkpoint
#: ends. Only a file that stays short this long was truncated.
TRUNCATION_SETTLE_S = 3.0


class StoreFile:
    """The store file as this process opened it, watched without disturbing SQLite: one
    descriptor held open for the store's life (closing any descriptor of a database file drops
    every POSIX lock this process holds on it, SQLite's included, so the file is never opened
    and closed beside the connection)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY)
        st = os.fstat(self._fd)
        self.identity = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """What happened to the file on disk (None: it is the one opened, whole): deleted,
        replaced by another file, or shorter than its own header says (truncated)."""
        if self._fd is None:
            return None
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return "was deleted"
        if (st.st_dev, st.st_ino) != self.identity:
            return "was replaced by another file"
        deadline = time.monotonic() + TRUNCATION_SETTLE_S
        while True:
            short = self._short()
            if short is None:
                return None
            if short == "no header" or time.monotonic() >= deadline:
                return "was truncated"
            time.sleep(0.01)  # another process's checkpoint may be extending the file

    def _short(self) -> str | None:
        """Why the file is shorter than a whole store now (None: it is not)."""
        assert self._fd is not None
        header = os.pread(self._fd, 100, 0)
        if len(header) < 100 or not header.startswith(_HEADER):
            return "no header"  # no checkpoint leaves page 1 short
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        if os.fstat(self._fd).st_size < pages * page_size:
            return "shorter than its header says"
        return None

    def close(self) -> None:
        """Release the descriptor (after the connection is closed)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
