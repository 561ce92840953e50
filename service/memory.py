"""The decode memory budget: requests are admitted by the bytes their images will take, not only
by their count.

A 53 KB TIFF can claim 36 megapixels, about 350 MB while it decodes and 108 MB while its pixels
are searched for faces; 64 of them in flight would need 22 GB. The header's pixel count is known
before any pixel is decoded, so each image takes its share of one process-wide budget first
(``Lease.take``), shrinks it to what its array keeps once decoded, and gives it back when the
request is done with it. A share that does not come free within the wait answers 503
``overloaded`` with Retry-After; an image bigger than the whole budget waits until it runs alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import Overloaded

#: peak bytes per pixel while Pillow decodes and converts to RGB, over every mode (measured at
#: 36 MP: RGB 6, grey 4, 16-bit and float 9, CMYK 10, RGBA 11; docs/security.md)
DECODE_BYTES_PER_PIXEL = 12
#: glibc's mallopt parameter: allocations from this size up are mapped, and unmapped when freed
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024

log = logging.getLogger("marginface")


def give_back_freed_memory() -> bool:
    """Make glibc return big freed blocks (decoded images) to the system at once.

    By default glibc raises its mmap threshold after each big free, up to 32 MB, so the next
    images' buffers come from per-thread heaps that keep their pages: after a burst of large
    images the server stayed at 2 GB with nothing in use. A fixed threshold keeps every image
    buffer mapped and unmapped. A no-op (False) off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        log.warning("mallopt is unavailable: freed image memory may stay with the process")
        return False


def decode_bytes(width: int, height: int) -> int:
    """The peak memory a decode of this size is expected to take."""
    return width * height * DECODE_BYTES_PER_PIXEL


class MemoryBudget:
    """Bytes that decoded images may hold at once in this process."""

    def __init__(self, total_bytes: int, wait_s: float) -> None:
        self.total_bytes = total_bytes
        self.wait_s = wait_s
        self.held_bytes = 0
        self._changed = threading.Condition()

    def _acquire(self, nbytes: int, deadline: float) -> int:
        nbytes = min(nbytes, self.total_bytes)  # bigger than everything: it runs alone
        with self._changed:
            while self.held_bytes + nbytes > self.total_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Overloaded(
                        f"the server's image memory is in use ({self.held_bytes} of "
                        f"{self.total_bytes} bytes; this image needs {nbytes}); retry shortly",
                        retry_after_s=2,
                    )
                self._changed.wait(left)
            self.held_bytes += nbytes
        return nbytes

    def _release(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        with self._changed:
            self.held_bytes -= nbytes
            self._changed.notify_all()

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        """A share for one image, given back when the block ends (whatever happens in it)."""
        lease = Lease(self)
        try:
            yield lease
        finally:
            self._release(lease.held)
            lease.held = 0


class Lease:
    """One image's share of the budget."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, nbytes: int) -> None:
        """Hold ``nbytes`` more, waiting up to the budget's wait; Overloaded past it."""
        deadline = time.monotonic() + self.budget.wait_s
        self.held += self.budget._acquire(nbytes, deadline)

    def shrink_to(self, nbytes: int) -> None:
        """Give back all but ``nbytes`` (the decode is over; its array stays)."""
        extra = self.held - max(0, nbytes)
        if extra > 0:
            self.held -= extra
            self.budget._release(extra)
