"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response

from service.api.deps import State
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz")
def readyz(state: State) -> Readiness:
    """Models loaded, the ONNX Runtime providers really in use, and the gallery size."""
    pipeline = state.recognition.pipeline
    det, rec = pipeline.detector, pipeline.embedder
    return Readiness(
        status="ready",
        detector={
            "model": det.manifest.name,
            "model_id": det.manifest.model_id,
            "providers": det.providers,
        },
        recognizer={
            "model": rec.manifest.name,
            "model_id": rec.model_id,
            "embedding_dim": rec.embedding_dim,
            "providers": rec.providers,
            "licence": rec.manifest.licence,
        },
        gallery=state.gallery.stats(),
        batching=(
            {
                "max_batch": pipeline.batcher.max_batch,
                "max_wait_ms": pipeline.batcher.max_wait_s * 1000,
                "queued": pipeline.batcher.queued(),
            }
            if pipeline.batcher is not None
            else None
        ),
    )


@router.get("/metrics", include_in_schema=False)
def metrics(state: State) -> Response:
    """Prometheus exposition: requests, latency, pipeline stages, batch sizes, gallery size."""
    if not state.settings.metrics_enabled:
        raise HTTPException(404, "metrics are switched off (MARGINFACE_METRICS_ENABLED)")
    body, content_type = state.metrics.render()
    return Response(content=body, media_type=content_type)
