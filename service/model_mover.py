"""A running service moves its gallery to another recognizer (``POST /v1/admin/model-migration``
and the console): re-embedding runs in a thread beside the requests, which keep being answered
with the current model; then the service switches in place, atomically for its callers.

The switch holds new requests at a gate (``RequestGate``, the outermost layer of the app) and
waits until none is in flight and no worker thread is still busy with one (a request its
deadline answered may still be computing) and no batch job runs; then the gallery switches
(its new index was built and verified before the gate closed) and the pipeline adopts the new
recognizer, and the gate opens. Held requests wait for that moment (a few seconds at most for
a large gallery: the store's swap and the index's adoption) instead of failing; none of them
can pair a vector of one model with the gallery of the other.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import MarginFaceError, MigrationRunning, Overloaded
from service.gallery import Gallery
from service.jobs import JobRunner
from service.middleware import OPEN_PATHS
from service.model_migration import (
    Reembedder,
    dry_run,
    model_named,
    stage_all,
    target_model,
)
from service.models import list_models
from service.recognition import checked_pipeline
from service.settings import Settings
from service.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

#: how long the switch waits for requests in flight to finish before it gives up (and retries):
#: new requests wait meanwhile, so this bounds what a slow request in flight costs the others
DRAIN_TIMEOUT_S = 10.0
#: how long it waits for batch jobs to finish first
JOBS_TIMEOUT_S = 3600.0


class RequestGate:
    """Counts requests in flight and can hold new ones (ASGI middleware state)."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self.inflight = 0
        #: worker threads busy with requests (anyio's limiter), set by the app's lifespan
        self.busy_threads: Callable[[], float] = lambda: 0

    async def enter(self) -> None:
        """Count a request in; wait while the gate is held."""
        while True:
            with self._lock:
                self.inflight += 1
            if self._open.is_set():
                return
            with self._lock:
                self.inflight -= 1
            while not self._open.is_set():
                await asyncio.sleep(0.02)

    def leave(self) -> None:
        """Count a request out."""
        with self._lock:
            self.inflight -= 1

    @contextmanager
    def held(self, timeout_s: float = DRAIN_TIMEOUT_S) -> Iterator[None]:
        """Hold new requests and wait until none is in flight (Overloaded on timeout, the gate
        open again); release on exit."""
        self._open.clear()
        try:
            deadline = time.monotonic() + timeout_s
            while self.inflight > 0 or self.busy_threads() > 0:
                if time.monotonic() > deadline:
                    raise Overloaded(
                        f"{self.inflight} requests still in flight after {timeout_s:.0f} s: the "
                        "model switch will be tried again",
                        retry_after_s=5,
                    )
                time.sleep(0.01)
            yield
        finally:
            self._open.set()


class GateMiddleware:
    """The app's outermost layer: every HTTP request passes the gate."""

    def __init__(self, app: ASGIApp, gate: RequestGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)  # probes never wait (nor touch the models)
            return
        await self.gate.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()


class ModelMover:
    """One migration at a time, in a thread of the service (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        pipeline: FacePipeline,
        gallery: Gallery,
        jobs: JobRunner,
        gate: RequestGate,
        *,
        owns_pipeline: bool = True,
    ) -> None:
        self.settings = settings
        self.owns_pipeline = owns_pipeline  # a pipeline handed in (tests) is not changed
        self.pipeline = pipeline
        self.gallery = gallery
        self.jobs = jobs
        self.gate = gate
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._status: dict[str, Any] = {"state": "idle"}

    def status(self) -> dict[str, Any]:
        """The migration's state (idle, embedding, switching, switched, staged, failed), its
        target and progress, and where the gallery stands."""
        with self._lock:
            status = dict(self._status)
        staging = self.gallery.models.staging()
        previous = staging.previous_model()
        status.update(
            gallery_model=self.gallery.model_id,
            service_model=self.pipeline.model_id,
            previous_model=previous.model_id if previous else None,
            staged_models=staging.staged_models(),
        )
        if status.get("to"):
            status["failures"] = staging.failures(str(status["to"]))[:100]
        status["models"] = [
            {
                "name": m.name,
                "model_id": m.model_id,
                "calibrated": m.thresholds is not None,
                "licence": m.licence,
            }
            for m in list_models(self.settings.models_dir)
            if m.embedding_dim is not None
        ]
        return status

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._status.update(changes)

    def dry_run(self, name: str, *, allow_uncalibrated: bool = False) -> dict[str, Any]:
        """What a migration to ``name`` could re-embed, by source; nothing changes."""
        target = target_model(self.settings, name, allow_uncalibrated=allow_uncalibrated)
        return dry_run(self.gallery.models.staging(), self._reembedder(None), target)

    def start(
        self, name: str | None, *, allow_uncalibrated: bool = False, switch: bool = True
    ) -> dict[str, Any]:
        """Start moving to ``name`` (None: back to the previous model); MigrationRunning while
        one runs. Target errors (unknown, uncalibrated) are raised here, before the thread."""
        if switch and not self.owns_pipeline:
            from service.errors import UnsupportedByBackend

            raise UnsupportedByBackend(
                "this app was handed its pipeline by its caller, so it cannot switch models in "
                "place; stage with switch=false, or use `marginface gallery migrate-model`"
            )
        with self._lock:
            self._refuse_while_running()  # early, so that a rollback says so first
        if name is None:
            previous = self.gallery.models.staging().previous_model()
            if previous is None:
                from service.errors import InvalidRequest

                raise InvalidRequest("the gallery was never switched: nothing to roll back to")
            name = model_named(self.settings, previous.model_id)
        target = target_model(self.settings, name, allow_uncalibrated=allow_uncalibrated)
        thread = threading.Thread(
            target=self._run, args=(target, switch), name="model-migration", daemon=True
        )
        # resolving the target hashed its weights: another start may have claimed the mover
        # meanwhile, so check and claim under one lock
        with self._lock:
            self._refuse_while_running()
            self._status.update(
                state="embedding",
                to=target.pin.model_id,
                model=name,
                error=None,
                result=None,
                progress={"done": 0, "total": 0},
                started_at=time.time(),
            )
            self._stop.clear()
            self._thread = thread
            thread.start()
        return self.status()

    def _refuse_while_running(self) -> None:
        """MigrationRunning while a migration thread lives (the caller holds ``_lock``)."""
        if self._thread is not None and self._thread.is_alive():
            raise MigrationRunning(
                f"a migration to {self._status.get('to')} is running", **self._status
            )

    def _reembedder(self, target_pipeline: FacePipeline | None) -> Reembedder:
        return Reembedder(
            target_pipeline or self.pipeline,
            self.gallery.images,
            photos=self.settings.privacy.keep_images,
        )

    def _target_pipeline(self, name: str) -> FacePipeline:
        return checked_pipeline(self.settings.with_recognizer(name))

    def _run(self, target: Any, switch: bool) -> None:
        fresh: FacePipeline | None = None
        try:
            fresh = self._target_pipeline(self._status["model"])
            reembedder = self._reembedder(fresh)
            staged = stage_all(
                self.gallery.models.staging(),
                reembedder,
                target,
                progress=lambda done, total: self._update(progress={"done": done, "total": total}),
                stop=self._stop,
            )
            if self._stop.is_set():
                self._update(state="stopped", result=staged)
                return
            if not switch:
                self._update(state="staged", result=staged)
                return
            self._update(state="switching", result=staged)
            result = self._switch(target, fresh, reembedder)
            fresh = None  # adopted
            self._update(state="switched", result={**staged, **result}, finished_at=time.time())
            log.warning("the service now runs %s (gallery migrate-model)", target.pin.model_id)
        except MarginFaceError as exc:
            self._update(state="failed", error={"code": exc.code, "message": exc.message})
        except Exception as exc:  # a thread: report, never die silently
            log.exception("model migration failed")
            self._update(state="failed", error={"code": "internal_error", "message": str(exc)})
        finally:
            if fresh is not None:
                fresh.close()

    def _switch(self, target: Any, fresh: FacePipeline, reembedder: Reembedder) -> dict[str, Any]:
        """Wait for batch jobs, then switch gallery and pipeline with requests held; faces
        enrolled meanwhile are embedded first (a few tries)."""
        from service.errors import MigrationIncomplete

        for attempt in range(5):
            self._wait_for_jobs()
            try:
                return self.gallery.models.switch(
                    target.pin, pause=self._held(fresh), ready=self._jobs_idle
                )
            except (MigrationIncomplete, Overloaded):
                if attempt == 4:
                    raise
                stage_all(self.gallery.models.staging(), reembedder, target)
        raise AssertionError("unreachable")

    @contextmanager
    def _held(self, fresh: FacePipeline) -> Iterator[Callable[[], None]]:
        """Requests held; the callback swaps the pipeline once the gallery has switched."""
        with self.gate.held():
            yield lambda: self.pipeline.adopt(fresh)

    def _jobs_idle(self) -> bool:
        return not any(j.status in ("queued", "running") for j in self.jobs.list())

    def _wait_for_jobs(self) -> None:
        deadline = time.monotonic() + JOBS_TIMEOUT_S
        while not self._jobs_idle():
            if time.monotonic() > deadline or self._stop.is_set():
                raise Overloaded("batch jobs kept running: the model switch was not made")
            time.sleep(1.0)

    def close(self) -> None:
        """Stop a migration in progress (what it staged is kept: it resumes next time)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
