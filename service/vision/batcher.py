"""Dynamic batching: faces from concurrent requests are embedded together.

A recognizer runs a batch of 32 faces in far less than 32 times the time of one (on a GPU, and
even on a CPU), so under concurrent load one worker thread collects the crops that requests
submit, up to ``max_batch`` faces or ``max_wait_ms`` after the first arrived, runs them in one
call, and hands each request its rows. The queue is bounded: when it is full the caller gets
``Overloaded`` (HTTP 503 with Retry-After) instead of waiting without limit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.errors import Overloaded

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[np.ndarray]], np.ndarray]


@dataclass
class _Request:
    crops: list[np.ndarray]
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class MicroBatcher:
    """Collects crops from many threads into batches for one embedding function."""

    def __init__(
        self,
        embed: EmbedFn,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        timeout_s: float = 30.0,
        workers: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._embed = embed
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.timeout_s = timeout_s
        self.on_batch = on_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"embed-batcher-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed these crops as part of whatever batch is forming; blocks until done.

        Raises Overloaded when the queue is full or the batch does not finish in time.
        """
        if self._closed:
            raise RuntimeError("the batcher is closed")
        request = _Request(list(crops))
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise Overloaded(
                "the embedding queue is full; retry shortly", retry_after_s=1
            ) from None
        if not request.done.wait(self.timeout_s):
            raise Overloaded("embedding did not finish in time; retry shortly", retry_after_s=2)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def queued(self) -> int:
        """Requests waiting (an approximation, for metrics)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Stop the worker after the queued requests are served."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)  # each worker passes the sentinel on before it stops
            for thread in self._threads:
                thread.join(timeout=10)

    def _next_batch(self, carry: _Request | None) -> tuple[list[_Request] | None, _Request | None]:
        """Block for the first request, then gather more until full or the wait is over.

        Returns the batch (None: stop) and a request that did not fit (it opens the next one).
        """
        first = carry or self._queue.get()
        if first is None:
            self._queue.put(None)  # let the other workers see it too
            return None, None
        batch, size = [first], len(first.crops)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # serve this batch, then stop
                break
            if size + len(nxt.crops) > self.max_batch:
                return batch, nxt
            batch.append(nxt)
            size += len(nxt.crops)
        return batch, None

    def _loop(self) -> None:
        carry: _Request | None = None
        while True:
            batch, carry = self._next_batch(carry)
            if batch is None:
                return
            crops = [c for r in batch for c in r.crops]
            try:
                vectors = self._embed(crops)
                start = 0
                for r in batch:
                    r.result = vectors[start : start + len(r.crops)]
                    start += len(r.crops)
            except BaseException as exc:  # every waiter sees the failure
                log.exception("embedding batch of %d failed", len(crops))
                for r in batch:
                    r.error = exc
            if self.on_batch is not None:
                self.on_batch(len(crops))
            for r in batch:
                r.done.set()
