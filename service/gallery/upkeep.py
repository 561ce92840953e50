"""A gallery's upkeep in a thread, started by the gallery itself and stopped by its ``close``:
now and then (persist the index so a restart after a crash rebuilds less often) and at once
after a delete (erased embeddings leave the disk within moments)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Upkeep:
    """Runs ``flush`` every ``interval_s`` and as soon as ``wait_for_work`` says one is due."""

    def __init__(
        self,
        flush: Callable[[], bool],
        wait_for_work: Callable[[float], bool],
        interval_s: float,
    ) -> None:
        self._flush = flush
        self._wait_for_work = wait_for_work
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gallery-upkeep", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            due = self._wait_for_work(min(1.0, self.interval_s))  # at once on an erasure
            if self._stop.is_set():
                return
            if not due and time.monotonic() - last < self.interval_s:
                continue
            last = time.monotonic()
            try:
                more = self._flush()
            except Exception:  # keep serving; the store stays the source of truth
                log.exception("gallery upkeep failed")
                more = True
            if more:
                self._stop.wait(0.2)  # the WAL was busy: try again shortly, without spinning

    def stop(self) -> None:
        """Stop the thread (it notices within a second) and wait for a pass in flight."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
