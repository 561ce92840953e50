"""Faces: enroll images for a subject, list and delete faces."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Response, UploadFile
from fastapi import Path as PathParam

from service.api import convert
from service.api.deps import CanRead, CanWrite, State, read_upload
from service.errors import InvalidRequest
from service.images import media_type
from service.schemas import EnrolledFace, EnrollResponse, FaceDeleted, FaceOut

router = APIRouter(prefix="/v1", tags=["faces"])


@router.post(
    "/subjects/{subject_id}/faces",
    status_code=201,
    dependencies=[CanWrite],
    responses={200: {"model": EnrollResponse, "description": "every photo was already enrolled"}},
)
def add_faces(
    subject_id: str,
    state: State,
    response: Response,
    files: Annotated[list[UploadFile], File(description="one or more photos")],
    multiple_faces: Annotated[Literal["largest", "reject"] | None, Query()] = None,
    aligned: Annotated[bool, Query(description="images are aligned 112x112 crops")] = False,
    min_quality: Annotated[
        float | None,
        Query(ge=0.0, le=1.0, description="refuse faces below this quality (default: setting)"),
    ] = None,
) -> EnrollResponse:
    """Enroll one face per photo (all or nothing): 201 when a face was created; re-sending
    photos already enrolled is a no-op that says so (200, ``created: false``)."""
    if len(files) > state.settings.limits.max_files_per_request:
        raise InvalidRequest(
            f"at most {state.settings.limits.max_files_per_request} files per request"
        )
    images = [read_upload(f, state, "files") for f in files]
    results = state.recognition.enroll(
        subject_id, images, policy=multiple_faces, aligned=aligned, min_quality=min_quality
    )
    if not any(created for _, created, _ in results):
        response.status_code = 200  # nothing was created: every photo was there already
    return EnrollResponse(
        subject_id=subject_id,
        model_id=state.recognition.pipeline.model_id,
        faces=[
            EnrolledFace(face_id=fid, created=created, detection=convert.used(chosen))
            for fid, created, chosen in results
        ],
    )


@router.get("/subjects/{subject_id}/faces", dependencies=[CanRead])
def list_faces(subject_id: str, state: State) -> list[FaceOut]:
    """The faces enrolled for a subject (no embeddings)."""
    return [convert.face_record(f) for f in state.gallery.list_faces(subject_id)]


@router.delete("/faces/{face_id}", dependencies=[CanWrite])
def delete_face(
    face_id: Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a face id")],
    state: State,
) -> FaceDeleted:
    """Erase one face from the store and the index (and its kept photo, if any)."""
    state.gallery.delete_face(face_id)
    return FaceDeleted(face_id=face_id, faces_deleted=1)


@router.get(
    "/faces/{face_id}/image",
    dependencies=[CanRead],
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def face_image(
    face_id: Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a face id")],
    state: State,
) -> Response:
    """The photo a face was enrolled from, when the service keeps photos (privacy.keep_images;
    off by default: then 404 face_not_found)."""
    data = state.gallery.face_photo(face_id)
    return Response(
        data,
        media_type=media_type(data),
        headers={"Cache-Control": "no-store", "Content-Disposition": f"inline; filename={face_id}"},
    )


@router.get(
    "/faces/{face_id}/chip",
    dependencies=[CanRead],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def face_chip(
    face_id: Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a face id")],
    state: State,
) -> Response:
    """The example image of this face: its chip, the detected face with a margin, at most 256
    px (kept by default, privacy.keep_face_chips; 404 face_not_found when none is kept)."""
    data = state.gallery.face_chip(face_id)
    return Response(
        data,
        media_type="image/jpeg",
        headers={"Cache-Control": "no-store", "Content-Disposition": f"inline; filename={face_id}"},
    )
