"""RetinaFace-layout detectors: prior boxes per stride, offsets decoded with variances."""

from __future__ import annotations

import math

import numpy as np

from service.errors import ModelError
from service.models import DetectorSpec
from service.vision.detection import Decoded, OnnxDetector, register_detector


def make_anchors(spec: DetectorSpec, height: int, width: int) -> np.ndarray:
    """Anchor centres and sizes (cx, cy, size) in pixels, in the order the model emits them."""
    return anchors_at(spec, height, width, np.arange(anchor_count(spec, height, width)))


def anchor_count(spec: DetectorSpec, height: int, width: int) -> int:
    """How many anchors the model emits for a (height, width) input."""
    return sum(
        math.ceil(height / stride) * math.ceil(width / stride) * len(sizes)
        for stride, sizes in zip(spec.strides, spec.min_sizes, strict=True)
    )


def anchors_at(spec: DetectorSpec, height: int, width: int, index: np.ndarray) -> np.ndarray:
    """The anchors (cx, cy, size) at these positions of the model's order (stride by stride,
    cells row by row, the stride's sizes per cell): the few a photo keeps are computed, not
    every anchor of the input (2,688 for a 250x250 photo, 37,800 at 960 px) on every request."""
    out = np.empty((len(index), 3), dtype=np.float64)
    start = 0
    for stride, sizes in zip(spec.strides, spec.min_sizes, strict=True):
        nx = math.ceil(width / stride)
        count = math.ceil(height / stride) * nx * len(sizes)
        here = (index >= start) & (index < start + count)
        local = index[here] - start
        cell = local // len(sizes)
        out[here, 0] = (cell % nx + 0.5) * stride
        out[here, 1] = (cell // nx + 0.5) * stride
        out[here, 2] = np.asarray(sizes, dtype=np.float64)[local % len(sizes)]
        start += count
    return out


class RetinaFaceDetector(OnnxDetector):
    """Outputs (named by ``detector.output_order``): boxes (1, A, 4) as centre/size offsets,
    scores (1, A, 2) background/face, landmarks (1, A, 10) as offsets from the anchor centre."""

    def check_outputs(self) -> None:
        if sorted(self.spec.output_order) != ["boxes", "landmarks", "scores"]:
            raise ModelError(
                f"{self.manifest.name}: a retinaface decoder needs output_order naming boxes, "
                f"scores and landmarks, got {self.spec.output_order}"
            )

    def decode(
        self, outputs: list[np.ndarray], height: int, width: int, threshold: float
    ) -> Decoded:
        named = dict(zip(self.spec.output_order, outputs, strict=True))
        scores = named["scores"][0][:, 1].astype(np.float64)
        expected = anchor_count(self.spec, height, width)
        if len(scores) != expected:
            raise ModelError(
                f"detector emitted {len(scores)} anchors; its manifest gives {expected}"
            )
        keep = np.flatnonzero(scores >= threshold)
        if keep.size == 0:
            return Decoded.empty()
        anchors = anchors_at(self.spec, height, width, keep)
        loc = named["boxes"][0][keep].astype(np.float64)
        pts = named["landmarks"][0][keep].astype(np.float64).reshape(-1, 5, 2)
        v_centre, v_size = self.spec.variances
        centre, size = anchors[:, :2], anchors[:, 2:3]
        box_centre = centre + loc[:, :2] * v_centre * size
        box_wh = size * np.exp(loc[:, 2:] * v_size)
        boxes = np.hstack([box_centre - box_wh / 2, box_centre + box_wh / 2])
        landmarks = centre[:, None, :] + pts * v_centre * size[:, None, :]
        return Decoded(boxes, scores[keep], landmarks)


register_detector("retinaface", RetinaFaceDetector)
