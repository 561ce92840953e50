"""CompreFace's request and response shapes (its field names; optional parts left out when a
plugin was not asked for: routes use ``response_model_exclude_none``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SubjectBody(BaseModel):
    """A subject name, as CompreFace's JSON bodies carry it."""

    subject: str = Field(min_length=1, max_length=512)


class SubjectName(BaseModel):
    subject: str


class SubjectList(BaseModel):
    subjects: list[str]


class Updated(BaseModel):
    updated: bool


class Deleted(BaseModel):
    deleted: int


class Example(BaseModel):
    """One saved example: CompreFace calls a face an example, its id an image id (a UUID)."""

    image_id: str
    subject: str


class ExamplePage(BaseModel):
    faces: list[Example]
    page_number: int
    page_size: int
    total_pages: int
    total_elements: int


class BoxOut(BaseModel):
    probability: float
    x_max: int
    y_max: int
    x_min: int
    y_min: int


class CompreFacePose(BaseModel):
    """Head pose in degrees, from the 5 landmarks (``service.vision.quality``)."""

    pitch: float
    roll: float
    yaw: float


class SubjectSimilarity(BaseModel):
    subject: str
    similarity: float


class FaceResult(BaseModel):
    """One face: its box and what the requested plugins add."""

    box: BoxOut
    landmarks: list[list[int]] | None = None
    embedding: list[float] | None = None
    pose: CompreFacePose | None = None
    subjects: list[SubjectSimilarity] | None = None
    similarity: float | None = None
    execution_time: dict[str, float] | None = None


class FacesResponse(BaseModel):
    """Recognize, detect, and verify-by-example answers."""

    result: list[FaceResult]
    plugins_versions: dict[str, str] | None = None


class VerificationItem(BaseModel):
    source_image_face: FaceResult
    face_matches: list[FaceResult]
    plugins_versions: dict[str, str] | None = None


class VerificationResponse(BaseModel):
    result: list[VerificationItem]


class EmbeddingsBody(BaseModel):
    """Embeddings to recognize or verify (from the ``calculator`` plugin)."""

    embeddings: list[list[float]] = Field(min_length=1, max_length=100)


class EmbeddingPair(BaseModel):
    """A source embedding and the targets to compare it with."""

    source: list[float]
    targets: list[list[float]] = Field(min_length=1, max_length=100)


class EmbeddingSimilarities(BaseModel):
    embedding: list[float]
    similarities: list[SubjectSimilarity]


class EmbeddingsRecognition(BaseModel):
    result: list[EmbeddingSimilarities]


class EmbeddingSimilarity(BaseModel):
    embedding: list[float]
    similarity: float


class EmbeddingsVerification(BaseModel):
    result: list[EmbeddingSimilarity]
