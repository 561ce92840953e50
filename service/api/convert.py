"""Domain objects to response models (one place, so routes stay one-liners)."""

from __future__ import annotations

from service.gallery import Candidate, FaceRecord, Subject
from service.recognition import IdentifiedFace, Threshold
from service.schemas import (
    Box,
    CandidateOut,
    FaceOut,
    IdentifiedFaceOut,
    SubjectOut,
    ThresholdOut,
)
from service.vision.detection import DetectedFace
from service.vision.pipeline import Face


def box(face: Face | DetectedFace) -> Box:
    """Box, landmarks and score of a face."""
    return Box(
        box=[round(float(v), 2) for v in face.box],
        landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
        score=round(float(face.score), 4),
    )


def subject(s: Subject) -> SubjectOut:
    """A subject."""
    return SubjectOut(
        id=s.id, name=s.name, metadata=s.metadata, created_at=s.created_at, face_count=s.face_count
    )


def face_record(f: FaceRecord) -> FaceOut:
    """An enrolled face."""
    return FaceOut(
        id=f.id,
        subject_id=f.subject_id,
        model_id=f.model_id,
        box=f.box,
        det_score=f.det_score,
        image_sha256=f.image_sha256,
        created_at=f.created_at,
    )


def candidate(c: Candidate) -> CandidateOut:
    """A search candidate."""
    return CandidateOut(
        subject_id=c.subject_id, name=c.name, face_id=c.face_id, score=round(c.score, 6)
    )


def threshold(t: Threshold) -> ThresholdOut:
    """The threshold used."""
    return ThresholdOut(value=t.value, source=t.source)


def identified(f: IdentifiedFace) -> IdentifiedFaceOut:
    """One identified face."""
    return IdentifiedFaceOut(
        detection=box(f.face),
        decision="match" if f.match else "unknown",
        match=candidate(f.match) if f.match else None,
        candidates=[candidate(c) for c in f.candidates],
    )
