"""Face detection with 5 landmarks: an anchor-based ONNX detector decoded per its manifest."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from service.models import DetectorSpec, Manifest
from service.vision.runtime import Device, create_session, providers_in_use


@dataclass(frozen=True)
class DetectedFace:
    """One face: box (x1, y1, x2, y2) in image pixels, 5 landmarks (5, 2), detection score."""

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
    """Runtime knobs of detection (all settable per deployment)."""

    score_threshold: float = 0.6
    nms_iou: float = 0.4
    min_face_px: float = 12.0
    max_side_px: int = 960
    upscale_below_px: int = 0  # small images are enlarged to this long side: finer landmarks
    max_faces: int = 256


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


def make_anchors(spec: DetectorSpec, height: int, width: int) -> np.ndarray:
    """Anchor centres and sizes (cx, cy, size) in pixels, in the order the model emits them."""
    rows = []
    for stride, sizes in zip(spec.strides, spec.min_sizes, strict=True):
        ny, nx = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)
        for_each = np.repeat(centres, len(sizes), axis=0)
        sz = np.tile(np.asarray(sizes, dtype=np.float64), len(centres))
        rows.append(np.column_stack([for_each, sz]))
    return np.concatenate(rows, axis=0)


def nearest_to_centre(faces: list[DetectedFace], width: int, height: int) -> DetectedFace:
    """The face whose box centre is nearest the image centre (LFW's labelled person)."""
    centre = np.array([width / 2, height / 2])
    return min(
        faces,
        key=lambda f: float(
            np.linalg.norm((np.array(f.box[:2]) + np.array(f.box[2:])) / 2 - centre)
        ),
    )


class Detector:
    """An ONNX face detector with 5-point landmarks, configured entirely by its manifest."""

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
        self.spec = manifest.detector
        self.options = options or DetectorOptions()
        self.session = create_session(weights, device=device, intra_op_threads=intra_op_threads)
        self._input_name = self.session.get_inputs()[0].name
        self._mean = np.asarray(manifest.input.mean, dtype=np.float32)
        self._std = np.asarray(manifest.input.std, dtype=np.float32)

    @property
    def providers(self) -> list[str]:
        """Execution providers in use."""
        return providers_in_use(self.session)

    def detect(
        self, image: np.ndarray, options: DetectorOptions | None = None
    ) -> list[DetectedFace]:
        """All faces in an RGB uint8 image, best score first, in original image coordinates."""
        opts = options or self.options
        tensor, scale = self._preprocess(image, opts.max_side_px, opts.upscale_below_px)
        outputs = self.session.run(None, {self._input_name: tensor})
        named = dict(zip(self.spec.output_order, outputs, strict=True))
        height, width = tensor.shape[2:]
        anchors = make_anchors(self.spec, height, width)
        scores = named["scores"][0][:, 1].astype(np.float64)
        if len(scores) != len(anchors):
            raise ValueError(
                f"detector emitted {len(scores)} anchors; its manifest gives {len(anchors)}"
            )
        candidates = np.flatnonzero(scores >= opts.score_threshold)
        if candidates.size == 0:
            return []
        anchors = anchors[candidates]
        loc = named["boxes"][0][candidates].astype(np.float64)
        pts = named["landmarks"][0][candidates].astype(np.float64).reshape(-1, 5, 2)
        scores = scores[candidates]
        v_centre, v_size = self.spec.variances
        centre, size = anchors[:, :2], anchors[:, 2:3]
        box_centre = centre + loc[:, :2] * v_centre * size
        box_wh = size * np.exp(loc[:, 2:] * v_size)
        boxes = np.hstack([box_centre - box_wh / 2, box_centre + box_wh / 2]) / scale
        landmarks = (centre[:, None, :] + pts * v_centre * size[:, None, :]) / scale
        keep = nms(boxes, scores, opts.nms_iou)
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
                box=box, landmarks=landmarks[i].astype(np.float32), score=float(scores[i])
            )
            if face.size >= opts.min_face_px:
                faces.append(face)
            if len(faces) >= opts.max_faces:
                break
        return faces

    def _preprocess(
        self, image: np.ndarray, max_side: int, upscale_below: int
    ) -> tuple[np.ndarray, float]:
        """Resize so the long side fits, pad to the stride multiple, normalise per the manifest."""
        h, w = image.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        if max(h, w) < upscale_below:
            scale = upscale_below / max(h, w)
        if scale != 1.0:
            interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
            image = cv2.resize(
                image, (round(w * scale), round(h * scale)), interpolation=interpolation
            )
        if self.manifest.input.color_order == "BGR":
            image = image[:, :, ::-1]
        x = (image.astype(np.float32) - self._mean) / self._std
        pad = self.spec.pad_to
        rh, rw = x.shape[:2]
        ph, pw = -(-rh // pad) * pad, -(-rw // pad) * pad
        padded = np.zeros((ph, pw, 3), dtype=np.float32)  # zero after normalising = mean colour
        padded[:rh, :rw] = x
        return padded.transpose(2, 0, 1)[None], scale
