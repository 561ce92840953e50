"""Batch gallery indexing: a folder per subject, enrolled in bulk, resumable and idempotent.

Layout: ``ROOT/<subject_id>/<image>``; the folder name is the subject id (and its name). Images
are read, hashed, decoded, and their face chosen, embedded and judged
(``FacePipeline.choose_face``: the same rule and the same ``min_quality`` floor as the enroll
route; refused faces are counted as ``no_face``, ``several_faces`` or ``low_quality``) in a
thread pool (ONNX Runtime releases the GIL), and each batch is written to the gallery in one
transaction. A re-run skips every (subject, image sha256) already in the gallery, so after an
interruption, even SIGKILL, it finishes the rest and duplicates nothing.

Subjects: a run creates a subject only if it did not exist when the run started, and only
once; a subject deleted while the run goes on stays deleted, and its remaining photos are
counted as ``subject_deleted`` (delete, then run the job again, to re-enroll on purpose).

Files: the tree is walked and read without following links (``service.photo_tree``): a link is
skipped and counted as ``skipped_link``; a file over the upload limit is not read
(``too_large``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.errors import LowQuality, MarginFaceError, MultipleFaces, NoFace
from service.gallery import Gallery, NewFace
from service.photo_tree import FileTooLarge, LinkSkipped, Photo, PhotoTree
from service.settings import Settings
from service.subject_id import is_subject_id
from service.vision.chip import chip_jpeg
from service.vision.image import decode_image
from service.vision.pipeline import EnrollPolicy, FacePipeline

Outcome = Literal[
    "enrolled",
    "already_present",
    "no_face",
    "several_faces",
    "low_quality",
    "unreadable",
    "too_large",
    "skipped_link",
    "skipped_special",
    "skipped_too_deep",
    "invalid_subject",
    "subject_deleted",
]
OUTCOMES: tuple[Outcome, ...] = (
    "enrolled",
    "already_present",
    "no_face",
    "several_faces",
    "low_quality",
    "unreadable",
    "too_large",
    "skipped_link",
    "skipped_special",
    "skipped_too_deep",
    "invalid_subject",
    "subject_deleted",
)
ProgressFn = Callable[[int, int], None]


@dataclass
class IndexSummary:
    """What a batch index did, per outcome, with the files behind each count."""

    root: str
    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    files: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in OUTCOMES})
    subjects_created: int = 0
    seconds: float = 0.0
    policy: str = "largest"
    cancelled: bool = False
    largest_of_several: list[str] = field(default_factory=list)

    def record(self, outcome: Outcome, name: str, detail: str = "") -> None:
        """Count one file."""
        self.counts[outcome] += 1
        if outcome != "enrolled":
            self.files[outcome].append(f"{name}: {detail}" if detail else name)

    def to_dict(self, *, with_files: bool = True) -> dict[str, Any]:
        """JSON-ready; the report file has the file lists, the console summary only counts."""
        out: dict[str, Any] = {
            "root": self.root,
            "total": self.total,
            **self.counts,
            "subjects_created": self.subjects_created,
            "seconds": round(self.seconds, 2),
            "images_per_s": round(self.total / self.seconds, 2) if self.seconds else None,
            "multiple_faces_policy": self.policy,
            "enrolled_largest_of_several": len(self.largest_of_several),
            "cancelled": self.cancelled,
        }
        if with_files:
            out["files"] = {k: v for k, v in self.files.items() if k != "enrolled"}
            out["files"]["enrolled_largest_of_several"] = self.largest_of_several
        return out

    def write(self, path: Path) -> None:
        """The report file (atomic)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)


@dataclass(frozen=True)
class _Prepared:
    """A worker's result for one file: a face to write, or an outcome already decided."""

    subject_id: str
    name: str
    outcome: Outcome | None
    detail: str = ""
    embedding: np.ndarray | None = None
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    score: float = 0.0
    sha256: str = ""
    several: bool = False
    chip: bytes | None = None  # the face's chip (privacy.keep_face_chips)


@dataclass(frozen=True)
class _Rules:
    """What a worker needs of the settings to judge one photo."""

    policy: EnrollPolicy
    min_quality: float
    max_pixels: int
    keep_chips: bool = False


class PipelineWorker:
    """A worker process's pipeline, built once at its start (indexing and clustering)."""

    pipeline: FacePipeline | None = None

    @staticmethod
    def start(settings: Settings) -> None:
        from service.recognition import build_pipeline

        PipelineWorker.watch_parent()
        PipelineWorker.pipeline = build_pipeline(settings, batching=False)

    @staticmethod
    def watch_parent(every_s: float = 0.5) -> None:
        """Exit when the parent is gone: a SIGKILLed indexer must not leave workers holding
        models and photos (ProcessPoolExecutor's workers would wait on their queue forever)."""
        import os

        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(every_s)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def analysis_pool(settings: Settings, *, processes: int, threads: int) -> Executor:
    """Where photos are analysed: ``threads`` threads over the caller's pipeline, or, with
    ``processes``, spawned worker processes with a pipeline each (one ONNX Runtime thread per
    worker: the CPU cores work in parallel without contending for one session)."""
    if not processes:
        return ThreadPoolExecutor(max(1, threads), thread_name_prefix="analyse")
    single = settings.model_copy(update={"intra_op_threads": 1})
    return ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded process
        initializer=PipelineWorker.start,
        initargs=(single,),
    )


def _analyse_in_worker(
    subject_id: str, name: str, sha: str, data: bytes, rules: _Rules
) -> _Prepared:
    """``_analyse`` with the worker process's own pipeline."""
    assert PipelineWorker.pipeline is not None, "the worker process was not started"
    return _analyse(PipelineWorker.pipeline, subject_id, name, sha, data, rules)


def _analyse(
    pipeline: FacePipeline, subject_id: str, name: str, sha: str, data: bytes, rules: _Rules
) -> _Prepared:
    """Decode one photo and choose, embed and judge its face (``FacePipeline.choose_face``: the
    same rule and the same ``min_quality`` floor as the enroll route)."""
    try:
        image = decode_image(data, max_pixels=rules.max_pixels)
    except MarginFaceError as exc:
        return _Prepared(subject_id, name, "unreadable", exc.message)
    try:
        chosen = pipeline.choose_face(image, policy=rules.policy, min_quality=rules.min_quality)
    except NoFace as exc:
        return _Prepared(subject_id, name, "no_face", exc.message)
    except MultipleFaces as exc:
        return _Prepared(subject_id, name, "several_faces", f"{exc.details['faces']} faces")
    except LowQuality as exc:
        return _Prepared(subject_id, name, "low_quality", exc.message)
    face = chosen.face
    return _Prepared(
        subject_id,
        name,
        None,
        embedding=face.embedding,
        box=face.box,
        score=face.score,
        sha256=sha,
        several=chosen.faces_found > 1,
        chip=chip_jpeg(image, face.box) if rules.keep_chips else None,
    )


def scan(root: Path) -> list[Photo]:
    """Every image one level below ``root``'s subject folders, in a stable order (links are
    not followed)."""
    with PhotoTree(root) as tree:
        return tree.scan()[0]


class BatchIndexer:
    """Enrolls a folder-per-subject tree into a gallery with the service's own pipeline."""

    def __init__(
        self,
        settings: Settings,
        pipeline: FacePipeline,
        gallery: Gallery,
        *,
        workers: int = 2,
        batch_size: int = 64,
        processes: int = 0,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.gallery = gallery
        self.workers = max(1, workers)
        self.processes = max(0, processes)
        self.batch_size = max(1, batch_size)
        self._creatable: set[str] = set()

    def run(
        self,
        root: Path | PhotoTree,
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> IndexSummary:
        """Index everything under ``root`` (a folder, or a tree opened earlier: a job's, which
        this closes when done); safe to re-run and to interrupt at any moment."""
        started = time.perf_counter()
        tree = root if isinstance(root, PhotoTree) else PhotoTree(root)
        tree.max_file_bytes = self.settings.limits.max_upload_bytes
        with tree:
            return self._run(tree, started, progress, cancel)

    def _run(
        self,
        tree: PhotoTree,
        started: float,
        progress: ProgressFn | None,
        cancel: threading.Event | None,
    ) -> IndexSummary:
        items, links = tree.scan()
        passed_over = tree.passed_over
        summary = IndexSummary(
            root=str(tree.root),
            total=len(items) + len(links) + len(passed_over),
            policy=self.settings.enroll_policy,
        )
        for link in links:
            summary.record("skipped_link", link, "a symbolic link: not followed")
        for why, name in passed_over:
            if why == "special":
                summary.record("skipped_special", name, "not a regular file (FIFO, socket, device)")
            else:
                summary.record(
                    "skipped_too_deep", name, "a folder below a subject folder: not read"
                )
        known = self.gallery.known_images()
        subjects_before = self.gallery.counts()[0]
        folders = sorted({photo.subject_id for photo in items})
        self._creatable = set(folders) - self.gallery.existing_subjects(folders)
        pending: list[_Prepared] = []
        done = len(links) + len(passed_over)
        for prepared in self._prepare_all(tree, items, known):
            if cancel is not None and cancel.is_set():
                summary.cancelled = True
                break
            if prepared.outcome is not None:
                summary.record(prepared.outcome, prepared.name, prepared.detail)
                done += 1
            else:
                pending.append(prepared)
                if len(pending) >= self.batch_size:
                    done += self._commit(pending, summary)
                    pending = []
            if progress is not None:
                progress(done, summary.total)
        if pending and not summary.cancelled:
            done += self._commit(pending, summary)
        if progress is not None:
            progress(done, summary.total)
        self.gallery.flush()
        summary.subjects_created = self.gallery.counts()[0] - subjects_before
        summary.seconds = time.perf_counter() - started
        return summary

    def _prepare_all(
        self, tree: PhotoTree, items: list[Photo], known: set[tuple[str, str]]
    ) -> Iterator[_Prepared]:
        """Results in input order from a bounded window of parallel work (memory stays flat).

        Files are read and hashed here, through the tree (links never followed); the faces are
        found in a thread pool over this pipeline or, with ``processes``, in worker processes
        with a pipeline each (one ONNX Runtime thread per worker: the CPU cores work in
        parallel without contending for one session)."""
        window: deque[Future[_Prepared]] = deque()
        limit = max(self.workers, self.processes) * 8
        pool = analysis_pool(self.settings, processes=self.processes, threads=self.workers)
        with pool:
            for photo in items:
                read = self._read(tree, photo, known)
                if isinstance(read, _Prepared):
                    done: Future[_Prepared] = Future()
                    done.set_result(read)
                    window.append(done)
                elif self.processes:
                    window.append(pool.submit(_analyse_in_worker, *read, self._rules))
                else:
                    window.append(pool.submit(_analyse, self.pipeline, *read, self._rules))
                if len(window) >= limit:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    @property
    def _rules(self) -> _Rules:
        s = self.settings
        return _Rules(
            s.enroll_policy, s.min_quality, s.limits.max_image_pixels, s.privacy.keep_face_chips
        )

    def _read(
        self, tree: PhotoTree, photo: Photo, known: set[tuple[str, str]]
    ) -> _Prepared | tuple[str, str, str, bytes]:
        """The file's bytes and sha256, or an outcome decided without looking at the image."""
        subject_id, name = photo.subject_id, photo.name
        if not is_subject_id(subject_id):
            return _Prepared(subject_id, name, "invalid_subject", "folder name is not a valid id")
        try:
            data = tree.read(photo)
        except LinkSkipped:
            return _Prepared(subject_id, name, "skipped_link", "a symbolic link: not followed")
        except FileTooLarge as exc:
            return _Prepared(subject_id, name, "too_large", str(exc))
        except OSError as exc:
            return _Prepared(subject_id, name, "unreadable", exc.strerror or str(exc))
        sha = hashlib.sha256(data).hexdigest()
        if (subject_id, sha) in known:
            return _Prepared(subject_id, name, "already_present")
        return subject_id, name, sha, data

    def _commit(self, batch: list[_Prepared], summary: IndexSummary) -> int:
        """Write a batch of embedded faces in one transaction; returns files handled."""
        embedded = [p for p in batch if p.embedding is not None]
        items = [
            (
                p.subject_id,
                NewFace(embedding=p.embedding, box=p.box, det_score=p.score, image_sha256=p.sha256),
            )
            for p in embedded
            if p.embedding is not None
        ]
        chips = [p.chip for p in embedded if p.chip is not None]
        results = self.gallery.add_many(
            items,
            model_id=self.pipeline.model_id,
            creatable=frozenset(self._creatable),
            chips=chips if self._rules.keep_chips else None,
        )
        self._creatable -= {sid for sid, fid, _ in results if fid is not None}  # made: only once
        for p, (_, fid, created) in zip(batch, results, strict=True):
            if fid is None:
                summary.record("subject_deleted", p.name, "its subject was deleted during the run")
            elif not created:  # the same image twice in one folder
                summary.record("already_present", p.name, "duplicate image")
            else:
                summary.record("enrolled", p.name)
                if p.several:
                    summary.largest_of_several.append(p.name)
        return len(batch)
