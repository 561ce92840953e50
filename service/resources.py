"""What a running service holds, built in one place: the face pipeline (self-checked on its
device), the gallery, the job runner and the gallery's upkeep thread.

``marginface serve`` opens them before uvicorn starts (a device that cannot run the models stops
it there with a clear message) and hands them to ``create_app``; ``create_app`` without them
(tests, embedding the app elsewhere) opens them in its lifespan through the same ``open``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.audit import audit_targets
from service.errors import ModelError
from service.gallery import Gallery, backends
from service.indexer import BatchIndexer
from service.jobs import JobRunner, WorkFolders
from service.memory import give_back_freed_memory
from service.recognition import build_pipeline, open_gallery
from service.settings import Settings
from service.vision.pipeline import FacePipeline

log = logging.getLogger("marginface")


class Upkeep:
    """The gallery's upkeep in a thread: now and then (persist the index so a restart after a
    crash rebuilds less often) and at once after a delete (erased embeddings leave the disk
    within moments)."""

    def __init__(self, gallery: Gallery, interval_s: float) -> None:
        self.gallery = gallery
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gallery-upkeep", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            due = self.gallery.wait_for_work(min(1.0, self.interval_s))  # at once on an erasure
            if self._stop.is_set():
                return
            if not due and time.monotonic() - last < self.interval_s:
                continue
            last = time.monotonic()
            try:
                more = self.gallery.flush()
            except Exception:  # keep serving; the store stays the source of truth
                log.exception("gallery upkeep failed")
                more = True
            if more:
                self._stop.wait(0.2)  # the WAL was busy: try again shortly, without spinning

    def stop(self) -> None:
        """Stop the thread (it notices within a second)."""
        self._stop.set()
        self._thread.join(timeout=10)


def _follow_gallery(settings: Settings, pipe: FacePipeline, gallery: Gallery) -> FacePipeline:
    """A gallery moved to another model by ``gallery migrate-model`` is served with that model
    (the configured one made its old embeddings): the pipeline is rebuilt for it when the
    registry has it. Otherwise the configured pipeline stays, and every request that compares
    is refused (model_mismatch): the gallery never compares vectors of two models."""
    from service.model_migration import model_named

    try:
        name = model_named(settings, gallery.model_id)
    except ModelError:
        log.error(
            "the gallery holds embeddings of %s, which is not in the registry; the service runs "
            "%s and will refuse to compare (model_mismatch)",
            gallery.model_id,
            pipe.model_id,
        )
        return pipe
    log.warning(
        "the gallery was moved to %s (gallery migrate-model): serving it instead of the "
        "configured %s; set MARGINFACE_EMBEDDER__MODEL=%s to say so",
        gallery.model_id,
        pipe.model_id,
        name,
    )
    follow = settings.model_copy(
        update={"embedder": settings.embedder.model_copy(update={"model": name})}
    )
    fresh = build_pipeline(follow)
    try:
        fresh.self_check()
    except BaseException:
        fresh.close()
        raise
    pipe.close()
    return fresh


@dataclass
class Resources:
    """The service's heavy parts; ``close`` releases what ``open`` created."""

    settings: Settings
    pipeline: FacePipeline
    gallery: Gallery
    jobs: JobRunner
    upkeep: Upkeep
    owns_pipeline: bool = True
    owns_gallery: bool = True
    closed: bool = field(default=False, repr=False)

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        pipeline: FacePipeline | None = None,
        gallery: Gallery | None = None,
    ) -> Resources:
        """Build what is not given: the pipeline (then run once, so a device that loads a model
        but cannot run it fails here), the gallery, the job runner, the upkeep thread."""
        give_back_freed_memory()  # process-wide: image buffers go back to the system when freed
        owns_pipeline = pipeline is None
        pipe = pipeline or build_pipeline(settings)
        if owns_pipeline:
            pipe.self_check()
        try:
            gal = gallery or open_gallery(settings, pipe.embedder.manifest, on_write=audit_targets)
        except BaseException:
            if owns_pipeline:
                pipe.close()
            raise
        if owns_pipeline and gal.model_id != pipe.model_id:
            pipe = _follow_gallery(settings, pipe, gal)
        runner = JobRunner(
            BatchIndexer(settings, pipe, gal),
            board=backends.job_board(settings.gallery),
            folders=WorkFolders(
                Path(settings.jobs.work_dir),
                max_total_bytes=settings.jobs.max_unpacked_total_bytes,
            ),
            cluster_ttl_s=settings.jobs.cluster_ttl_s,
        )
        upkeep = Upkeep(gal, settings.gallery.flush_interval_s)
        return cls(settings, pipe, gal, runner, upkeep, owns_pipeline, gallery is None)

    def close(self) -> None:
        """Stop the jobs and the upkeep, persist and close the gallery (or just persist one
        that was given), stop the pipeline's batcher if it was built here."""
        if self.closed:
            return
        self.closed = True
        self.jobs.close()
        self.upkeep.stop()
        if self.owns_gallery:
            self.gallery.close()
        else:
            self.gallery.flush()
        if self.owns_pipeline:
            self.pipeline.close()
