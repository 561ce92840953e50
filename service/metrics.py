"""Prometheus metrics and per-request context (request id, access log), one registry per app.

The vision code knows nothing of Prometheus: the pipeline calls an ``observe(stage, seconds)``
hook and the batcher an ``on_batch(size)`` hook, and both land here.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("marginface.access")

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Metrics:
    """The service's series; ``render()`` is what /metrics returns."""

    def __init__(self, gallery_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "marginface_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "marginface_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=_LATENCY,
            registry=r,
        )
        self.stages = Histogram(
            "marginface_stage_duration_seconds",
            "time per pipeline stage (decode, detect, align, embed, search)",
            ["stage"],
            buckets=_STAGE,
            registry=r,
        )
        self.batch_size = Histogram(
            "marginface_embed_batch_size",
            "faces per embedding batch (the micro-batcher's batches)",
            buckets=_SIZES,
            registry=r,
        )
        self.faces_per_image = Histogram(
            "marginface_faces_per_image", "faces detected per image", buckets=_SIZES, registry=r
        )
        self.gallery_faces = Gauge("marginface_gallery_faces", "faces in the gallery", registry=r)
        self.gallery_subjects = Gauge(
            "marginface_gallery_subjects", "subjects in the gallery", registry=r
        )
        self.gallery_quarantined = Gauge(
            "marginface_gallery_quarantined_faces",
            "stored faces whose embedding failed its checksum or unit-norm check (never matched)",
            registry=r,
        )
        self.internal_errors = Counter(
            "marginface_internal_errors",
            "requests answered 500 internal_error (a bug: the log has each one's request id)",
            registry=r,
        )
        self.gallery_stats = gallery_stats

    def internal_error(self) -> None:
        """Hook for the catch-all error layer."""
        self.internal_errors.inc()

    def stage(self, name: str, seconds: float) -> None:
        """Hook for the pipeline and the recognition layer."""
        self.stages.labels(name).observe(seconds)

    def batch(self, size: int) -> None:
        """Hook for the micro-batcher."""
        self.batch_size.observe(size)

    def faces(self, count: int) -> None:
        """Faces found in one image."""
        self.faces_per_image.observe(count)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (gallery gauges refreshed on scrape)."""
        if self.gallery_stats is not None:
            stats = self.gallery_stats()
            self.gallery_faces.set(stats["faces"])
            self.gallery_subjects.set(stats["subjects"])
            self.gallery_quarantined.set(stats.get("quarantined", 0))
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestContext:
    """ASGI middleware: a request id (X-Request-ID in or a new one, echoed back), the route's
    metrics, and one structured access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        # also in the scope: the catch-all error handler runs outside this middleware, after
        # the context variable is reset, and still needs the id for its log line and header
        scope["marginface.request_id"] = rid
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or [])
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(elapsed)
            access_log.info(
                "request",
                extra={
                    "method": method,
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    _FIELDS = ("method", "route", "status", "duration_ms", "audit")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        for key in self._FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Root logging for the server process: JSON lines (default) or plain text, on stderr."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
