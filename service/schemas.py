"""Request and response models of REST API v1 (they become the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.subject_id import SUBJECT_ID_PATTERN

#: the id rule is enforced in one place (``service.subject_id``, through the gallery), so every
#: route answers the same 422 ``invalid_subject_id``; the schema only documents it
SUBJECT_ID_FIELD: dict[str, Any] = {"pattern": f"^{SUBJECT_ID_PATTERN}$"}
# a name is free text, but without NUL (no database text type holds it; it is never meant)
NAME_PATTERN = r"^[^\x00]*$"


class ErrorBody(BaseModel):
    """The one error format."""

    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """Every failure answers with this body."""

    error: ErrorBody


class SubjectCreate(BaseModel):
    """A new subject; the id is generated when omitted."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None, description="letters, digits, . _ @ -", json_schema_extra=SUBJECT_ID_FIELD
    )
    name: str = Field(..., min_length=1, max_length=256, pattern=NAME_PATTERN)
    metadata: dict[str, Any] = Field(default_factory=dict)


class SubjectUpdate(BaseModel):
    """Fields to change; omitted ones stay."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=256, pattern=NAME_PATTERN)
    metadata: dict[str, Any] | None = None


class SubjectOut(BaseModel):
    """A subject as the API returns it."""

    id: str
    name: str
    metadata: dict[str, Any]
    created_at: float
    face_count: int


class SubjectPage(BaseModel):
    """A page of subjects."""

    items: list[SubjectOut]
    total: int
    offset: int
    limit: int


class PoseOut(BaseModel):
    """Head pose from the 5 landmarks, in degrees (0, 0, 0: frontal, upright)."""

    yaw: float
    pitch: float
    roll: float


class QualityOut(BaseModel):
    """How good this face is for recognition, in [0, 1]: the weighted geometric mean of its
    factors (each in [0, 1]); the raw measurements behind them beside it."""

    score: float
    factors: dict[str, float] = Field(
        description="size, sharpness, pose, detection, recognizability (docs/benchmarks.md)"
    )
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="each factor's weight in the score (0: shown, but the score ignores it)",
    )
    weakest: str = Field(
        description="the weighted factor (weight > 0) that pulls the score down most; a factor "
        "of weight 0 can be lower and still not count"
    )
    pose: PoseOut
    interocular_px: float
    sharpness: float = Field(description="variance of the Laplacian of the aligned crop")
    feature_norm: float | None = Field(
        None, description="the recognizer's feature norm before normalisation"
    )


class Box(BaseModel):
    """A detected face: box (x1, y1, x2, y2), 5 landmarks, detection score, quality."""

    box: list[float]
    landmarks: list[list[float]]
    score: float
    quality: QualityOut | None = None


class UsedFace(Box):
    """The face verify or enroll used, and what else the image held."""

    faces_found: int = Field(description="faces in the image (non-faces not counted)")
    not_faces: int = Field(0, description="detections refused as not being faces")


class FaceOut(BaseModel):
    """An enrolled face."""

    id: int
    subject_id: str
    model_id: str
    box: list[float]
    det_score: float
    image_sha256: str
    created_at: float


class EnrolledFace(BaseModel):
    """The outcome of enrolling one image."""

    face_id: int
    created: bool = Field(description="false when this image was already enrolled (same sha256)")
    detection: UsedFace


class EnrollResponse(BaseModel):
    """The outcome of enrolling a batch of images (all or nothing)."""

    subject_id: str
    model_id: str
    faces: list[EnrolledFace]


class SubjectDeleted(BaseModel):
    """What deleting a subject removed (named fields: a bare ``deleted`` read like a count)."""

    subject_id: str = Field(description="the subject that was deleted")
    faces_deleted: int = Field(description="how many of its faces were deleted with it")


class FaceDeleted(BaseModel):
    """What deleting a face removed (named fields: a bare ``deleted`` read like a count)."""

    face_id: int = Field(description="the face that was deleted")
    faces_deleted: int = Field(description="always 1")


class ThresholdOut(BaseModel):
    """The threshold used and where it came from."""

    value: float
    source: str


class VerifyResponse(BaseModel):
    """Are these the same person?"""

    score: float = Field(description="cosine similarity in [-1, 1]")
    threshold: ThresholdOut
    match: bool
    model_id: str
    face_a: UsedFace
    face_b: UsedFace | None = None
    subject_id: str | None = None
    matched_face_id: int | None = None


class CandidateOut(BaseModel):
    """A subject resembling the probe face: its best face (``face_id``, ``score``) and how
    many of its faces reach the threshold (``agreeing``)."""

    subject_id: str
    name: str
    face_id: int
    score: float
    agreeing: int | None = None


class VetoedOut(BaseModel):
    """A subject dropped from the candidates by its negative examples ("not this person"):
    the probe is at least as close to one of them (``negative``) as to the subject's best
    face (``score``)."""

    subject_id: str
    name: str
    score: float = Field(description="cosine to the subject's best face")
    negative: float = Field(description="cosine to the nearest of its negatives (>= score)")


class IdentifiedFaceOut(BaseModel):
    """One face of the probe image and the open-set decision: ``match``, ``ambiguous`` (the
    best subject beat the runner-up by less than the margin: both are in ``ambiguous``, no
    match) or ``unknown``. Subjects vetoed by their negatives are not candidates: they are
    listed in ``vetoed``."""

    detection: Box
    decision: Literal["match", "ambiguous", "unknown"]
    match: CandidateOut | None
    ambiguous: list[CandidateOut] = []
    candidates: list[CandidateOut]
    vetoed: list[VetoedOut] = []


class NegativeOut(BaseModel):
    """A negative example of a subject ("not this person"): kept as an embedding only."""

    id: int
    subject_id: str
    source: Literal["probe", "face"] = Field(
        description="probe: an identify photo's face (only its embedding is kept); face: a "
        "gallery face (face_id; erased with it) or a cluster job's face"
    )
    face_id: int | None = None
    model_id: str
    created_at: float


class NegativeAdded(NegativeOut):
    """A negative example stored (201), or the one stored before for the same face (200,
    ``created: false``)."""

    created: bool
    detection: Box | None = Field(
        default=None, description="the face of the photo that was used (photo requests)"
    )


class NegativeList(BaseModel):
    """A subject's negative examples, oldest first, and how many it may hold."""

    subject_id: str
    negatives: list[NegativeOut]
    limit: int


class NegativeDeleted(BaseModel):
    """What deleting a negative example removed."""

    negative_id: int
    negatives_deleted: int = Field(description="always 1")


class NotSubjectIn(BaseModel):
    """The subject a cluster member is not (default: the subject the cluster was named)."""

    model_config = ConfigDict(extra="forbid")

    subject_id: str | None = Field(None, json_schema_extra=SUBJECT_ID_FIELD)


class NotSubjectOut(BaseModel):
    """What saying "not this person" of a cluster member did: the negative example stored, and
    the gallery face erased from the subject when a naming had enrolled it."""

    subject_id: str
    cluster: int
    face: int
    negative_id: int
    erased_face_id: int | None = None


class IdentifyResponse(BaseModel):
    """Every face in the image with its candidate subjects (top-k by subject)."""

    model_id: str
    threshold: ThresholdOut
    margin: float | None = None
    faces: list[IdentifiedFaceOut]


class DetectResponse(BaseModel):
    """Faces found."""

    width: int
    height: int
    faces: list[Box]


class EmbeddedFace(Box):
    """A face with its unit-length embedding."""

    embedding: list[float]


class EmbedResponse(BaseModel):
    """Embeddings of every face."""

    model_id: str
    embedding_dim: int
    faces: list[EmbeddedFace]


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """What is loaded and where it runs."""

    status: Literal["ready"]
    detector: dict[str, Any]
    recognizer: dict[str, Any]
    gallery: dict[str, Any]
    batching: dict[str, Any] | None = None


class JobProgress(BaseModel):
    """How far a batch job has come."""

    done: int
    total: int
    images_per_s: float | None = None
    eta_s: float | None = None


class JobOut(BaseModel):
    """A batch job; ``summary`` has the per-outcome counts and file lists when done (a cluster
    job: its counts; the clusters are at ``/v1/jobs/{id}/clusters``)."""

    id: str
    kind: Literal["index", "cluster"]
    source: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: JobProgress
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    expires_at: float | None = None


class ClusterFaceOut(BaseModel):
    """One face of a cluster job (its thumbnail: ``/v1/jobs/{id}/faces/{face}.jpg``)."""

    face: int
    file: str
    box: list[float]
    quality: float
    similarity: float | None = None


class LooksLikeOut(BaseModel):
    """The gallery subject a cluster not yet named looks like: up to five of its members (the
    representative and the closest to its centre, ``checked``) are each decided as an identify
    decides (the server's identify FAR, margin and "not this person" negatives; a subject a
    member was said not to be is never suggested); the subject most are matched to."""

    subject_id: str
    name: str
    similarity: float = Field(description="the best cosine of a member matched to the subject")
    agreeing: int = Field(description="how many of the checked members are matched to it")
    checked: int = Field(description="how many members were compared with the gallery")
    far: float | None = Field(
        description="the calibrated FAR of ``similarity``: the strictest calibrated operating "
        "point it reaches (how often a stranger scores as high, per comparison)"
    )
    threshold: ThresholdOut = Field(description="the identify threshold each member had to reach")


class ClusterOut(BaseModel):
    """One cluster: its faces by similarity to its centre, a representative, its cohesion
    (mean similarity to the centre), the subject it was named into, if any, and else the
    gallery subject it looks like, if any (computed when read)."""

    cluster: int
    size: int
    cohesion: float
    representative: ClusterFaceOut
    members: list[ClusterFaceOut]
    subject_id: str | None = None
    looks_like: LooksLikeOut | None = None


class ClustersOut(BaseModel):
    """A cluster job's clusters (largest first) and the faces in none."""

    faces: int
    clusters: list[ClusterOut]
    alone: list[ClusterFaceOut]
    threshold: float
    far: float | None
    algorithm: str


class NameClusterIn(BaseModel):
    """Name a cluster into the gallery: a new subject, or more faces for an existing one."""

    model_config = ConfigDict(extra="forbid")
    subject_id: str = Field(json_schema_extra=SUBJECT_ID_FIELD)
    name: str | None = Field(None, max_length=256)


class NamedClusterOut(BaseModel):
    """What naming a cluster enrolled."""

    subject_id: str
    cluster: int
    face_ids: list[int]
    already_present: int


class MergeClustersIn(BaseModel):
    """Two clusters of one job: the second's faces join the first."""

    model_config = ConfigDict(extra="forbid")
    into: int
    other: int


class OperatingPoint(BaseModel):
    """A calibrated FAR and the cosine threshold that gives it."""

    far: float
    threshold: float


class ModelInfo(BaseModel):
    """The recognizer in use and its calibrated operating points (for clients and the console)."""

    model_id: str
    name: str
    licence: str
    embedding_dim: int
    recommended_threshold: ThresholdOut | None
    calibration_dataset: str | None
    operating_points: list[OperatingPoint]
    default_verify_far: float | None
    default_identify_far: float | None
