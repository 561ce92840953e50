"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

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
        gallery=state.recognition.gallery.stats(),
    )
