"""The face pipeline: decode, detect, align on 5 landmarks, embed, L2-normalise.

Training's data preparation and the service both run faces through this one class, so the crops a
model was trained on are the crops it is served.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from service.errors import ModelError, MultipleFaces, NoFace
from service.vision.alignment import align_face
from service.vision.batcher import MicroBatcher
from service.vision.detection import DetectedFace, Detector, DetectorOptions
from service.vision.embedding import Embedder

EnrollPolicy = Literal["largest", "reject"]
StageObserver = Callable[[str, float], None]


@dataclass(frozen=True)
class Face:
    """A detected (or given) face with its embedding."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray = field(repr=False)
    score: float
    embedding: np.ndarray = field(repr=False)

    def to_dict(self, *, with_embedding: bool = False) -> dict[str, object]:
        """JSON-ready view: box as x1, y1, x2, y2; landmarks as 5 [x, y] pairs."""
        out: dict[str, object] = {
            "box": [round(v, 2) for v in self.box],
            "landmarks": np.round(self.landmarks, 2).tolist(),
            "score": round(self.score, 4),
        }
        if with_embedding:
            out["embedding"] = self.embedding.tolist()
        return out


class FacePipeline:
    """Detector plus embedder; stateless apart from the ONNX sessions, safe to share.

    With a ``batcher`` the embedding of concurrent callers is batched; ``observe`` receives
    (stage, seconds) for detect, align and embed, so metrics stay outside this framework-free
    package.
    """

    def __init__(
        self,
        detector: Detector,
        embedder: Embedder,
        *,
        batcher: MicroBatcher | None = None,
        observe: StageObserver | None = None,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.batcher = batcher
        self.observe = observe

    def timed(self, stage: str, started: float) -> None:
        """Report a stage's duration to the observer (metrics), if any."""
        if self.observe is not None:
            self.observe(stage, time.perf_counter() - started)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed aligned crops, through the micro-batcher when there is one."""
        started = time.perf_counter()
        if self.batcher is not None:
            vectors = self.batcher.embed(crops)
        else:
            vectors = self.embedder.embed(list(crops))
        self.timed("embed", started)
        return vectors

    def self_check(self) -> None:
        """Run both models once (a blank image, a blank crop) so that a device that loads a model
        but cannot run it fails at start-up, not on the first request. Raises ModelError."""
        try:
            self.detector.detect(np.zeros((64, 64, 3), dtype=np.uint8))
            w, h = self.embedder.input_size
            vector = self.embedder.embed([np.zeros((h, w, 3), dtype=np.uint8)])
        except Exception as exc:  # ORT raises untyped errors
            raise ModelError(
                f"start-up self-check failed on {self.embedder.providers[0]}: {exc}"
            ) from exc
        if vector.shape != (1, self.embedder.embedding_dim) or not np.isfinite(vector).all():
            raise ModelError(f"start-up self-check: the recognizer returned {vector.shape}")

    def close(self) -> None:
        """Stop the batcher's worker thread, if any."""
        if self.batcher is not None:
            self.batcher.close()

    @property
    def model_id(self) -> str:
        """The recognizer's id; embeddings are only comparable within one model id."""
        return self.embedder.model_id

    def detect(
        self, image: np.ndarray, options: DetectorOptions | None = None
    ) -> list[DetectedFace]:
        """Boxes, landmarks and scores of every face, best score first."""
        started = time.perf_counter()
        detections = self.detector.detect(image, options)
        self.timed("detect", started)
        return detections

    def analyze(self, image: np.ndarray, options: DetectorOptions | None = None) -> list[Face]:
        """Every face in the image with its embedding (one batched embedder run)."""
        return self.embed_detections(image, self.detect(image, options))

    def embed_detections(self, image: np.ndarray, detections: list[DetectedFace]) -> list[Face]:
        """Align and embed given detections in one batch."""
        if not detections:
            return []
        started = time.perf_counter()
        crops = [self.align(image, d.landmarks) for d in detections]
        self.timed("align", started)
        vectors = self.embed_crops(crops)
        return [
            Face(box=d.box, landmarks=d.landmarks, score=d.score, embedding=v)
            for d, v in zip(detections, vectors, strict=True)
        ]

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The aligned crop the recognizer expects (template and size from its manifest)."""
        return align_face(
            image, landmarks, template=self.embedder.template, size=self.embedder.input_size
        )

    def embed_aligned(self, image: np.ndarray) -> Face:
        """Treat the whole image as an already aligned crop (detection skipped)."""
        h, w = image.shape[:2]
        tw, th = self.embedder.input_size
        sx, sy = w / tw, h / th
        landmarks = (self.embedder.template * np.array([sx, sy])).astype(np.float32)
        vector = self.embed_crops([image])[0]
        return Face(
            box=(0.0, 0.0, float(w), float(h)), landmarks=landmarks, score=1.0, embedding=vector
        )

    def single_face(
        self,
        image: np.ndarray,
        *,
        policy: EnrollPolicy = "largest",
        aligned: bool = False,
        options: DetectorOptions | None = None,
    ) -> Face:
        """The one face to enroll or verify: the largest, or an error if the policy is 'reject'.

        Raises NoFace, or MultipleFaces under the 'reject' policy.
        """
        if aligned:
            return self.embed_aligned(image)
        detections = self.detect(image, options)
        if not detections:
            raise NoFace("no face was found in the image")
        if len(detections) > 1 and policy == "reject":
            raise MultipleFaces(
                f"{len(detections)} faces were found and the policy is 'reject'; send a photo "
                "with one face or use multiple_faces=largest",
                faces=len(detections),
            )
        largest = max(detections, key=lambda d: d.area)
        return self.embed_detections(image, [largest])[0]
