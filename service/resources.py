"""What a running service holds, built in one place: the face pipeline (self-checked on its
device), the gallery (which runs its own upkeep) and the job runner.

``marginface serve`` opens them before uvicorn starts (a device that cannot run the models stops
it there with a clear message) and hands them to ``create_app``; ``create_app`` without them
(tests, embedding the app elsewhere) opens them in its lifespan through the same ``open``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from service.audit import audit_targets
from service.errors import ModelError
from service.gallery import Gallery, backends
from service.indexer import BatchIndexer
from service.jobs import JobRunner, WorkFolders
from service.memory import give_back_freed_memory
from service.recognition import build_pipeline, checked_pipeline, open_gallery
from service.settings import Settings
from service.vision.pipeline import FacePipeline

log = logging.getLogger("marginface")


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
    fresh = checked_pipeline(settings.with_recognizer(name))
    pipe.close()
    return fresh


@dataclass
class Resources:
    """The service's heavy parts; ``close`` releases what ``open`` created."""

    settings: Settings
    pipeline: FacePipeline
    gallery: Gallery
    jobs: JobRunner
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
        but cannot run it fails here), the gallery, the job runner."""
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
        return cls(settings, pipe, gal, runner, owns_pipeline, gallery is None)

    def close(self) -> None:
        """Stop the jobs, close the gallery (its upkeep stops with it; one that was given is
        just persisted), stop the pipeline's batcher if it was built here."""
        if self.closed:
            return
        self.closed = True
        self.jobs.close()
        if self.owns_gallery:
            self.gallery.close()
        else:
            self.gallery.flush()
        if self.owns_pipeline:
            self.pipeline.close()
