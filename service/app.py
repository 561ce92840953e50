"""The FastAPI application: ``create_app(settings, *, pipeline=None, gallery=None)``.

The lifespan builds the heavy resources (ONNX sessions, gallery), yields them as typed state, and
flushes and closes them on shutdown. Errors map to HTTP in this one module.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import faces, health, jobs, recognize, subjects
from service.api.deps import AppState
from service.audit import AuditTrail, audit_targets
from service.errors import (
    ConfigError,
    MarginFaceError,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
)
from service.gallery import Gallery, backends
from service.indexer import BatchIndexer
from service.jobs import JobRunner, WorkFolders
from service.keys import KeyRing
from service.metrics import Metrics, RequestContext
from service.recognition import Recognition, build_pipeline, open_gallery
from service.settings import Settings
from service.vision.pipeline import FacePipeline

log = logging.getLogger("marginface")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    """The one error body: {"error": {"code", "message", "details"?}}.

    A ``retry_after_s`` detail (backpressure) also becomes a Retry-After header.
    """
    body: dict[str, Any] = {"code": code, "message": message}
    headers = {}
    if details:
        body["details"] = details
        if "retry_after_s" in details:
            headers["Retry-After"] = str(int(details["retry_after_s"]))
    return JSONResponse(status_code=status, content={"error": body}, headers=headers)


class _StartTracker:
    """Wraps ``send`` to know whether the response has begun (an error body can only be sent
    before it has)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class BodyLimit:
    """Reject request bodies over the limit (by Content-Length, or while streaming) with 413."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, overrides: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = overrides or {}  # path -> limit (zip uploads are bigger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.overrides.get(scope.get("path", ""), self.max_bytes)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = PayloadTooLarge(
            f"the request body is over the limit of {limit} bytes", limit=limit
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_error(send, too_large)
            return
        received = 0
        tracker = _StartTracker(send)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        try:
            await self.app(scope, limited_receive, tracker.send)
        except PayloadTooLarge as exc:
            if not tracker.started:
                await _send_error(send, exc)


class Deadline:
    """Answer 503 ``timeout`` when a request runs past the limit, instead of hanging the client.

    The worker thread of a sync route cannot be killed, but writes are single transactions, so
    an abandoned request either committed or left nothing behind.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracker = _StartTracker(send)
        try:
            await asyncio.wait_for(self.app(scope, receive, tracker.send), self.seconds)
        except TimeoutError:
            if not tracker.started:
                await _send_error(
                    send,
                    RequestTimeout(
                        f"the request took longer than {self.seconds:g} s", retry_after_s=5
                    ),
                )


class InflightLimit:
    """Backpressure for the whole API: past ``limit`` requests in flight, answer 503
    ``overloaded`` with Retry-After at once instead of queueing without bound (health, readiness
    and metrics are exempt, so that probes still see the service)."""

    EXEMPT = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            await _send_error(
                send,
                Overloaded(
                    f"{self.inflight} requests are in flight (the limit); retry shortly",
                    retry_after_s=1,
                ),
            )
            return
        self.inflight += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


async def _send_error(send: Send, exc: MarginFaceError) -> None:
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


CONSOLE_DIR = Path(__file__).parent / "console"
CONSOLE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
)


class ConsoleFiles(StaticFiles):
    """The console's static files, with a policy that lets the page load nothing from elsewhere."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Content-Security-Policy"] = CONSOLE_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


def _check_settings(settings: Settings) -> None:
    """Refuse to start with settings that cannot be right."""
    if not settings.auth.disabled and not settings.auth.api_keys and not settings.auth.keys_file:
        raise ConfigError(
            "no API keys are configured: set MARGINFACE_AUTH__API_KEYS='[\"...\"]' or "
            "MARGINFACE_AUTH__KEYS_FILE (see `marginface keys create`), or set "
            "MARGINFACE_AUTH__DISABLED=true to run without authentication on a trusted network"
        )


def _flusher(gallery: Gallery, interval_s: float, stop: threading.Event) -> None:
    """The gallery's upkeep now and then (persist the index so a restart after a crash rebuilds
    less often); at once after a delete, so erased embeddings leave the disk within moments."""
    last = time.monotonic()
    while not stop.is_set():
        due = gallery.wait_for_work(min(1.0, interval_s))  # wakes at once on an erasure
        if stop.is_set():
            return
        if not due and time.monotonic() - last < interval_s:
            continue
        last = time.monotonic()
        try:
            more = gallery.flush()
        except Exception:  # keep serving; the store stays the source of truth
            log.exception("gallery upkeep failed")
            more = True
        if more:
            stop.wait(0.2)  # the WAL was busy: try again shortly, without spinning


def create_app(
    settings: Settings | None = None,
    *,
    pipeline: FacePipeline | None = None,
    gallery: Gallery | None = None,
) -> FastAPI:
    """Build the app. Heavy resources are created in the lifespan unless passed in (tests)."""
    settings = settings or Settings()
    _check_settings(settings)
    metrics = Metrics()  # one registry per app; the lifespan connects the gallery and pipeline
    keys = KeyRing([k.get_secret_value() for k in settings.auth.api_keys], settings.auth.keys_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, AppState]]:
        pipe = pipeline
        if pipe is None:  # a pipeline passed in was built (and checked) by the caller
            pipe = build_pipeline(settings)
            pipe.self_check()
        own_gallery = gallery is None
        gal = gallery or open_gallery(settings, pipe.embedder.manifest, on_write=audit_targets)
        metrics.gallery_stats = gal.stats
        pipe.observe = metrics.stage
        if pipe.batcher is not None:
            pipe.batcher.on_batch = metrics.batch
        providers = {"detector": pipe.detector.providers, "recognizer": pipe.embedder.providers}
        log.warning("MarginFace ready: providers %s, gallery %s", providers, gal.stats())
        runner = JobRunner(
            BatchIndexer(settings, pipe, gal),
            board=backends.job_board(settings.gallery),
            folders=WorkFolders(Path(settings.jobs.work_dir)),
        )
        stop = threading.Event()
        flusher = threading.Thread(
            target=_flusher, args=(gal, settings.gallery.flush_interval_s, stop), daemon=True
        )
        flusher.start()
        recognition = Recognition(settings, pipe, gal, on_faces=metrics.faces)
        try:
            yield {"app_state": AppState(settings, recognition, metrics, runner, keys)}
        finally:
            runner.close()
            stop.set()
            flusher.join(timeout=10)  # it sees stop within a second
            if own_gallery:
                gal.close()
            else:
                gal.flush()
            if pipeline is None:
                pipe.close()

    app = FastAPI(
        title="MarginFace",
        version="0.1.0",
        description="Face detection, verification and open-set identification.",
        lifespan=lifespan,
    )
    routers = (health.router, subjects.router, faces.router, recognize.router, jobs.router)
    for router in (*routers, jobs.export_router):
        app.include_router(router)
    if settings.console_enabled:
        app.mount("/console", ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console")

    @app.exception_handler(MarginFaceError)
    async def domain_error(request: Request, exc: MarginFaceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc'])}: {first['msg']}"
        return error_response(422, "validation_error", message, {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = str(request.scope.get("marginface.request_id", "-"))
        log.exception(
            "unhandled error on %s %s",
            request.method,
            request.url.path,
            extra={"request_id": rid},
        )
        response = error_response(
            500,
            "internal_error",
            f"an unexpected error occurred; see the server log (request id {rid})",
        )
        response.headers["X-Request-ID"] = rid
        return response

    app.add_middleware(
        BodyLimit,
        max_bytes=settings.limits.max_request_bytes,
        overrides={"/v1/jobs/index": settings.jobs.max_archive_bytes},
    )
    app.add_middleware(Deadline, seconds=settings.limits.request_timeout_s)
    app.add_middleware(InflightLimit, limit=settings.limits.max_inflight_requests)
    app.add_middleware(AuditTrail, path=settings.privacy.audit_log_path)
    app.add_middleware(RequestContext, metrics=metrics)
    if settings.cors_allow_origins:  # off by default: browsers on other origins are refused
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    return app
