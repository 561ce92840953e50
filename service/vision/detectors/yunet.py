"""OpenCV Zoo's YuNet (2023mar): anchor-free, one prediction per cell and stride.

Per stride s (8, 16, 32) the graph emits ``cls_s`` and ``obj_s`` (n, 1) probabilities, ``bbox_s``
(n, 4) as (dx, dy, log w, log h) in stride units from the cell, and ``kps_s`` (n, 10) as offsets
in stride units; the face score is sqrt(cls * obj), as OpenCV's FaceDetectorYN computes it. Its
landmarks come as right eye, left eye, nose, right and left mouth corner of the *person*, which
is the image's left eye first: the ArcFace order already.
"""

from __future__ import annotations

import numpy as np

from service.errors import ModelError
from service.vision.detection import Decoded, OnnxDetector, register_detector


class YuNetDetector(OnnxDetector):
    """YuNet outputs, found by their names (cls_8, obj_8, bbox_8, kps_8, ...)."""

    def check_outputs(self) -> None:
        wanted = {
            f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in self.spec.strides
        }
        missing = wanted - set(self._output_names)
        if missing:
            raise ModelError(
                f"{self.manifest.name}: a yunet decoder needs the outputs {sorted(missing)}"
            )

    def decode(
        self, outputs: list[np.ndarray], height: int, width: int, threshold: float
    ) -> Decoded:
        named = dict(zip(self._output_names, outputs, strict=True))
        boxes, scores, landmarks = [], [], []
        for stride in self.spec.strides:
            cls = np.clip(named[f"cls_{stride}"].reshape(-1), 0.0, 1.0)
            obj = np.clip(named[f"obj_{stride}"].reshape(-1), 0.0, 1.0)
            score = np.sqrt(cls * obj)
            keep = np.flatnonzero(score >= threshold)
            if keep.size == 0:
                continue
            nx = -(-width // stride)
            cols, rows = (keep % nx).astype(np.float64), (keep // nx).astype(np.float64)
            bbox = named[f"bbox_{stride}"].reshape(-1, 4)[keep].astype(np.float64)
            kps = named[f"kps_{stride}"].reshape(-1, 10)[keep].astype(np.float64)
            cx, cy = (cols + bbox[:, 0]) * stride, (rows + bbox[:, 1]) * stride
            w, h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
            boxes.append(np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
            points = kps.reshape(-1, 5, 2)
            points = (points + np.stack([cols, rows], axis=1)[:, None, :]) * stride
            landmarks.append(points)
            scores.append(score[keep].astype(np.float64))
        if not scores:
            return Decoded.empty()
        return Decoded(np.concatenate(boxes), np.concatenate(scores), np.concatenate(landmarks))


register_detector("yunet", YuNetDetector)
