"""Face detection with 5 landmarks: the detector protocol, the shared pre- and post-processing,
and the registry of decoders keyed by the manifest's ``detector.decoder``.

A decoder turns one ONNX detector's raw outputs into boxes, scores and landmarks; everything
around it (resizing, padding and normalising as the manifest says, score threshold, NMS,
clipping, the minimum face size) is done once here, so every detector behaves alike. The
decoders live in ``service.vision.detectors`` (retinaface, yunet, scrfd); a new one is a module
with an ``OnnxDetector`` subclass and a ``register_detector`` call.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from service.errors import ModelError
from service.models import DetectorSpec, Manifest
from service.vision.runtime import Device, create_session, providers_in_use


@dataclass(frozen=True)
class DetectedFace:
    """One face: box (x1, y1, x2, y2) in image pixels, 5 landmarks (5, 2) in the ArcFace order
    (left eye, right eye, nose, left and right mouth corner, as seen in the image), score."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray = field(repr=False)
    score: float

    @property
    def area(self) -> float:
        """Box area in pixels, for the 'largest face' policy."""
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """The shorter box side in pixels, for the minimum face size."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass(frozen=True)
class DetectorOptions:
    """Runtime knobs of detection (all settable per deployment: ``DetectorSettings``)."""

    score_threshold: float = 0.6
    nms_iou: float = 0.4
    min_face_px: float = 12.0
    max_side_px: int = 960
    upscale_below_px: int = 0  # small images are enlarged to this long side: finer landmarks
    max_faces: int = 64


class FaceDetector(Protocol):
    """What the pipeline needs of a detector."""

    manifest: Manifest
    options: DetectorOptions

    @property
    def providers(self) -> list[str]:
        """Execution providers in use."""

    def detect(
        self, image: np.ndarray, options: DetectorOptions | None = None
    ) -> list[DetectedFace]:
        """All faces in an RGB uint8 image, best score first, in image coordinates."""


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


def nearest_to_centre(faces: list[DetectedFace], width: int, height: int) -> DetectedFace:
    """The face whose box centre is nearest the image centre (LFW's labelled person)."""
    centre = np.array([width / 2, height / 2])
    return min(
        faces,
        key=lambda f: float(
            np.linalg.norm((np.array(f.box[:2]) + np.array(f.box[2:])) / 2 - centre)
        ),
    )


@dataclass(frozen=True)
class Decoded:
    """A decoder's candidates in the network's input frame: (n, 4) boxes x1 y1 x2 y2, (n,)
    scores, (n, 5, 2) landmarks. Only candidates at or above the score threshold."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @staticmethod
    def empty() -> Decoded:
        """No candidates."""
        return Decoded(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


class OnnxDetector(ABC):
    """An ONNX face detector with 5-point landmarks, fed and decoded as its manifest says."""

    def __init__(
        self,
        manifest: Manifest,
        weights: Path,
        *,
        device: Device = "auto",
        intra_op_threads: int = 0,
        options: DetectorOptions | None = None,
    ) -> None:
        if manifest.detector is None:
            raise ValueError(f"{manifest.name} is not a detection model")
        self.manifest = manifest
        self.spec: DetectorSpec = manifest.detector
        self.options = options or DetectorOptions()
        self.session = create_session(weights, device=device, intra_op_threads=intra_op_threads)
        self._input_name = self.session.get_inputs()[0].name
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._mean = np.asarray(manifest.input.mean, dtype=np.float32)
        self._std = np.asarray(manifest.input.std, dtype=np.float32)
        self.check_outputs()

    def check_outputs(self) -> None:  # noqa: B027 - optional for a decoder
        """Refuse at load time a graph whose outputs the decoder cannot read (ModelError)."""

    @property
    def providers(self) -> list[str]:
        """Execution providers in use."""
        return providers_in_use(self.session)

    @abstractmethod
    def decode(
        self, outputs: list[np.ndarray], height: int, width: int, threshold: float
    ) -> Decoded:
        """Candidates from the raw outputs of one (1, 3, height, width) input."""

    def detect(
        self, image: np.ndarray, options: DetectorOptions | None = None
    ) -> list[DetectedFace]:
        """All faces in an RGB uint8 image, best score first, in original image coordinates."""
        opts = options or self.options
        tensor, scale = self._preprocess(image, opts.max_side_px, opts.upscale_below_px)
        outputs = self.session.run(None, {self._input_name: tensor})
        height, width = tensor.shape[2:]
        found = self.decode(list(outputs), height, width, opts.score_threshold)
        if len(found.scores) == 0:
            return []
        boxes = found.boxes / scale
        landmarks = found.landmarks / scale
        keep = nms(boxes, found.scores, opts.nms_iou)
        faces = []
        img_h, img_w = image.shape[:2]
        for i in keep:
            x1, y1, x2, y2 = boxes[i]
            box = (
                float(np.clip(x1, 0, img_w)),
                float(np.clip(y1, 0, img_h)),
                float(np.clip(x2, 0, img_w)),
                float(np.clip(y2, 0, img_h)),
            )
            face = DetectedFace(
                box=box, landmarks=landmarks[i].astype(np.float32), score=float(found.scores[i])
            )
            if face.size >= opts.min_face_px:
                faces.append(face)
            if len(faces) >= opts.max_faces:
                break
        return faces

    def _preprocess(
        self, image: np.ndarray, max_side: int, upscale_below: int
    ) -> tuple[np.ndarray, float]:
        """Resize so the long side fits, pad to the stride multiple, normalise per the manifest.

        Each channel is normalised straight into its plane of the padded (1, 3, H, W) tensor:
        no whole float copies of the image, no transposed view for ONNX Runtime to copy again
        (the same values as ``(image - mean) / std``; for a 250x250 photo 0.16 ms of CPU
        instead of 1.4 ms, beside the graph's 5.4 ms: bench/request_profile.py)."""
        h, w = image.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        if max(h, w) < upscale_below:
            scale = upscale_below / max(h, w)
        if scale != 1.0:
            interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
            image = cv2.resize(
                image, (round(w * scale), round(h * scale)), interpolation=interpolation
            )
        pad = self.spec.pad_to
        rh, rw = image.shape[:2]
        ph, pw = -(-rh // pad) * pad, -(-rw // pad) * pad
        tensor = np.zeros((1, 3, ph, pw), dtype=np.float32)  # zero after normalising = mean colour
        sources = (2, 1, 0) if self.manifest.input.color_order == "BGR" else (0, 1, 2)
        for channel, source in enumerate(sources):
            plane = tensor[0, channel, :rh, :rw]
            np.subtract(image[:, :, source], self._mean[channel], out=plane, dtype=np.float32)
            np.divide(plane, self._std[channel], out=plane)
        return tensor, scale


DetectorFactory = Callable[..., OnnxDetector]
_DECODERS: dict[str, type[OnnxDetector]] = {}


def register_detector(decoder: str, cls: type[OnnxDetector]) -> None:
    """Make a decoder available to manifests as ``detector.decoder``; one class per name."""
    if decoder in _DECODERS and _DECODERS[decoder] is not cls:
        raise ValueError(f"detector decoder {decoder!r} is already registered")
    _DECODERS[decoder] = cls


def list_detectors() -> list[str]:
    """The registered decoder names."""
    importlib.import_module("service.vision.detectors")
    return sorted(_DECODERS)


def create_detector(
    manifest: Manifest,
    weights: Path,
    *,
    device: Device = "auto",
    intra_op_threads: int = 0,
    options: DetectorOptions | None = None,
) -> OnnxDetector:
    """The detector a manifest describes; ModelError for a decoder nobody registered."""
    importlib.import_module("service.vision.detectors")
    if manifest.detector is None:
        raise ModelError(f"{manifest.name} is not a detection model")
    cls = _DECODERS.get(manifest.detector.decoder)
    if cls is None:
        raise ModelError(
            f"{manifest.name} needs the detector decoder {manifest.detector.decoder!r}; "
            f"registered: {list_detectors()}"
        )
    return cls(manifest, weights, device=device, intra_op_threads=intra_op_threads, options=options)
