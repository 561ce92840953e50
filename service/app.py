"""The FastAPI application: ``create_app(settings, *, pipeline=None, gallery=None, ...)``.

The lifespan opens the heavy parts (``service.resources``) unless they are handed in, yields them
as typed state, and closes what it opened. Errors map to HTTP in ``service.errors``; the layers
in front of the routes are ``service.middleware``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse
from fastapi_offline import FastAPIOffline

from service.api import (
    clusters,
    compreface,
    faces,
    health,
    jobs,
    migration,
    negatives,
    recognize,
    subjects,
)
from service.api.deps import AppState, known_query_only
from service.api.image_body import IMAGE_ROUTES, Base64Bodies
from service.api.json_line import JSONLineResponse
from service.api.openapi import document_errors
from service.audit import AuditTrail
from service.console import mount_console
from service.errors import ConfigError, install_handlers
from service.gallery import Gallery
from service.keys import KeyRing
from service.metrics import Metrics, RequestContext
from service.middleware import (
    Authenticate,
    BodyGuard,
    CatchAll,
    Deadline,
    InflightLimit,
    ScopeTable,
)
from service.model_mover import GateMiddleware, ModelMover, RequestGate
from service.recognition import Recognition
from service.resources import Resources
from service.settings import Settings
from service.vision.pipeline import FacePipeline

log = logging.getLogger("marginface")
DOCS_ASSETS = "/docs-assets"  # Swagger UI and ReDoc, served from the package


def _check_settings(settings: Settings) -> None:
    """Refuse to start with settings that cannot be right."""
    auth = settings.auth
    has_file = auth.keys_file is not None and auth.keys_file.is_file()
    if not auth.disabled and not auth.api_keys and not has_file:
        raise ConfigError(
            "no API keys are configured: set MARGINFACE_AUTH__API_KEYS='[\"...\"]', or create "
            f"a key with `marginface keys create` (it writes {auth.keys_file}, which this "
            "server reads), or set MARGINFACE_AUTH__DISABLED=true to run without "
            "authentication on a trusted network"
        )


def _install_middleware(
    app: FastAPI, settings: Settings, keys: KeyRing, metrics: Metrics, table: ScopeTable
) -> None:
    """The layers of ``service.middleware``, innermost first (Starlette wraps each new one
    around the ones before)."""
    limits = settings.limits
    app.add_middleware(
        BodyGuard,
        max_bytes=limits.max_request_bytes,
        max_plain_bytes=limits.max_json_bytes,
        overrides={
            "/v1/jobs/index": settings.jobs.max_archive_bytes,
            "/v1/jobs/cluster": settings.jobs.max_archive_bytes,
        },
        timeout_s=limits.body_timeout_s,
        min_rate_bytes_s=limits.min_body_rate_bytes_s,
        grace_s=limits.body_grace_s,
    )
    app.add_middleware(Deadline, seconds=limits.request_timeout_s)
    app.add_middleware(
        InflightLimit, limit=limits.max_inflight_requests, per_key=limits.inflight_per_key
    )
    app.add_middleware(Authenticate, keys=keys, table=table, disabled=settings.auth.disabled)
    app.add_middleware(AuditTrail, path=settings.privacy.audit_log_path)
    app.add_middleware(CatchAll, on_error=metrics.internal_error)
    app.add_middleware(RequestContext, metrics=metrics)
    if settings.cors_allow_origins:  # off by default: browsers on other origins are refused
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )


def create_app(
    settings: Settings | None = None,
    *,
    pipeline: FacePipeline | None = None,
    gallery: Gallery | None = None,
    resources: Resources | None = None,
) -> FastAPI:
    """Build the app. Heavy parts are opened in the lifespan (``Resources.open``) unless
    ``resources`` are handed in (``marginface serve``); either way the lifespan closes them at
    shutdown. ``pipeline``/``gallery`` replace just those parts (tests share one pipeline)."""
    settings = settings or Settings()
    _check_settings(settings)
    metrics = Metrics()  # one registry per app; the lifespan connects the gallery and pipeline
    keys = KeyRing([k.get_secret_value() for k in settings.auth.api_keys], settings.auth.keys_file)
    gate = RequestGate()  # held while the service switches its recognizer (model_mover)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, AppState]]:
        # a worker thread for every request in flight: uploads waiting for their share of the
        # image memory budget must not hold all of anyio's 40 threads and starve small requests
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, settings.limits.max_inflight_requests + 8)
        opened = resources or Resources.open(settings, pipeline=pipeline, gallery=gallery)
        pipe, gal = opened.pipeline, opened.gallery
        metrics.gallery_stats = gal.stats
        pipe.observe = metrics.stage
        if pipe.batcher is not None:
            pipe.batcher.on_batch = metrics.batch
        providers = {"detector": pipe.detector.providers, "recognizer": pipe.embedder.providers}
        log.info("MarginFace ready: providers %s, gallery %s", providers, gal.stats())
        recognition = Recognition(settings, pipe, gal, on_faces=metrics.faces)
        gate.busy_threads = lambda: limiter.borrowed_tokens
        mover = ModelMover(
            settings, pipe, gal, opened.jobs, gate, owns_pipeline=opened.owns_pipeline
        )
        try:
            yield {"app_state": AppState(settings, recognition, metrics, opened.jobs, keys, mover)}
        finally:
            mover.close()
            # handed-in resources too: uvicorn re-raises SIGTERM once it has shut down, so
            # nothing after uvicorn.run can be counted on to clean up (jobs, their folders)
            opened.close()

    # the docs' Swagger UI and ReDoc assets come from the fastapi-offline wheel, not a CDN
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        redoc_url=None,  # ReDoc's bundle still fetches its badge from cdn.redoc.ly
        title="MarginFace",
        version="0.1.0",
        description="Face detection, verification and open-set identification.",
        lifespan=lifespan,
        dependencies=[Depends(known_query_only)],
        default_response_class=JSONLineResponse,
    )
    routers = [health.router, subjects.router, faces.router, negatives.router, recognize.router,
               clusters.router]  # fmt: skip
    routers.append(jobs.router)
    routers.append(migration.router)
    routers.append(jobs.export_router)
    routers.extend(compreface.routers)  # CompreFace's REST API: docs/compreface.md
    for router in routers:
        app.include_router(router)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> RedirectResponse:
        """ReDoc's bundle fetches its badge from a CDN, so /redoc leads to the offline /docs."""
        return RedirectResponse("/docs", status_code=307)

    if settings.console_enabled:
        mount_console(app)
    install_handlers(app)
    document_errors(app, routers)
    app.add_middleware(Base64Bodies, routes=IMAGE_ROUTES)  # innermost: base64 JSON images
    _install_middleware(app, settings, keys, metrics, ScopeTable(routers))
    app.add_middleware(compreface.CompreFaceErrors)  # its error body, on its routes only
    app.add_middleware(GateMiddleware, gate=gate)  # outermost: a model switch holds requests
    return app
