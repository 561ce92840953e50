"""The face pipeline: decode, detect, align on 5 landmarks, embed, L2-normalise.

Training's data preparation and the service both run faces through this one class, so the crops a
model was trained on are the crops it is served.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from service.errors import LowQuality, ModelError, MultipleFaces, NoFace
from service.evaluation import iou_matrix
from service.vision.alignment import align_face
from service.vision.batcher import MicroBatcher
from service.vision.detection import DetectedFace, DetectorOptions, FaceDetector
from service.vision.embedding import Embedder
from service.vision.quality import FACTOR_ADVICE, FaceQuality, assess, check_validity

EnrollPolicy = Literal["largest", "reject"]
StageObserver = Callable[[str, float], None]
#: verify and enroll judge at most this many of an image's largest detections
CHOICE_CANDIDATES = 5
#: ``centrality`` at half the shorter side from the centre and beyond. CelebA-299's photos with
#: several faces (bench/face_choice.py: the labelled person's face, found by identity) cannot
#: tell floors 1 to 0.4 apart (205 of 206 chosen) and lose one more at 0.25; 0.5 is the
#: strongest prior with a margin from there (insightface's own prior, area - 2 x offset², is
#: stronger still). LFW, looked at too: the central face in 2,252 of its 2,255 photos with
#: several faces (2,248 at 0.75)
CENTRE_FLOOR = 0.5


@dataclass(frozen=True)
class Face:
    """A detected (or given) face with its embedding and quality."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray = field(repr=False)
    score: float
    embedding: np.ndarray = field(repr=False)
    quality: FaceQuality | None = None

    def to_dict(self, *, with_embedding: bool = False) -> dict[str, object]:
        """JSON-ready view: box as x1, y1, x2, y2; landmarks as 5 [x, y] pairs."""
        out: dict[str, object] = {
            "box": [round(v, 2) for v in self.box],
            "landmarks": np.round(self.landmarks, 2).tolist(),
            "score": round(self.score, 4),
        }
        if self.quality is not None:
            out["quality"] = self.quality.to_dict()
        if with_embedding:
            out["embedding"] = self.embedding.tolist()
        return out

    @property
    def area(self) -> float:
        """Box area in pixels."""
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


@dataclass(frozen=True)
class Chosen:
    """The face verify or enroll uses, and what the image held."""

    face: Face
    faces_found: int  # faces in the image (not counting detections refused as non-faces)
    not_faces: int = 0  # detections refused as non-faces


class SecondOpinion:
    """The second detector's best score on a box (0: it finds nothing there), for validity.

    It detects once per image, with a low threshold, and only when first asked: clear faces
    never pay for it. Small images are enlarged to 640 px, the size YuNet is trained at (without
    it, YuNet misses small faces that RetinaFace finds: bench/face_validity.py)."""

    OPTIONS = DetectorOptions(
        score_threshold=0.3, min_face_px=4, max_side_px=1280, upscale_below_px=640
    )
    MIN_IOU = 0.3

    def __init__(self, detector: FaceDetector, image: np.ndarray) -> None:
        self.detector = detector
        self.image = image
        self._found: list[DetectedFace] | None = None

    def score(self, box: tuple[float, float, float, float]) -> float:
        """The best score among the second detector's boxes overlapping ``box``."""
        if self._found is None:
            self._found = self.detector.detect(self.image, self.OPTIONS)
        if not self._found:
            return 0.0
        ious = iou_matrix(np.asarray([box]), np.asarray([s.box for s in self._found]))[0]
        hits = [self._found[j].score for j in np.flatnonzero(ious >= self.MIN_IOU)]
        return max(hits) if hits else 0.0


class FacePipeline:
    """Detector plus embedder; stateless apart from the ONNX sessions, safe to share.

    With a ``batcher`` the embedding of concurrent callers is batched; ``observe`` receives
    (stage, seconds) for detect, align and embed, so metrics stay outside this framework-free
    package.
    """

    def __init__(
        self,
        detector: FaceDetector,
        embedder: Embedder,
        *,
        batcher: MicroBatcher | None = None,
        observe: StageObserver | None = None,
        second_detector: FaceDetector | None = None,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.batcher = batcher
        self.observe = observe
        self.second_detector = second_detector  # asked only when validity leaves a doubt
        self.validity = embedder.manifest.validity if second_detector is not None else None

    def timed(self, stage: str, started: float) -> None:
        """Report a stage's duration to the observer (metrics), if any."""
        if self.observe is not None:
            self.observe(stage, time.perf_counter() - started)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed aligned crops, through the micro-batcher when there is one."""
        return self.embed_crops_with_norms(crops)[0]

    def embed_crops_with_norms(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Unit embeddings and feature norms of aligned crops (micro-batched when configured)."""
        started = time.perf_counter()
        if self.batcher is not None:
            packed = self.batcher.embed(crops)
        else:
            packed = self.embedder.embed_packed(list(crops))
        self.timed("embed", started)
        return np.ascontiguousarray(packed[:, :-1]), packed[:, -1]

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

    def adopt(self, other: FacePipeline) -> None:
        """Take over another pipeline's models (a service switching its gallery to another
        recognizer, with no request in flight); the batcher replaced is stopped, the observers
        stay."""
        old = self.batcher
        if other.batcher is not None and old is not None:
            other.batcher.on_batch = old.on_batch
        self.detector, self.embedder, self.batcher = other.detector, other.embedder, other.batcher
        self.second_detector, self.validity = other.second_detector, other.validity
        if old is not None and old is not self.batcher:
            old.close()

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
        """Every face in the image with its embedding and quality (one batched embedder run);
        detections refused as non-faces (``service.vision.quality.check_validity``) are left
        out."""
        faces = self.embed_detections(image, self.detect(image, options))
        return [f for f in faces if f.quality is None or f.quality.valid]

    def embed_detections(
        self,
        image: np.ndarray,
        detections: list[DetectedFace],
        opinion: SecondOpinion | None = None,
    ) -> list[Face]:
        """Align and embed given detections in one batch, with their quality and validity
        (invalid ones are kept here, marked; ``analyze`` drops them). ``opinion``: the image's
        second detector, when the caller judges the image's detections in several calls."""
        if not detections:
            return []
        started = time.perf_counter()
        crops = [self.align(image, d.landmarks) for d in detections]
        self.timed("align", started)
        vectors, norms = self.embed_crops_with_norms(crops)
        if opinion is None and self.second_detector is not None:
            opinion = SecondOpinion(self.second_detector, image)
        faces = []
        for d, crop, v, n in zip(detections, crops, vectors, norms, strict=True):
            quality = self._quality(d.landmarks, d.score, crop, float(n))
            if self.validity is not None:
                reason = check_validity(
                    self.validity,
                    size_px=d.size,
                    detection_score=d.score,
                    feature_norm=float(n),
                    agreement=lambda d=d: opinion.score(d.box) if opinion else 1.0,  # type: ignore[misc]
                )
                if reason is not None:
                    quality = replace(quality, valid=False, validity_reason=reason)
            faces.append(
                Face(box=d.box, landmarks=d.landmarks, score=d.score, embedding=v, quality=quality)
            )
        return faces

    def _quality(
        self, landmarks: np.ndarray, score: float, crop: np.ndarray, norm: float
    ) -> FaceQuality:
        return assess(
            landmarks,
            score,
            crop,
            norm,
            template=self.embedder.template,
            spec=self.embedder.manifest.quality,
        )

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The aligned crop the recognizer expects (template and size from its manifest)."""
        return align_face(
            image, landmarks, template=self.embedder.template, size=self.embedder.input_size
        )

    def embed_aligned(self, image: np.ndarray) -> Face:
        """Treat the whole image as an already aligned crop (detection skipped: the caller
        vouches that it is a face, so no validity check; its quality is still measured)."""
        h, w = image.shape[:2]
        tw, th = self.embedder.input_size
        sx, sy = w / tw, h / th
        landmarks = (self.embedder.template * np.array([sx, sy])).astype(np.float32)
        vectors, norms = self.embed_crops_with_norms([image])
        crop = self.align(image, landmarks)
        return Face(
            box=(0.0, 0.0, float(w), float(h)),
            landmarks=landmarks,
            score=1.0,
            embedding=vectors[0],
            quality=self._quality(landmarks, 1.0, crop, float(norms[0])),
        )

    def choose_face(
        self,
        image: np.ndarray,
        *,
        policy: EnrollPolicy = "largest",
        aligned: bool = False,
        options: DetectorOptions | None = None,
        min_quality: float = 0.0,
    ) -> Chosen:
        """The one face to enroll or verify, and how many the image held.

        The rule: among the ``CHOICE_CANDIDATES`` largest detections, drop those refused as
        non-faces, then take the face with the highest quality x sqrt(area / largest area) x
        ``centrality``: the main face wins over a larger box that is blurred, turned away, not
        a face, or a bystander at the edge of the frame (the policy's name, ``largest``, is
        kept for compatibility). Raises NoFace, MultipleFaces
        when the policy is 'reject' and more than one real face is found, or LowQuality when
        the chosen face's quality is below ``min_quality`` (enrollment's floor: this is the one
        place it is enforced, for the API and bulk indexing alike)."""
        if aligned:
            return require_quality(Chosen(self.embed_aligned(image), 1), min_quality)
        detections = self.detect(image, options)
        if not detections:
            raise NoFace("no face was found in the image")
        candidates = sorted(detections, key=lambda d: -d.area)[:CHOICE_CANDIDATES]
        judged, unjudged = self._judge(image, candidates, everyone=policy == "reject")
        faces = [f for f in judged if f.quality is None or f.quality.valid]
        found = len(faces) + unjudged + len(detections) - len(candidates)
        refused = len(judged) - len(faces)
        if not faces:
            reason = judged[0].quality.validity_reason if judged[0].quality else None
            raise NoFace(
                f"no face was found in the image ({refused} detection(s) refused: {reason})",
                not_faces=refused,
            )
        if found > 1 and policy == "reject":
            raise MultipleFaces(
                f"{found} faces were found and the policy is 'reject'; send a photo "
                "with one face or use multiple_faces=largest",
                faces=found,
            )
        largest = max(f.area for f in faces)
        h, w = image.shape[:2]

        def score(f: Face) -> float:
            return merit(f, largest, centrality(f.box, w, h))

        return require_quality(Chosen(max(faces, key=score), found, refused), min_quality)

    def _judge(
        self, image: np.ndarray, candidates: list[DetectedFace], *, everyone: bool
    ) -> tuple[list[Face], int]:
        """(embedded and judged candidates, how many were not needed). Candidates come largest
        first; they are judged one at a time until one is a real face, whose area is then the
        reference of ``merit``. A smaller candidate's merit is at most sqrt(area / reference)
        (quality and centrality <= 1), so only those above the best merit so far are embedded,
        in one batch:
        the choice is the same as judging all of them, for a fraction of the embeddings (LFW:
        most photos hold a bystander). ``everyone``: judge all (the 'reject' policy counts
        real faces)."""
        if everyone:
            return self.embed_detections(image, candidates), 0
        judged: list[Face] = []
        opinion = SecondOpinion(self.second_detector, image) if self.second_detector else None
        for i, detection in enumerate(candidates):
            face = self.embed_detections(image, [detection], opinion)[0]
            judged.append(face)
            if face.quality is None or face.quality.valid:
                h, w = image.shape[:2]
                best = merit(face, face.area, centrality(face.box, w, h))
                rest = candidates[i + 1 :]
                hopeful = [d for d in rest if (d.area / max(face.area, 1e-9)) ** 0.5 > best]
                judged += self.embed_detections(image, hopeful, opinion)
                return judged, len(rest) - len(hopeful)
        return judged, 0


def merit(face: Face, largest: float, centrality: float = 1.0) -> float:
    """How much a face is the photo's main face: quality x sqrt(area / the largest real
    face's) x centrality (``centrality``: ``CENTRE_FLOOR`` to 1, 1 at the centre)."""
    quality = face.quality.score if face.quality is not None else 1.0
    return quality * (face.area / max(largest, 1e-9)) ** 0.5 * centrality


def centrality(
    box: tuple[float, float, float, float], width: int, height: int, floor: float = CENTRE_FLOOR
) -> float:
    """1 for a face at the image centre, down to ``floor`` at half the shorter side from it
    and beyond: photographers centre their subject, and a face cut by the frame's edge is rarely
    it (insightface picks its main face by area - 2 x squared offset from the centre; this is
    that prior made independent of the image size, and bounded so that a clearly better face
    off centre still beats a poor central one)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    r = max(min(width, height) / 2, 1.0)
    d2 = ((cx - width / 2) ** 2 + (cy - height / 2) ** 2) / (r * r)
    return 1.0 - (1.0 - floor) * min(1.0, d2)


def require_quality(chosen: Chosen, min_quality: float) -> Chosen:
    """``chosen``, or LowQuality naming the factor that pulled its score below the floor."""
    quality = chosen.face.quality
    if min_quality <= 0.0 or quality is None or quality.score >= min_quality:
        return chosen
    weakest = quality.weakest
    causes = [k for k in quality.low_factors if k != weakest]
    also = "; also low: " + ", ".join(f"{k} {quality.factors[k]:.2f}" for k in causes)
    raise LowQuality(
        f"the face's quality {quality.score:.3f} is below min_quality {min_quality:g}; weakest "
        f"factor: {weakest} ({quality.factors[weakest]:.2f}): {FACTOR_ADVICE[weakest]}"
        + (also + f" ({FACTOR_ADVICE[causes[0]]})" if causes else ""),
        quality=quality.score,
        min_quality=min_quality,
        weakest=weakest,
        low_factors=quality.low_factors,
        factors=quality.factors,
    )
