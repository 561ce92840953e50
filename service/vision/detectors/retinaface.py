"""RetinaFace-layout detectors: prior boxes per stride, offsets decoded with variances."""

from __future__ import annotations

import math

import numpy as np

from service.errors import ModelError
from service.models import DetectorSpec
from service.vision.detection import Decoded, OnnxDetector, register_detector


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
        anchors = make_anchors(self.spec, height, width)
        scores = named["scores"][0][:, 1].astype(np.float64)
        if len(scores) != len(anchors):
            raise ModelError(
                f"detector emitted {len(scores)} anchors; its manifest gives {len(anchors)}"
            )
        keep = np.flatnonzero(scores >= threshold)
        if keep.size == 0:
            return Decoded.empty()
        anchors = anchors[keep]
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
