"""Domain objects to response models (one place, so routes stay one-liners)."""

from __future__ import annotations

from service.gallery import FaceRecord, Negative, Subject
from service.identification import SubjectCandidate, Vetoed
from service.recognition import IdentifiedFace, Threshold
from service.schemas import (
    Box,
    CandidateOut,
    FaceOut,
    IdentifiedFaceOut,
    NegativeOut,
    PoseOut,
    QualityOut,
    SubjectOut,
    ThresholdOut,
    UsedFace,
    VetoedOut,
)
from service.vision.detection import DetectedFace
from service.vision.pipeline import Chosen, Face
from service.vision.quality import FaceQuality


def quality(q: FaceQuality) -> QualityOut:
    """A face's quality and its factors."""
    return QualityOut(
        score=q.score,
        factors=q.factors,
        weights={k: q.weights.get(k, 1.0) for k in q.factors},
        weakest=q.weakest,
        pose=PoseOut(yaw=q.pose.yaw_deg, pitch=q.pose.pitch_deg, roll=q.pose.roll_deg),
        interocular_px=q.interocular_px,
        sharpness=q.sharpness,
        feature_norm=q.feature_norm,
    )


def box(face: Face | DetectedFace) -> Box:
    """Box, landmarks, score and (for an analysed face) quality."""
    q = getattr(face, "quality", None)
    return Box(
        box=[round(float(v), 2) for v in face.box],
        landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
        score=round(float(face.score), 4),
        quality=quality(q) if q is not None else None,
    )


def used(chosen: Chosen) -> UsedFace:
    """The face verify or enroll used, with how many faces the image held."""
    return UsedFace(
        **dict(box(chosen.face)),
        faces_found=chosen.faces_found,
        not_faces=chosen.not_faces,
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


def candidate(c: SubjectCandidate) -> CandidateOut:
    """A candidate subject."""
    return CandidateOut(
        subject_id=c.subject_id,
        name=c.name,
        face_id=c.face_id,
        score=round(c.score, 6),
        agreeing=c.agreeing,
    )


def threshold(t: Threshold) -> ThresholdOut:
    """The threshold used."""
    return ThresholdOut(value=t.value, source=t.source)


def identified(f: IdentifiedFace) -> IdentifiedFaceOut:
    """One identified face."""
    return IdentifiedFaceOut(
        detection=box(f.face),
        decision=f.answer.decision,
        match=candidate(f.match) if f.match else None,
        ambiguous=[candidate(c) for c in f.answer.contenders],
        candidates=[candidate(c) for c in f.candidates],
        vetoed=[vetoed(v) for v in f.vetoed],
    )


def vetoed(v: Vetoed) -> VetoedOut:
    """A subject vetoed by its negatives, with both cosines."""
    return VetoedOut(
        subject_id=v.subject_id,
        name=v.name,
        score=round(v.score, 6),
        negative=round(v.negative, 6),
    )


def negative(n: Negative) -> NegativeOut:
    """A negative example (never its embedding)."""
    return NegativeOut(
        id=n.id,
        subject_id=n.subject_id,
        source=n.source,
        face_id=n.face_id,
        model_id=n.model_id,
        created_at=n.created_at,
    )
