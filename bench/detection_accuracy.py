"""Detector recall on dlib's VOC faces, 5-point landmark error on AFLW, faces in t1.jpg, and
false detections on photos without a human face (dogs.jpg, scikit-image's bundled photos);
prints JSON.

``--detector`` picks the detection model (any registered one: retinaface-mnet025,
yunet-2023mar, an SCRFD pack); ``--validity`` counts only the faces the pipeline keeps after
its face-validity check (``FacePipeline.analyze``), as the API returns them.

Usage: python bench/detection_accuracy.py [--data ../shared/data] [--aflw-limit N]
       [--detector NAME] [--validity]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.evaluation import interocular_nme, match_detections
from service.recognition import build_pipeline
from service.settings import Settings
from service.vision.detection import DetectorOptions, FaceDetector
from service.vision.image import decode_image
from service.vision.pipeline import Face, FacePipeline


def dlib_recall(
    detector: FaceDetector | ValidFaces, root: Path, iou: float = 0.4
) -> dict[str, object]:
    """Recall and landmark error of the detector on the 43 annotated dlib/VOC faces."""
    by_file: dict[str, list[list[float]]] = defaultdict(list)
    with (root / "boxes_5pt.csv").open() as fh:
        for row in csv.DictReader(fh):
            by_file[row["file"]].append([float(row[k]) for k in list(row)[2:]])
    found, total, nmes, false_pos = 0, 0, [], 0
    for name, rows in sorted(by_file.items()):
        gt = np.asarray(rows)
        gt_boxes = np.column_stack([gt[:, 0], gt[:, 1], gt[:, 0] + gt[:, 2], gt[:, 1] + gt[:, 3]])
        image = decode_image((root / name).read_bytes())
        faces = detector.detect(image)
        pred = np.asarray([f.box for f in faces]).reshape(-1, 4)
        matches = match_detections(gt_boxes, pred, iou)
        found += int((matches >= 0).sum())
        total += len(gt)
        false_pos += len(faces) - int((matches >= 0).sum())
        for g, p in enumerate(matches):
            if p >= 0:
                nmes.append(float(interocular_nme(faces[p].landmarks, gt[g, 4:])[0]))
    return {
        "faces": total,
        "found": found,
        "recall": found / total,
        "iou_threshold": iou,
        "unmatched_detections": false_pos,
        "landmark_nme_mean": float(np.mean(nmes)) if nmes else None,
    }


def aflw_landmarks(
    detector: FaceDetector | ValidFaces,
    root: Path,
    limit: int | None,
    pad: int = 40,
    upscale_to: int = 320,
) -> dict[str, object]:
    """Mean inter-ocular NME on AFLW 5-point crops.

    Each 80x80 crop is padded (so the face is not cut at the edges) and enlarged to
    ``upscale_to`` pixels (0: not enlarged); the detector is at its best on faces above 40 px.
    """
    options = DetectorOptions(score_threshold=0.5, min_face_px=8, upscale_below_px=upscale_to)
    lines = (root / "new_testing.txt").read_text().split("\n")
    lines = [ln.split() for ln in lines if ln.strip()][: limit or None]
    nmes, missed = [], 0
    for parts in lines:
        image = decode_image((root / parts[0]).read_bytes(), min_side=1)
        vals = np.asarray([float(v) for v in parts[1:11]])
        gt = np.stack([vals[:5], vals[5:]], axis=1)
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        faces = detector.detect(padded, options)
        if not faces:
            missed += 1
            continue
        centre = gt.mean(axis=0) + pad
        best = min(faces, key=lambda f: np.linalg.norm(f.landmarks.mean(axis=0) - centre))
        nmes.append(float(interocular_nme(best.landmarks - pad, gt)[0]))
    arr = np.asarray(nmes)
    return {
        "crops": len(lines),
        "upscaled_to_px": upscale_to,
        "no_face": missed,
        "nme_mean": float(arr.mean()),
        "nme_median": float(np.median(arr)),
        "share_nme_below_0.1": float((arr < 0.1).mean()),
    }


class ValidFaces:
    """The pipeline's faces (detections refused as non-faces left out) behind the detector
    interface, so every measurement here can be taken with and without the validity check."""

    def __init__(self, pipeline: FacePipeline) -> None:
        self.pipeline = pipeline
        self.manifest = pipeline.detector.manifest
        self.options = pipeline.detector.options

    def detect(self, image: np.ndarray, options: DetectorOptions | None = None) -> list[Face]:
        """Faces the pipeline keeps."""
        return self.pipeline.analyze(image, options or self.options)


def false_detections(detector: FaceDetector | ValidFaces, data: Path) -> dict[str, int]:
    """Detections (at the detector's own options) in photos without a human face."""
    from bench.face_validity import non_face_images

    return {
        p.stem: len(detector.detect(np.asarray(Image.open(p).convert("RGB"))))
        for p in non_face_images(data)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--aflw-limit", type=int, default=None)
    parser.add_argument("--detector", default=None, help="detection model (default: settings)")
    parser.add_argument("--validity", action="store_true", help="through the validity check")
    args = parser.parse_args()
    data = Path(args.data)
    settings = Settings(device="cpu", detector={"validity_check": args.validity})
    if args.detector:
        settings = settings.model_copy(
            update={"detector": settings.detector.model_copy(update={"model": args.detector})}
        )
    pipeline = build_pipeline(settings, batching=False)
    served: FaceDetector | ValidFaces = ValidFaces(pipeline) if args.validity else pipeline.detector
    t1 = decode_image((data / "detection/insightface/t1.jpg").read_bytes())
    start = time.perf_counter()
    negatives = false_detections(served, data)
    report: dict[str, object] = {
        "detector": pipeline.detector.manifest.model_id,
        "validity_check": args.validity,
        "t1_faces_of_6": len(served.detect(t1)),
        "false_detections_at_serving_threshold": negatives,
        "false_detections_total": sum(negatives.values()),
    }
    # Small faces in VOC photos: the recall test uses a lower score threshold than serving does.
    pipeline.detector.options = DetectorOptions(score_threshold=0.5, min_face_px=8)
    served.options = pipeline.detector.options
    report |= {
        "dlib_faces": dlib_recall(served, data / "detection/dlib_faces"),
        "aflw_landmarks": aflw_landmarks(served, data / "landmarks5_aflw", args.aflw_limit),
        "aflw_landmarks_native": aflw_landmarks(
            served, data / "landmarks5_aflw", args.aflw_limit, upscale_to=0
        ),
        "seconds": 0.0,
    }
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
