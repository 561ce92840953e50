"""Batch jobs behind ``POST /v1/jobs/index`` and ``POST /v1/jobs/cluster``: run one at a time in
a worker thread.

A cluster job keeps its result (``service.clustering.work.ClusterWork``: the faces' embeddings
in memory, their thumbnails in the job's working folder; the photos are deleted as soon as their
faces are found) until it is deleted (``JobRunner.delete``) or expires (``cluster_ttl_s`` after
it ends); either way the folder goes and the embeddings are dropped, in ``JobRunner._forget``,
the one place a job is let go of.

A job runs on the replica that accepted it. Its record lives in that replica's memory and, with
the distributed backend, is also published to a shared board (PostgreSQL), so any replica behind
a load balancer can answer for it. A restart forgets the jobs it was running, which loses nothing:
batch indexing is idempotent, so submitting the same folder or zip again finishes the rest and
adds no duplicates (a board record of a job whose replica died stays at its last progress).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from service.clustering import cluster_faces, edge_threshold, find_faces
from service.clustering.work import REVIEW_KEY, ClusterWork
from service.errors import InsufficientStorage, JobNotFinished, JobNotFound, Overloaded
from service.indexer import BatchIndexer
from service.photo_tree import PhotoTree

log = logging.getLogger(__name__)

#: a job's record keeps this many of each kind of problem (the full report is a download)
PROBLEM_SAMPLE = 20
#: and each of them at most this long
PROBLEM_CHARS = 300
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["index", "cluster"]
_OWNER = ".owner"  # a lock file the process that made a working folder holds while it lives


class DiskBudget:
    """The bytes every job working folder of this process may hold together (unpacked
    uploads): each upload reserves its declared unpacked size before writing and gives it back
    when its folder is removed, so concurrent and queued uploads cannot add up past it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Reserve ``n`` bytes; Overloaded (503, retry later) when they do not fit now."""
        with self._lock:
            if self.used + n > self.capacity:
                raise Overloaded(
                    f"the uploads being unpacked or waiting in the job queue already hold "
                    f"{self.used} of {self.capacity} bytes (jobs.max_unpacked_total_bytes); "
                    f"this one needs {n}: retry when a job has ended",
                    retry_after_s=30,
                )
            self.used += n

    def give(self, n: int) -> None:
        """Return ``n`` reserved bytes."""
        with self._lock:
            self.used = max(0, self.used - n)


class WorkFolder:
    """A job's private folder (unpacked uploads, exports): held locked by this process, removed
    with everything in it when the job ends, however it ends; what it reserved of the shared
    ``DiskBudget`` is given back then."""

    def __init__(self, path: Path, budget: DiskBudget | None = None) -> None:
        self.path = path
        self.budget = budget
        self.reserved = 0
        self._fd: int | None = os.open(path / _OWNER, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def reserve(self, n: int) -> None:
        """Hold ``n`` more bytes of the shared budget until this folder is removed;
        Overloaded when they do not fit."""
        if self.budget is not None:
            self.budget.take(n)
        self.reserved += n

    def release(self) -> None:
        """Give back the reservation (what it reserved for has been deleted)."""
        if self.budget is not None and self.reserved:
            self.budget.give(self.reserved)
        self.reserved = 0

    def remove(self) -> None:
        """Delete the folder, give back its reservation and release its lock (idempotent)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class WorkFolders:
    """Where jobs unpack uploads (``jobs.work_dir``). A folder is locked by its process, so at
    start-up the folders of a process that died (SIGKILL, power loss) are told from the live
    ones of other replicas sharing the directory, and removed: photos are never kept there."""

    def __init__(self, root: Path, *, max_total_bytes: int | None = None) -> None:
        self.root = root
        self.budget = DiskBudget(max_total_bytes) if max_total_bytes is not None else None
        self.sweep()

    def create(self, prefix: str) -> WorkFolder:
        """A new folder ``<prefix>-...`` under the root; InsufficientStorage on a full disk."""
        path: Path | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            path = Path(tempfile.mkdtemp(prefix=f"{prefix}-{uuid.uuid4().hex[:8]}-", dir=self.root))
            return WorkFolder(path, self.budget)
        except OSError as exc:
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(
                    "the disk holding the jobs' working folders (jobs.work_dir) is full"
                ) from exc
            raise

    def sweep(self) -> int:
        """Remove every folder no live process holds; the number removed."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for path in self.root.iterdir():
            if not path.is_dir() or not path.name.startswith(
                ("upload-", "export-", "cluster-", "report-")
            ):
                continue
            try:
                fd = os.open(path / _OWNER, os.O_RDWR)
            except FileNotFoundError:
                fd = None  # died before taking its lock
            try:
                if fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live process's folder
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
            finally:
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if removed:
            log.warning("removed %d job working folders left by a stopped process", removed)
        return removed


@dataclass
class Job:
    """One batch job (index or cluster) and what is known about it so far."""

    id: str
    source: str
    # opened at acceptance, closed when the job ends: never looked up again (None: a finished
    # cluster job another replica ran, rebuilt here from the shared board for review)
    tree: PhotoTree | None
    folder: WorkFolder | None = None  # removed when the job ends (a cluster job: when forgotten)
    kind: JobKind = "index"
    far: float | None = None  # cluster jobs: the FAR asked for (None: by the number of faces)
    work: ClusterWork | None = None
    expires_at: float | None = None
    status: JobStatus = "queued"
    done: int = 0
    total: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    report: WorkFolder | None = None  # holds report.json, the full summary, until forgotten
    cancel: threading.Event = field(default_factory=threading.Event)

    def conclude(self, full: dict[str, Any], folders: WorkFolders | None) -> None:
        """Keep the record small, whatever the job met: counts and up to PROBLEM_SAMPLE of
        each kind of problem in ``summary`` (``files_truncated`` says when there were more);
        the full summary goes to a report file (``GET /v1/jobs/{id}/report``). Neither shows
        the server's own folders: ``root`` is the job's source."""
        if "root" in full:
            full["root"] = self.source
        files: dict[str, list[str]] = full.get("files") or {}
        sample = {k: [f[:PROBLEM_CHARS] for f in v[:PROBLEM_SAMPLE]] for k, v in files.items()}
        self.summary = {
            **full,
            "files": sample,
            "files_truncated": any(len(v) > PROBLEM_SAMPLE for v in files.values()),
        }
        if folders is None:
            return
        try:
            folder = folders.create("report")
        except Exception as exc:  # the record still has the counts and the sample
            log.warning("job %s: its report could not be written: %s", self.id, exc)
            return
        try:
            (folder.path / "report.json").write_text(json.dumps(full, indent=1))
        except OSError as exc:
            folder.remove()
            log.warning("job %s: its report could not be written: %s", self.id, exc)
            return
        self.report = folder

    def report_file(self) -> Path:
        """The full report of a finished job; JobNotFinished before that."""
        if self.report is None:
            raise JobNotFinished(
                f"job {self.id} is {self.status}: it has no report (yet)", status=self.status
            )
        return self.report.path / "report.json"

    def to_dict(self) -> dict[str, Any]:
        """JSON view for GET /v1/jobs/{id}."""
        elapsed = (self.finished_at or time.time()) - self.started_at if self.started_at else 0.0
        rate = self.done / elapsed if elapsed > 0 else None
        eta = (self.total - self.done) / rate if rate and self.status == "running" else None
        return {
            "id": self.id,
            "kind": self.kind,
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
            "expires_at": self.expires_at,
        }

    def clusters(self) -> ClusterWork:
        """The reviewable result of a finished cluster job; JobNotFinished before that."""
        if self.kind != "cluster":
            raise JobNotFinished(f"job {self.id} is an {self.kind} job, not a cluster job")
        if self.work is None:
            raise JobNotFinished(
                f"job {self.id} is {self.status}; its clusters exist once it has succeeded",
                status=self.status,
            )
        return self.work


class JobBoard(Protocol):
    """Where the replicas of a distributed deployment share job records."""

    def publish(self, record: dict[str, Any]) -> None:
        """Insert or update one job's record."""

    def fetch(self, job_id: str) -> dict[str, Any] | None:
        """One job's record, or None."""

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest records, newest first."""

    def close(self) -> None:
        """Release the connection."""


PUBLISH_EVERY_S = 1.0  # progress reaches the board at most this often per job


class JobRunner:
    """A FIFO of index and cluster jobs and the thread that runs them against the service's
    gallery."""

    def __init__(
        self,
        indexer: BatchIndexer,
        *,
        keep: int = 100,
        board: JobBoard | None = None,
        folders: WorkFolders | None = None,
        cluster_ttl_s: float = 24 * 3600.0,
    ) -> None:
        self.indexer = indexer
        self.keep = keep
        self.cluster_ttl_s = cluster_ttl_s
        self.board = board
        self.folders = folders
        self._published: dict[str, float] = {}
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="jobs", daemon=True)
        self._thread.start()

    def submit(
        self,
        source: str,
        tree: PhotoTree,
        folder: WorkFolder | None = None,
        *,
        kind: JobKind = "index",
        far: float | None = None,
    ) -> Job:
        """Queue a tree for indexing (a folder per subject) or clustering (any tree of photos,
        edges at the calibrated threshold for ``far``); ``tree``: opened by the caller, now the
        job's; ``folder``: its working folder."""
        job = Job(
            id=uuid.uuid4().hex,
            source=source,
            tree=tree,
            folder=folder,
            kind=kind,
            far=far,
        )
        self.expire()
        with self._lock:
            self._jobs[job.id] = job
            finished = sorted(
                (j for j in self._jobs.values() if j.finished_at is not None),
                key=lambda j: j.created_at,
            )
            dropped = []
            while len(self._jobs) > self.keep and finished:
                dropped.append(self._jobs.pop(finished.pop(0).id))
        for old in dropped:
            self._forget(old)
        self._publish(job, force=True)
        self._queue.put(job)
        return job

    def _publish(self, job: Job, *, force: bool = False) -> None:
        """Share the job's record with the other replicas (throttled; a board that fails is
        logged, never fails the job: the replica running it still answers for it)."""
        if self.board is None:
            return
        now = time.monotonic()
        if not force and now - self._published.get(job.id, 0.0) < PUBLISH_EVERY_S:
            return
        if job.finished_at is None:
            self._published[job.id] = now
        else:  # the last record of this job: nothing to throttle any more
            self._published.pop(job.id, None)
        try:
            record = job.to_dict()
            if job.work is not None:  # a finished cluster job: its review, for every replica
                record[REVIEW_KEY] = job.work.share(self.board, job.id)
            self.board.publish(record)
        except Exception as exc:
            log.warning("job %s could not be published to the shared board: %s", job.id, exc)

    def delete(self, job_id: str) -> None:
        """Forget a job now: a running one is cancelled (its thread lets go of it when it
        stops), a cluster job's thumbnails and embeddings go with it. JobNotFound."""
        job = self.get(job_id)
        job.cancel.set()
        with self._lock:
            self._jobs.pop(job_id, None)
        if job.finished_at is not None:
            self._forget(job)

    def expire(self) -> int:
        """Forget the cluster jobs past their expiry; how many."""
        now = time.time()
        with self._lock:
            due = [
                j for j in self._jobs.values() if j.expires_at is not None and j.expires_at <= now
            ]
            for job in due:
                del self._jobs[job.id]
        for job in due:
            self._forget(job)
        return len(due)

    def _forget(self, job: Job, *, keep_report: bool = False) -> None:
        """The one place a job's data goes: its folder (photos, thumbnails), embeddings and
        (unless ``keep_report``: a job that has ended but is still remembered) its report."""
        if job.work is not None:
            job.work.erase()
            job.work = None
        if job.folder is not None:
            job.folder.remove()
        if job.report is not None and not keep_report:
            job.report.remove()
            job.report = None

    def describe(self, job_id: str) -> dict[str, Any]:
        """A job's record: from this replica if it runs here, else from the shared board;
        raises JobNotFound."""
        self.expire()
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            return job.to_dict()
        record = self.board.fetch(job_id) if self.board is not None else None
        if record is None:
            raise JobNotFound(f"no job with id {job_id!r} (jobs are forgotten on restart)")
        return record

    def describe_all(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """A page of the remembered jobs (this replica's, and the board's newest), newest
        first."""
        records = {j.id: j.to_dict() for j in self.list()}
        if self.board is not None:
            for record in self.board.recent(self.keep):
                records.setdefault(record["id"], record)
        ordered = sorted(records.values(), key=lambda r: -float(r["created_at"]))
        return ordered[offset : None if limit is None else offset + limit]

    def get(self, job_id: str) -> Job:
        """A job by id: this replica's, or a finished cluster job another replica ran, rebuilt
        from the shared board for review; raises JobNotFound."""
        self.expire()
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            if job.work is not None:
                try:
                    job.work.pull()  # a review changed, or deleted, through another replica
                except JobNotFound:
                    with self._lock:
                        self._jobs.pop(job_id, None)
                    self._forget(job)
                    raise
            return job
        record = self.board.fetch(job_id) if self.board is not None else None
        if record is None or self.board is None:
            raise JobNotFound(f"no job with id {job_id!r} (jobs are forgotten on restart)")
        state = record.get(REVIEW_KEY)
        if state is None:
            raise JobNotFound(
                f"job {job_id!r} runs on another replica (GET /v1/jobs/{job_id} follows it); "
                "only a cluster job that has succeeded can be reviewed through any replica"
            )
        work = ClusterWork.from_shared(state, self.board, job_id)
        job = Job(
            id=job_id,
            source=record["source"],
            tree=None,
            kind="cluster",
            work=work,
            expires_at=record.get("expires_at"),
            status=record["status"],
            created_at=record["created_at"],
            started_at=record.get("started_at"),
            finished_at=record.get("finished_at"),
            summary=record.get("summary"),
        )
        if job.expires_at is not None and job.expires_at <= time.time():
            self._forget(job)  # its replica did not erase it (stopped): erased here
            raise JobNotFound(f"no job with id {job_id!r} (expired)")
        return job

    def list(self) -> list[Job]:
        """Every remembered job, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: -j.created_at)

    def close(self) -> None:
        """Cancel the running job, cancel the queued ones (their working folders go), stop."""
        for job in self.list():
            job.cancel.set()
        while True:
            try:
                queued = self._queue.get_nowait()
            except queue.Empty:
                break
            if queued is not None:
                self._finish_cancelled(queued)
        self._queue.put(None)
        self._thread.join(timeout=30)
        with self._lock:
            remembered, self._jobs = list(self._jobs.values()), {}
        for job in remembered:  # a restart forgets jobs: their photos and embeddings go now
            if job.finished_at is not None:
                self._forget(job)
        if self.board is not None:
            self.board.close()

    def _finish_cancelled(self, job: Job) -> None:
        if job.tree is not None:
            job.tree.close()
        job.status = "cancelled"
        job.finished_at = time.time()
        if job.folder is not None:
            job.folder.remove()
        self._publish(job, force=True)

    def _loop(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=10.0)
            except queue.Empty:
                self.expire()
                continue
            if job is None:
                return
            self._run(job)

    def _run(self, job: Job) -> None:
        if job.cancel.is_set():
            self._finish_cancelled(job)
            return
        job.status = "running"
        job.started_at = time.time()
        self._publish(job, force=True)

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            self._publish(job)

        # a job's files are bounded as a zip's are (the CLI reads the operator's own trees)
        assert job.tree is not None, "only jobs accepted here run here"
        job.tree.max_entries = self.indexer.settings.jobs.max_entries
        try:
            if job.kind == "cluster":
                self._cluster(job, progress)
            else:
                summary = self.indexer.run(job.tree, progress=progress, cancel=job.cancel)
                job.conclude(summary.to_dict(), self.folders)
                job.status = "cancelled" if summary.cancelled else "succeeded"
        except Exception as exc:  # reported on the job; the service keeps running
            log.exception("%s job %s failed", job.kind, job.id)
            job.status = "failed"
            job.error = str(exc)
        finally:
            job.tree.close()
            job.finished_at = time.time()
            with self._lock:
                kept = self._jobs.get(job.id) is job  # not deleted while it ran
            if job.kind == "cluster" and job.status == "succeeded" and kept:
                job.expires_at = job.finished_at + self.cluster_ttl_s
            elif kept:  # the photos go now; the record and its report stay while it is kept
                self._forget(job, keep_report=True)
            else:
                self._forget(job)
            self._publish(job, force=True)

    def _cluster(self, job: Job, progress: Callable[[int, int], None]) -> None:
        """Find every face of the tree (with thumbnails and chips), delete the photos, cluster."""
        indexer = self.indexer
        assert job.tree is not None
        model_id = indexer.pipeline.model_id  # what embeds its faces (a switch waits for jobs)
        found = find_faces(
            job.tree,
            indexer.settings,
            indexer.pipeline,
            thumbnails=True,
            chips=indexer.settings.privacy.keep_face_chips,  # what a naming keeps
            threads=indexer.workers,
            progress=progress,
            cancel=job.cancel.is_set,
        )
        if job.folder is not None:  # the unpacked photos: not kept beyond finding their faces
            for entry in job.folder.path.iterdir():
                if entry.name != _OWNER:
                    shutil.rmtree(entry, ignore_errors=True)
            job.folder.release()  # the unpacked upload is gone; thumbnails are small
        if job.cancel.is_set():
            job.status = "cancelled"
            return
        calibration = indexer.pipeline.embedder.manifest.calibration
        threshold, far = edge_threshold(calibration, job.far, len(found.faces))
        result = cluster_faces(found.faces, threshold=threshold, far=far)
        thumbs = job.folder.path / "faces" if job.folder is not None else None
        job.work = ClusterWork.of(result, thumbs, model_id=model_id)
        job.conclude(
            {
                "photos": found.photos,
                "faces": len(found.faces),
                "clusters": len(result.clusters),
                "alone": len(result.alone),
                "photos_without_face": len(found.without_face),
                "unreadable": len(found.unreadable),
                "skipped_links": len(found.skipped),
                "passed_over": len(found.passed_over),
                "threshold": round(threshold, 6),
                "far": far,
                "files": {
                    "photos_without_face": found.without_face,
                    "unreadable": found.unreadable,
                    "skipped_links": found.skipped,
                    "passed_over": found.passed_over,
                },
            },
            self.folders,
        )
        job.status = "succeeded"
