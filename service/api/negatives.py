"""Negative examples, "not this person": tell the service that a face is not a subject, so
identify stops naming that subject for faces like it (the rule: ``service.identification``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi import Path as PathParam

from service.api import convert
from service.api.deps import CanRead, CanWrite, State, read_upload
from service.errors import InvalidRequest
from service.gallery.gallery import NEGATIVES_PER_SUBJECT
from service.schemas import NegativeAdded, NegativeDeleted, NegativeList

router = APIRouter(prefix="/v1/subjects/{subject_id}/negatives", tags=["negatives"])


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``x1,y1,x2,y2`` (identify's ``detection.box``) as numbers; InvalidRequest."""
    try:
        values = [float(v) for v in text.replace("[", "").replace("]", "").split(",")]
    except ValueError as exc:
        raise InvalidRequest(f"box must be four numbers x1,y1,x2,y2, got {text!r}") from exc
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
        raise InvalidRequest(f"box must be x1,y1,x2,y2 with x2 > x1 and y2 > y1, got {text!r}")
    if not all(abs(v) < 1e7 for v in values):  # NaN and infinities fail this too
        raise InvalidRequest(f"box must be finite pixel coordinates, got {text!r}")
    return values[0], values[1], values[2], values[3]


@router.post(
    "",
    status_code=201,
    dependencies=[CanWrite],
    responses={200: {"model": NegativeAdded, "description": "this face was marked before"}},
)
def add_negative(
    subject_id: str,
    state: State,
    response: Response,
    image: Annotated[
        UploadFile | None,
        File(description="the identify photo again: its face is not this subject"),
    ] = None,
    box: Annotated[
        str | None,
        Form(
            description="x1,y1,x2,y2: which face of the photo (identify's detection.box); "
            "default: the main face"
        ),
    ] = None,
    face_id: Annotated[
        int | None,
        Form(ge=1, le=2**63 - 1, description="or: a gallery face (of another subject)"),
    ] = None,
    aligned: Annotated[bool, Form(description="the photo is an aligned 112x112 crop")] = False,
) -> NegativeAdded:
    """Not this person: remember a face as a negative example of the subject. Send the
    identify photo again (``image``, with ``box`` for a face of a group photo; only the face's
    embedding is kept) or name a gallery face (``face_id``). Later probes at least as close to
    one of the subject's negatives as to the subject are not matched to it."""
    if (image is None) == (face_id is None):
        raise InvalidRequest("send exactly one of image (a photo) or face_id (a gallery face)")
    detection = None
    if image is not None:
        data = read_upload(image, state, "image")
        negative, created, face = state.recognition.not_this_person(
            subject_id, data, box=None if box is None else parse_box(box), aligned=aligned
        )
        detection = convert.box(face)
    else:
        if box is not None:
            raise InvalidRequest("box goes with image, not with face_id")
        negative, created = state.gallery.add_negative(
            subject_id,
            model_id=state.recognition.pipeline.model_id,
            source="face",
            face_id=face_id,
        )
    if not created:
        response.status_code = 200
    return NegativeAdded(
        **convert.negative(negative).model_dump(), created=created, detection=detection
    )


@router.get("", dependencies=[CanRead])
def list_negatives(subject_id: str, state: State) -> NegativeList:
    """A subject's negative examples, oldest first (never their embeddings)."""
    negatives = state.gallery.list_negatives(subject_id)
    return NegativeList(
        subject_id=subject_id,
        negatives=[convert.negative(n) for n in negatives],
        limit=NEGATIVES_PER_SUBJECT,
    )


@router.delete("/{negative_id}", dependencies=[CanWrite])
def delete_negative(
    subject_id: str,
    negative_id: Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a negative's id")],
    state: State,
) -> NegativeDeleted:
    """Forget one negative example: the subject can be matched to faces like it again."""
    state.gallery.delete_negative(subject_id, negative_id)
    return NegativeDeleted(negative_id=negative_id, negatives_deleted=1)
