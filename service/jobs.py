"""Batch jobs behind ``POST /v1/jobs/index``: run one at a time in a worker thread.

Jobs live in memory: a restart forgets them, which loses nothing, because batch indexing is
idempotent: submitting the same folder or zip again finishes the rest and adds no duplicates.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from service.errors import JobNotFound
from service.indexer import BatchIndexer

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@dataclass
class Job:
    """One batch index job and what is known about it so far."""

    id: str
    source: str
    root: Path
    cleanup: Callable[[], None] | None = None
    status: JobStatus = "queued"
    done: int = 0
    total: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def to_dict(self) -> dict[str, Any]:
        """JSON view for GET /v1/jobs/{id}."""
        elapsed = (self.finished_at or time.time()) - self.started_at if self.started_at else 0.0
        rate = self.done / elapsed if elapsed > 0 else None
        eta = (self.total - self.done) / rate if rate and self.status == "running" else None
        return {
            "id": self.id,
            "kind": "index",
            "source": self.source,
            "status": self.status,
            "progress": {
                "done": self.done,
                "total": self.total,
                "images_per_s": round(rate, 2) if rate else None,
                "eta_s": round(eta, 1) if eta is not None else None,
            },
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "summary": self.summary,
            "error": self.error,
        }


class JobRunner:
    """A FIFO of index jobs and the thread that runs them against the service's gallery."""

    def __init__(self, indexer: BatchIndexer, *, keep: int = 100) -> None:
        self.indexer = indexer
        self.keep = keep
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="jobs", daemon=True)
        self._thread.start()

    def submit(self, source: str, root: Path, cleanup: Callable[[], None] | None = None) -> Job:
        """Queue a folder-per-subject tree for indexing."""
        job = Job(id=uuid.uuid4().hex, source=source, root=root, cleanup=cleanup)
        with self._lock:
            self._jobs[job.id] = job
            finished = sorted(
                (j for j in self._jobs.values() if j.finished_at is not None),
                key=lambda j: j.created_at,
            )
            while len(self._jobs) > self.keep and finished:
                del self._jobs[finished.pop(0).id]
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job:
        """A job by id; raises JobNotFound."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r} (jobs are forgotten on restart)")
        return job

    def list(self) -> list[Job]:
        """Every remembered job, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: -j.created_at)

    def close(self) -> None:
        """Cancel the running job and stop the worker."""
        for job in self.list():
            job.cancel.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            self._run(job)

    def _run(self, job: Job) -> None:
        if job.cancel.is_set():
            job.status = "cancelled"
            job.finished_at = time.time()
            return
        job.status = "running"
        job.started_at = time.time()

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            summary = self.indexer.run(job.root, progress=progress, cancel=job.cancel)
            job.summary = summary.to_dict()
            job.status = "cancelled" if summary.cancelled else "succeeded"
        except Exception as exc:  # reported on the job; the service keeps running
            log.exception("index job %s failed", job.id)
            job.status = "failed"
            job.error = str(exc)
        finally:
            job.finished_at = time.time()
            if job.cleanup is not None:
                job.cleanup()
