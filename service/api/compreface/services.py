"""CompreFace's detection and verification services, and its direct image link."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from service.api.compreface.deps import FileImage, Options, TwoImages
from service.api.compreface.faces import plugins_versions, present, scale
from service.api.compreface.recognition import NO_FACE, example_image, unit_rows
from service.api.compreface.schemas import (
    EmbeddingPair,
    EmbeddingSimilarity,
    EmbeddingsVerification,
    FacesResponse,
    VerificationItem,
    VerificationResponse,
)
from service.api.deps import CanRead, State
from service.errors import MultipleFaces, NoFace
from service.keys import KeyRing

router = APIRouter(prefix="/api/v1", tags=["compreface"])


@router.post("/detection/detect", dependencies=[CanRead], response_model_exclude_none=True)
def detect(state: State, images: FileImage, options: Options) -> FacesResponse:
    """Every face of an image, the biggest first (refused detections that are not faces are
    left out, as on /v1/detect)."""
    rec = state.recognition
    started = time.perf_counter()
    _, faces = rec.detect(images["file"])
    chosen = options.select(faces)
    if not chosen:
        raise NoFace(NO_FACE)
    elapsed = (time.perf_counter() - started) * 1000
    return FacesResponse(
        result=[present(f, options, elapsed) for f in chosen],
        plugins_versions=plugins_versions(rec, options),
    )


@router.post("/verification/verify", dependencies=[CanRead], response_model_exclude_none=True)
def verify(state: State, images: TwoImages, options: Options) -> VerificationResponse:
    """The one face of the source image against every face of the target image."""
    rec = state.recognition
    started = time.perf_counter()
    source = options.select(rec.embed(images["source_image"]))
    if not source:
        raise NoFace(NO_FACE, image="source_image")
    if len(source) > 1:
        raise MultipleFaces(
            f"the source image holds {len(source)} faces; it must hold exactly one",
            image="source_image",
        )
    targets = options.select(rec.embed(images["target_image"]))
    if not targets:
        raise NoFace(NO_FACE, image="target_image")
    elapsed = (time.perf_counter() - started) * 1000
    sim = scale(rec)
    matches = []
    for face in targets:
        item = present(face, options, elapsed)
        item.similarity = sim.similarity(float(source[0].embedding @ face.embedding))
        matches.append(item)
    matches.sort(key=lambda m: -(m.similarity or 0.0))
    return VerificationResponse(
        result=[
            VerificationItem(
                source_image_face=present(source[0], options, elapsed),
                face_matches=matches,
                plugins_versions=plugins_versions(rec, options),
            )
        ]
    )


@router.post("/verification/embeddings/verify", dependencies=[CanRead])
def verify_embeddings(state: State, body: EmbeddingPair) -> EmbeddingsVerification:
    """Similarity of a source embedding with each target embedding."""
    rec = state.recognition
    source = unit_rows(rec, [body.source])[0]
    rows = unit_rows(rec, body.targets)
    sim = scale(rec)
    return EmbeddingsVerification(
        result=[
            EmbeddingSimilarity(embedding=given, similarity=sim.similarity(float(row @ source)))
            for given, row in zip(body.targets, rows, strict=True)
        ]
    )


@router.get("/static/{api_key}/images/{image}", response_class=Response)
def static_image(api_key: str, image: str, state: State) -> Response:
    """An example's image by a link that carries the key (for an ``<img>`` tag): the key is
    checked here, as the header would be, and must hold the read scope."""
    if not state.settings.auth.disabled:
        KeyRing.require(state.keys.authenticate(api_key), "read")
    return example_image(state, image)
