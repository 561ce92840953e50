"""Detector recall on dlib's VOC faces and 5-point landmark error on AFLW; prints JSON.

Usage: python bench/detection_accuracy.py [--data ../shared/data] [--aflw-limit N]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from service.evaluation import interocular_nme, match_detections
from service.recognition import build_pipeline
from service.settings import Settings
from service.vision.detection import Detector, DetectorOptions
from service.vision.image import decode_image


def dlib_recall(detector: Detector, root: Path, iou: float = 0.4) -> dict[str, object]:
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
    detector: Detector, root: Path, limit: int | None, pad: int = 40, upscale_to: int = 320
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--aflw-limit", type=int, default=None)
    args = parser.parse_args()
    data = Path(args.data)
    settings = Settings(device="cpu")
    detector = build_pipeline(settings, batching=False).detector
    # Small faces in VOC photos: the recall test uses a lower score threshold than serving does.
    detector.options = DetectorOptions(score_threshold=0.5, min_face_px=8)
    start = time.perf_counter()
    report = {
        "detector": detector.manifest.model_id,
        "dlib_faces": dlib_recall(detector, data / "detection/dlib_faces"),
        "aflw_landmarks": aflw_landmarks(detector, data / "landmarks5_aflw", args.aflw_limit),
        "aflw_landmarks_native": aflw_landmarks(
            detector, data / "landmarks5_aflw", args.aflw_limit, upscale_to=0
        ),
        "seconds": 0.0,
    }
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
