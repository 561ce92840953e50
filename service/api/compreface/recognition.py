"""CompreFace's recognition service: subjects, examples, recognize, verify by example."""

from __future__ import annotations

import math
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Body, Query, Response

from service.api.compreface.deps import (
    Collection,
    DetProb,
    FileImage,
    Options,
    PredictionCount,
)
from service.api.compreface.faces import face_id, image_id, plugins_versions, present, scale
from service.api.compreface.schemas import (
    Deleted,
    EmbeddingsBody,
    EmbeddingSimilarities,
    EmbeddingSimilarity,
    EmbeddingsRecognition,
    EmbeddingsVerification,
    Example,
    ExamplePage,
    FacesResponse,
    SubjectBody,
    SubjectList,
    SubjectName,
    SubjectSimilarity,
    Updated,
)
from service.api.deps import CanRead, CanWrite, State
from service.errors import FaceNotFound, InvalidRequest, MultipleFaces, NoFace
from service.images import media_type
from service.recognition import Recognition

router = APIRouter(prefix="/api/v1/recognition", tags=["compreface"])
NO_FACE = "No face is found in the given image"
DetectFaces = Annotated[
    bool, Query(description="false: the image is a face crop aligned to the 112x112 template")
]


# ---- subjects


@router.post("/subjects", status_code=201, dependencies=[CanWrite])
def add_subject(body: SubjectBody, faces: Collection) -> SubjectName:
    """Create a subject (optional: adding an example creates it)."""
    return SubjectName(subject=faces.create(body.subject).name)


@router.put("/subjects/{subject}", dependencies=[CanWrite])
def rename_subject(subject: str, body: SubjectBody, faces: Collection) -> Updated:
    """Rename a subject (merging into an existing one is refused: see docs/compreface.md)."""
    return Updated(updated=faces.rename(subject, body.subject))


@router.delete("/subjects/{subject}", dependencies=[CanWrite])
def delete_subject(subject: str, faces: Collection) -> SubjectName:
    """Delete a subject and all its examples."""
    found = faces.get(subject)
    faces.gallery.delete_subject(found.id)
    return SubjectName(subject=found.name)


@router.delete("/subjects", dependencies=[CanWrite])
def delete_all_subjects(faces: Collection) -> Deleted:
    """Delete every subject and every example."""
    ids = [s.id for s in faces.subjects()]
    for subject_id in ids:
        faces.gallery.delete_subject(subject_id)
    return Deleted(deleted=len(ids))


@router.get("/subjects", dependencies=[CanRead])
@router.get("/subjects/", dependencies=[CanRead], include_in_schema=False)  # the docs' curl
def list_subjects(faces: Collection) -> SubjectList:
    """Every subject's name."""
    return SubjectList(subjects=[s.name for s in faces.subjects()])


# ---- examples


@router.post("/faces", status_code=201, dependencies=[CanWrite])
def add_example(
    state: State,
    faces: Collection,
    images: FileImage,
    subject: Annotated[str, Query(min_length=1, max_length=512)],
    det_prob_threshold: DetProb = None,
    detect_faces: DetectFaces = True,
) -> Example:
    """Add an example (one face) of a subject, creating the subject if needed."""
    existed = faces.find(subject)
    found = existed or faces.ensure(subject)
    try:
        try:
            results = state.recognition.enroll(
                found.id, [images["file"]], policy="reject", aligned=not detect_faces
            )
        except MultipleFaces as exc:  # our message names our own API's option
            raise MultipleFaces("Image should contain only one face: " + exc.message) from exc
        fid, created, chosen = results[0]
        if det_prob_threshold is not None and chosen.face.score < det_prob_threshold:
            if created:  # the face was below the caller's floor: undo, as if never added
                faces.gallery.delete_face(fid)
            raise NoFace(NO_FACE, det_prob_threshold=det_prob_threshold)
    except Exception:
        if existed is None:  # a failed add leaves no empty subject behind
            faces.discard_if_empty(found.id)
        raise
    return Example(image_id=image_id(fid), subject=found.name)


@router.get("/faces", dependencies=[CanRead])
def list_examples(
    faces: Collection,
    page: Annotated[int, Query(ge=0, le=2**31)] = 0,
    size: Annotated[int, Query(ge=1, le=1000)] = 20,
    subject: Annotated[str | None, Query(max_length=512)] = None,
) -> ExamplePage:
    """Saved examples, a page at a time, of one subject or of all."""
    items = faces.examples(subject or None)
    chosen = items[page * size : (page + 1) * size]
    return ExamplePage(
        faces=[Example(image_id=image_id(f.id), subject=name) for f, name in chosen],
        page_number=page,
        page_size=size,
        total_pages=math.ceil(len(items) / size),
        total_elements=len(items),
    )


@router.delete("/faces", dependencies=[CanWrite])
def delete_examples(
    faces: Collection, subject: Annotated[str | None, Query(max_length=512)] = None
) -> Deleted:
    """Delete every example of a subject (or of every subject); subjects stay."""
    items = faces.examples(subject or None)
    for face, _ in items:
        faces.gallery.delete_face(face.id)
    return Deleted(deleted=len(items))


@router.post("/faces/delete", dependencies=[CanWrite])
def delete_many(
    faces: Collection, ids: Annotated[list[str], Body(max_length=1000)]
) -> list[Example]:
    """Delete several examples by image id; ids that do not exist are ignored."""
    out = []
    for value in ids:
        try:
            fid = face_id(value)
            subject = faces.owner(fid)
            faces.gallery.delete_face(fid)
        except FaceNotFound:
            continue
        out.append(Example(image_id=value, subject=subject.name))
    return out


@router.delete("/faces/{image}", dependencies=[CanWrite])
def delete_example(image: str, faces: Collection) -> Example:
    """Delete one example by image id (404 if there is none)."""
    fid = face_id(image)
    subject = faces.owner(fid)
    faces.gallery.delete_face(fid)
    return Example(image_id=image, subject=subject.name)


def example_image(state: State, image: str) -> Response:
    """An example's kept photo, else its face chip (kept by default); empty bytes when there is
    neither (as CompreFace answers)."""
    try:
        data = state.gallery.face_photo(face_id(image))
    except FaceNotFound:
        try:
            data = state.gallery.face_chip(face_id(image))
        except FaceNotFound:
            data = b""
    return Response(
        data,
        media_type=media_type(data) if data else "application/octet-stream",
        headers={"Cache-Control": "no-store"},
    )


@router.get("/faces/{image}/img", dependencies=[CanRead], response_class=Response)
def download_example(image: str, state: State) -> Response:
    """Download an example's image (its photo with privacy.keep_images on, else its face
    chip)."""
    return example_image(state, image)


@router.post("/faces/{image}/verify", dependencies=[CanRead], response_model_exclude_none=True)
def verify_example(
    image: str,
    state: State,
    faces: Collection,
    images: FileImage,
    options: Options,
    detect_faces: DetectFaces = True,
) -> FacesResponse:
    """Compare the faces of an image with one saved example."""
    rec = state.recognition
    stored = stored_embedding(rec, faces, face_id(image))
    started = time.perf_counter()
    found = options.select(rec.embed(images["file"], aligned=not detect_faces))
    if not found:
        raise NoFace(NO_FACE)
    elapsed = (time.perf_counter() - started) * 1000
    sim = scale(rec)
    result = []
    for face in found:
        item = present(face, options, elapsed)
        item.similarity = sim.similarity(float(stored @ face.embedding))
        result.append(item)
    result.sort(key=lambda r: -(r.similarity or 0.0))
    return FacesResponse(result=result, plugins_versions=plugins_versions(rec, options))


def stored_embedding(rec: Recognition, faces: Collection, fid: int) -> np.ndarray:
    """The embedding of one saved example; FaceNotFound."""
    subject = faces.owner(fid)
    ids, vectors = rec.gallery.subject_embeddings(subject.id, model_id=rec.pipeline.model_id)
    rows = np.flatnonzero(np.asarray(ids) == fid)
    if len(rows) == 0:
        raise FaceNotFound(f"no usable embedding for image id {image_id(fid)}")
    return np.asarray(vectors[int(rows[0])])


# ---- recognize


@router.post("/recognize", dependencies=[CanRead], response_model_exclude_none=True)
def recognize(
    state: State,
    images: FileImage,
    options: Options,
    prediction_count: PredictionCount = 1,
    detect_faces: DetectFaces = True,
) -> FacesResponse:
    """Who are the faces of an image: for each, the most similar subjects (the same search as
    /v1/identify, its cosine mapped to CompreFace's similarity)."""
    rec = state.recognition
    started = time.perf_counter()
    identified, _ = rec.identify(images["file"], top_k=prediction_count, aligned=not detect_faces)
    elapsed = (time.perf_counter() - started) * 1000
    by_face = {id(f.face): f for f in identified}
    chosen = options.select([f.face for f in identified])
    if not chosen:
        raise NoFace(NO_FACE)
    sim = scale(rec)
    result = []
    for face in chosen:
        item = present(face, options, elapsed)
        item.subjects = [
            SubjectSimilarity(subject=c.name, similarity=sim.similarity(c.score))
            for c in by_face[id(face)].candidates
        ]
        result.append(item)
    return FacesResponse(result=result, plugins_versions=plugins_versions(rec, options))


# ---- by embedding


def unit_rows(rec: Recognition, embeddings: list[list[float]]) -> np.ndarray:
    """Embeddings as unit rows of the recognizer's dimension; InvalidRequest otherwise."""
    dim = rec.pipeline.embedder.embedding_dim
    if any(len(e) != dim for e in embeddings):
        raise InvalidRequest(f"every embedding must have {dim} values (the running recognizer's)")
    rows = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.all(np.isfinite(rows)) or np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise InvalidRequest("embeddings must be finite and not all zero")
    return (rows / norms).astype(np.float32)


@router.post("/embeddings/recognize", dependencies=[CanRead])
def recognize_embeddings(
    state: State, body: EmbeddingsBody, prediction_count: PredictionCount = 1
) -> EmbeddingsRecognition:
    """The most similar subjects of each embedding."""
    rec = state.recognition
    rows = unit_rows(rec, body.embeddings)
    rec.gallery.check_model(rec.pipeline.model_id)
    ranked = [found for found, _ in rec.rank(rows, prediction_count)]  # negatives veto here too
    sim = scale(rec)
    return EmbeddingsRecognition(
        result=[
            EmbeddingSimilarities(
                embedding=given,
                similarities=[
                    SubjectSimilarity(subject=c.name, similarity=sim.similarity(c.score))
                    for c in candidates
                ],
            )
            for given, candidates in zip(body.embeddings, ranked, strict=True)
        ]
    )


@router.post("/embeddings/faces/{image}/verify", dependencies=[CanRead])
def verify_embeddings(
    image: str, state: State, faces: Collection, body: EmbeddingsBody
) -> EmbeddingsVerification:
    """Similarity of each embedding with one saved example."""
    rec = state.recognition
    stored = stored_embedding(rec, faces, face_id(image))
    rows = unit_rows(rec, body.embeddings)
    sim = scale(rec)
    return EmbeddingsVerification(
        result=[
            EmbeddingSimilarity(embedding=given, similarity=sim.similarity(float(row @ stored)))
            for given, row in zip(body.embeddings, rows, strict=True)
        ]
    )
