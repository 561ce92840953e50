"""insightface's SCRFD (the ``det_10g.onnx`` of the buffalo packs, and its smaller siblings).

Outputs, in graph order: scores for strides 8, 16, 32 ((n, 1), sigmoid already applied), then
boxes ((n, 4): distances left, top, right, bottom from the anchor centre, in stride units), then
keypoints ((n, 10): offsets from the anchor centre, in stride units); ``anchors_per_cell``
anchors (two) share each cell's centre. Some exports add a leading batch axis of 1. The
landmarks come in the ArcFace order.
"""

from __future__ import annotations

import numpy as np

from service.errors import ModelError
from service.vision.detection import Decoded, OnnxDetector, register_detector


class ScrfdDetector(OnnxDetector):
    """SCRFD heads: 3 x (scores, boxes, keypoints) per stride, positional."""

    def check_outputs(self) -> None:
        levels = len(self.spec.strides)
        if len(self._output_names) != 3 * levels:
            raise ModelError(
                f"{self.manifest.name}: a scrfd decoder needs {3 * levels} outputs (scores, "
                f"boxes, keypoints for strides {self.spec.strides}), the graph has "
                f"{len(self._output_names)} (a model without keypoints cannot align faces)"
            )

    def decode(
        self, outputs: list[np.ndarray], height: int, width: int, threshold: float
    ) -> Decoded:
        levels = len(self.spec.strides)
        per_cell = self.spec.anchors_per_cell
        boxes, scores, landmarks = [], [], []
        for level, stride in enumerate(self.spec.strides):
            score = outputs[level].reshape(-1).astype(np.float64)
            dist = outputs[level + levels].reshape(-1, 4).astype(np.float64) * stride
            kps = outputs[level + 2 * levels].reshape(-1, 10).astype(np.float64) * stride
            ny, nx = -(-height // stride), -(-width // stride)
            if len(score) != ny * nx * per_cell:
                raise ModelError(
                    f"stride {stride}: {len(score)} scores for a {nx}x{ny} grid with "
                    f"{per_cell} anchors per cell"
                )
            keep = np.flatnonzero(score >= threshold)
            if keep.size == 0:
                continue
            cell = keep // per_cell
            centres = np.stack([(cell % nx) * stride, (cell // nx) * stride], axis=1).astype(
                np.float64
            )
            d = dist[keep]
            boxes.append(np.column_stack([centres - d[:, :2], centres + d[:, 2:]]))
            landmarks.append(centres[:, None, :] + kps[keep].reshape(-1, 5, 2))
            scores.append(score[keep])
        if not scores:
            return Decoded.empty()
        return Decoded(np.concatenate(boxes), np.concatenate(scores), np.concatenate(landmarks))


register_detector("scrfd", ScrfdDetector)
