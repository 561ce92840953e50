"""Verify, identify, detect and embed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from service.api import convert
from service.api.deps import CanRead, State, read_upload
from service.errors import InvalidRequest
from service.schemas import (
    DetectResponse,
    EmbeddedFace,
    EmbedResponse,
    IdentifyResponse,
    ModelInfo,
    OperatingPoint,
    ThresholdOut,
    VerifyResponse,
)

router = APIRouter(prefix="/v1", tags=["recognition"], dependencies=[CanRead])

Threshold = Annotated[float | None, Form(ge=-1.0, le=1.0, description="cosine threshold")]
Far = Annotated[
    float | None,
    Form(gt=0.0, lt=1.0, description="false-accept rate; uses the model's calibration"),
]
Aligned = Annotated[bool, Form(description="images are aligned 112x112 crops: skip detection")]


@router.post("/verify")
def verify(
    state: State,
    image_a: Annotated[UploadFile, File()],
    image_b: Annotated[UploadFile | None, File()] = None,
    subject_id: Annotated[str | None, Form()] = None,
    threshold: Threshold = None,
    far: Far = None,
    aligned: Aligned = False,
) -> VerifyResponse:
    """Same person? Compare two images, or an image with an enrolled subject."""
    rec = state.recognition
    a = read_upload(image_a, state, "image_a")
    if (image_b is None) == (subject_id is None):
        raise InvalidRequest("send exactly one of image_b or subject_id")
    if subject_id is not None:
        score, chosen, face, face_id = rec.verify_subject(
            a, subject_id, threshold=threshold, far=far, aligned=aligned
        )
        return VerifyResponse(
            score=round(score, 6),
            threshold=convert.threshold(chosen),
            match=score >= chosen.value,
            model_id=rec.pipeline.model_id,
            face_a=convert.used(face),
            subject_id=subject_id,
            matched_face_id=face_id,
        )
    b = read_upload(image_b, state, "image_b")
    score, chosen, face_a, face_b = rec.verify_images(
        a, b, threshold=threshold, far=far, aligned=aligned
    )
    return VerifyResponse(
        score=round(score, 6),
        threshold=convert.threshold(chosen),
        match=score >= chosen.value,
        model_id=rec.pipeline.model_id,
        face_a=convert.used(face_a),
        face_b=convert.used(face_b),
    )


@router.post("/identify")
def identify(
    state: State,
    image: Annotated[UploadFile, File()],
    top_k: Annotated[int | None, Form(ge=1)] = None,
    threshold: Threshold = None,
    far: Far = None,
    aligned: Aligned = False,
    margin: Annotated[
        float | None,
        Form(
            ge=0,
            le=2,
            description="ambiguous when the best subject beats the runner-up by less than "
            "this cosine (default: the identify_margin setting; 0: never)",
        ),
    ] = None,
) -> IdentifyResponse:
    """Who is this? For every face: the top-k candidate subjects and a match, ambiguous (two
    subjects too close to tell) or unknown (open set)."""
    rec = state.recognition
    data = read_upload(image, state, "image")
    faces, chosen = rec.identify(
        data, top_k=top_k, threshold=threshold, far=far, margin=margin, aligned=aligned
    )
    return IdentifyResponse(
        model_id=rec.pipeline.model_id,
        threshold=convert.threshold(chosen),
        margin=state.settings.identify_margin if margin is None else margin,
        faces=[convert.identified(f) for f in faces],
    )


@router.post("/detect")
def detect(state: State, image: Annotated[UploadFile, File()]) -> DetectResponse:
    """Find every face: box, 5 landmarks, score and quality (detections that are not faces are
    left out)."""
    (height, width), faces = state.recognition.detect(read_upload(image, state, "image"))
    return DetectResponse(width=width, height=height, faces=[convert.box(f) for f in faces])


@router.post("/embed")
def embed(
    state: State, image: Annotated[UploadFile, File()], aligned: Aligned = False
) -> EmbedResponse:
    """Embeddings of every face, with the model id they belong to."""
    rec = state.recognition
    faces = rec.embed(read_upload(image, state, "image"), aligned=aligned)
    return EmbedResponse(
        model_id=rec.pipeline.model_id,
        embedding_dim=rec.pipeline.embedder.embedding_dim,
        faces=[
            EmbeddedFace(**convert.box(f).model_dump(), embedding=[float(v) for v in f.embedding])
            for f in faces
        ],
    )


@router.get("/model")
def model(state: State) -> ModelInfo:
    """The recognizer, its licence, and the FARs it is calibrated for (pick one as `far=`)."""
    manifest = state.recognition.recognizer
    calibration = manifest.calibration
    points = sorted(
        (
            OperatingPoint(far=float(k), threshold=v)
            for k, v in (calibration.thresholds_by_far if calibration else {}).items()
        ),
        key=lambda p: -p.far,
    )
    recommended = manifest.thresholds
    return ModelInfo(
        model_id=manifest.model_id,
        name=manifest.name,
        licence=manifest.licence,
        embedding_dim=manifest.embedding_dim or 0,
        recommended_threshold=ThresholdOut(value=recommended.cosine, source=recommended.source)
        if recommended
        else None,
        calibration_dataset=calibration.dataset if calibration else None,
        operating_points=points,
        default_verify_far=state.settings.verify_far,
        default_identify_far=state.settings.identify_far,
    )
