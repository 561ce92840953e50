"""Who holds an embedded gallery folder: every process that opens it holds a shared lock on
``gallery.lock`` while it lives, and an operation that replaces the store (``gallery import``)
takes it exclusively, so it is refused while a server runs on the folder (the server would keep
serving, and acknowledging writes into, the file the restore replaced) and a server does not
start in the middle of a restore. The kernel drops the lock when its process dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from service.errors import GalleryBusy

LOCK_FILE = "gallery.lock"


class FolderLock:
    """A shared or exclusive hold on a gallery folder; ``release`` is idempotent."""

    def __init__(self, directory: Path, *, exclusive: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(directory / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(self._fd, mode | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.release()
            raise GalleryBusy(
                f"the gallery at {directory} is held by another process: "
                + (
                    "stop the server (and any tool) using it before replacing its store"
                    if exclusive
                    else "a restore (marginface gallery import) is replacing its store; "
                    "start again when it is done"
                )
            ) from exc

    def release(self) -> None:
        """Let go of the folder."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
