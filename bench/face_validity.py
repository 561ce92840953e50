"""How the recognizer manifest's face-validity rule was chosen, and what it costs.

Collects, for every detection of the default detector (RetinaFace-MNet0.25, at a low score
threshold of 0.3 so that doubtful boxes are in the sample):
- real faces: 300 LFW images (the face nearest the centre), the main (largest) face of 300
  CelebA-299 photos, the 43 annotated dlib/VOC faces, the 6 faces of t1.jpg, the face of every
  AFLW 5-point crop, enlarged to 320 px and at its native size;
- false detections: every detection in dogs.jpg and in the photos without a human face that
  scikit-image's wheel bundles (all of skimage.data's PNG and JPEG files except astronaut and
  camera, which show people), each as it is, mirrored, rotated, halved and doubled;
- per detection: its score and size, the recognizer's feature norm before normalisation, and
  the second detector's (YuNet's) best score on the same box (``SecondOpinion``).

Then searches a grid of rules of the manifest's form (``service.models.FaceValidity``) for the
one that loses no real face of LFW, dlib, t1 and AFLW, the fewest CelebA main faces, and
refuses the most false detections, and reports the manifest's own rule through the service's
``check_validity``. Prints JSON.

Usage: python bench/face_validity.py [--data ../shared/data] [--cache runs/validity]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.face_choice import refused as refused_by  # noqa: E402
from service.evaluation import match_detections  # noqa: E402
from service.models import FaceValidity, ValidityBand, resolve_model  # noqa: E402
from service.recognition import build_pipeline  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.vision.detection import DetectedFace, DetectorOptions, create_detector  # noqa: E402
from service.vision.image import decode_image  # noqa: E402
from service.vision.pipeline import FacePipeline, SecondOpinion  # noqa: E402
from service.vision.quality import check_validity  # noqa: E402

LOW = DetectorOptions(score_threshold=0.3, min_face_px=8)
#: skimage.data images that show people (not negatives)
PEOPLE = {"astronaut", "camera"}
REAL = ("lfw", "dlib", "t1", "aflw320", "aflw0", "lfw_all")
#: the large band's exemption for detections the detector is sure of (None: no exemption)
SURE = ((None, 0.0), (0.985, 7.5), (0.99, 8.5))


def non_face_images(data: Path) -> list[Path]:
    """dogs.jpg and skimage's bundled photos without a person."""
    import skimage

    bundled = Path(skimage.__file__).parent / "data"
    return [data / "detection/dlib_faces/dogs.jpg"] + [
        p
        for p in sorted(bundled.iterdir())
        if p.suffix in (".png", ".jpg") and p.stem not in PEOPLE
    ]


class Collector:
    """Per-detection features through the service's own pipeline."""

    def __init__(self, pipe: FacePipeline, second: Any) -> None:
        self.pipe = pipe
        self.second = second
        self.rows: list[dict[str, Any]] = []

    def add(self, group: str, image: np.ndarray, detections: list[DetectedFace]) -> None:
        if not detections:
            return
        crops = [self.pipe.align(image, d.landmarks) for d in detections]
        _, norms = self.pipe.embedder.embed_with_norms(crops)
        opinion = SecondOpinion(self.second, image)
        for d, n in zip(detections, norms, strict=True):
            self.rows.append(
                {
                    "set": group,
                    "score": round(d.score, 4),
                    "size": round(d.size, 1),
                    "norm": round(float(n), 4),
                    "second": round(opinion.score(d.box), 4),
                }
            )


def collect(data: Path, pipe: FacePipeline, second: Any) -> list[dict[str, Any]]:
    """Every sample described in the module docstring."""
    c = Collector(pipe, second)
    rng = random.Random(0)
    for p in rng.sample(sorted((data / "lfw/images").glob("*/*.jpg")), 300):
        image = decode_image(p.read_bytes())
        dets = pipe.detect(image, LOW)
        if dets:
            centre = np.array([image.shape[1], image.shape[0]]) / 2
            c.add("lfw", image, [min(dets, key=lambda d: _dist(d, centre))])
    for p in rng.sample(sorted((data / "celeba299/images").glob("*.jpg")), 300):
        image = decode_image(p.read_bytes())
        dets = pipe.detect(image, LOW)
        if dets:
            c.add("celeba_main", image, [max(dets, key=lambda d: d.area)])
    root = data / "detection/dlib_faces"
    by_file: dict[str, list[list[float]]] = defaultdict(list)
    for row in csv.DictReader((root / "boxes_5pt.csv").open()):
        by_file[row["file"]].append([float(row[k]) for k in list(row)[2:]])
    for name, boxes in by_file.items():
        gt = np.asarray(boxes)
        gt_xyxy = np.column_stack([gt[:, 0], gt[:, 1], gt[:, 0] + gt[:, 2], gt[:, 1] + gt[:, 3]])
        image = decode_image((root / name).read_bytes())
        dets = pipe.detect(image, LOW)
        found = match_detections(gt_xyxy, np.asarray([d.box for d in dets]).reshape(-1, 4), 0.4)
        c.add("dlib", image, [dets[i] for i in found if i >= 0])
    image = decode_image((data / "detection/insightface/t1.jpg").read_bytes())
    c.add("t1", image, pipe.detect(image))
    aflw = data / "landmarks5_aflw"
    lines = [ln.split() for ln in (aflw / "new_testing.txt").read_text().splitlines() if ln.strip()]
    for upscale in (320, 0):
        options = DetectorOptions(score_threshold=0.5, min_face_px=8, upscale_below_px=upscale)
        for parts in lines:
            crop = decode_image((aflw / parts[0]).read_bytes(), min_side=1)
            values = np.asarray([float(v) for v in parts[1:11]])
            centre = np.stack([values[:5], values[5:]], axis=1).mean(0) + 40
            padded = cv2.copyMakeBorder(crop, 40, 40, 40, 40, cv2.BORDER_REPLICATE)
            dets = pipe.detect(padded, options)
            if dets:
                best = min(dets, key=lambda d: float(np.linalg.norm(d.landmarks.mean(0) - centre)))
                c.add(f"aflw{upscale}", padded, [best])
    for p in non_face_images(data):
        base = np.asarray(Image.open(p).convert("RGB"))
        variants = {
            "as-is": base,
            "mirrored": base[:, ::-1],
            "rotated": np.rot90(base),
            "halved": cv2.resize(base, None, fx=0.5, fy=0.5),
            "doubled": cv2.resize(base, None, fx=2, fy=2),
        }
        for kind, variant in variants.items():
            image = np.ascontiguousarray(variant)
            if min(image.shape[:2]) >= 32:
                c.add(f"neg:{p.stem}:{kind}", image, pipe.detect(image, LOW))
    return c.rows


def every_photo(data: Path, folder: Path) -> list[dict[str, Any]]:
    """The face of every LFW photo (the central one: LFW's labelled person) and of every
    CelebA-299 photo (the largest: a portrait's subject), from ``bench/face_choice.py``'s
    caches of every detection (made when missing: minutes)."""
    from bench.face_choice import central, detections, largest

    out = []
    for group, dataset, pick in (("lfw_all", "lfw", central), ("celeba_all", "celeba", largest)):
        rows = detections(data, folder, dataset)
        for j in pick(rows).values():
            out.append(
                {"set": group} | {k: float(rows[k][j]) for k in ("score", "size", "norm", "second")}
            )
    return out


def sure_gap(rows: list[dict[str, Any]], min_score: float) -> dict[str, Any]:
    """Where the large band's exemption can sit: the real large faces (CelebA-299's main
    faces included) the plain rule (norm < 10, YuNet < 0.9) refuses, against the false
    detections at or above the service's threshold, by detector score and feature norm."""
    large = [r for r in rows if r["size"] >= 100 and r["norm"] < 10 and r["second"] < 0.9]
    real = [r for r in large if r["set"] in REAL or r["set"] == "celeba_all"]
    fake = [r for r in large if r["set"].startswith("neg:") and r["score"] >= min_score]
    return {
        "real_refused": len(real),
        "real_lowest_score": min((r["score"] for r in real), default=None),
        "real_lowest_norm": min((r["norm"] for r in real), default=None),
        "false_highest_score_at_norm_6.5_or_more": max(
            (r["score"] for r in fake if r["norm"] >= 6.5), default=None
        ),
        "false_highest_norm_at_score_0.985_or_more": max(
            (r["norm"] for r in fake if r["score"] >= 0.985), default=None
        ),
    }


def _dist(d: DetectedFace, centre: np.ndarray) -> float:
    return float(np.linalg.norm((np.array(d.box[:2]) + np.array(d.box[2:])) / 2 - centre))


def judge(rows: list[dict[str, Any]], rule: FaceValidity, min_score: float) -> dict[str, Any]:
    """What ``rule`` refuses, per set, through the service's ``check_validity``; negatives are
    counted at the service's detection threshold (``min_score``), as a user meets them."""
    refused: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for r in rows:
        negative = r["set"].startswith("neg:")
        if negative and r["score"] < min_score:
            continue
        key = r["set"]
        if negative:
            plain = r["set"].split(":")[2] in ("as-is", "mirrored")
            key = "neg_as_is_or_mirrored" if plain else "neg_transformed"
        total[key] += 1
        reason = check_validity(
            rule,
            size_px=r["size"],
            detection_score=r["score"],
            feature_norm=r["norm"],
            agreement=lambda r=r: r["second"],
        )
        refused[key] += reason is not None
    return {k: {"refused": refused[k], "of": total[k]} for k in sorted(total)}


def search(rows: list[dict[str, Any]], min_score: float) -> list[dict[str, Any]]:
    """The grid (``bench/face_choice.refused``: ``check_validity`` vectorised): rules that lose
    no real face, best first."""
    keep = [r for r in rows if not (r["set"].startswith("neg:") and r["score"] < min_score)]
    col = {k: np.array([r[k] for r in keep]) for k in ("score", "size", "norm", "second")}
    sets = np.array([r["set"] for r in keep])
    negative = np.char.startswith(sets, "neg:")
    real = np.isin(sets, REAL)
    celeba = sets == "celeba_main"
    celeba_all = sets == "celeba_all"
    results: list[dict[str, Any]] = []
    ranks: list[tuple[int, int]] = []
    grid = itertools.product(
        SURE,  # large.sure_score, large.sure_norm
        (80, 100, 128),  # large_face_px
        (8.0, 9.0, 10.0, 11.0),  # large.max_norm
        (0.7, 0.8, 0.85, 0.9),  # large.max_agreement
        (5.5, 6.0, 6.5, 7.0),  # small.max_norm
        (0.5, 0.6, 0.65, 0.7),  # small.max_agreement
        (0.5, 0.6, 0.7),  # small.min_score
    )
    for (sure, sure_norm), large_px, l_norm, l_agree, s_norm, s_agree, s_score in grid:
        rule = FaceValidity(
            second_detector="-",
            large_face_px=large_px,
            large=ValidityBand(
                max_norm=l_norm, max_agreement=l_agree, sure_score=sure, sure_norm=sure_norm
            ),
            small=ValidityBand(max_norm=s_norm, max_agreement=s_agree, min_score=s_score),
        )
        refused = refused_by(col, rule)
        if (refused & real).any():
            continue
        results.append(
            {
                "large_face_px": large_px,
                "large": {"max_norm": l_norm, "max_agreement": l_agree}
                | ({"sure_score": sure, "sure_norm": sure_norm} if sure is not None else {}),
                "small": {"max_norm": s_norm, "max_agreement": s_agree, "min_score": s_score},
                "negatives_refused": f"{int((refused & negative).sum())}/{int(negative.sum())}",
                "celeba_main_lost": f"{int((refused & celeba).sum())}/{int(celeba.sum())}",
                "celeba_all_lost": f"{int((refused & celeba_all).sum())}/{int(celeba_all.sum())}",
            }
        )
        ranks.append(
            (
                -int((refused & negative).sum()),
                int((refused & celeba_all).sum()),
                int((refused & celeba).sum()),
            )
        )
    order = sorted(range(len(results)), key=lambda i: ranks[i])
    return [results[i] for i in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--cache", default=str(ROOT / "runs" / "validity"))
    args = parser.parse_args()
    data, cache = Path(args.data), Path(args.cache) / "features.json"
    settings = Settings(device="cpu", detector={"validity_check": False})
    pipe = build_pipeline(settings, batching=False)
    rule = pipe.embedder.manifest.validity
    if rule is None:
        raise SystemExit("the recognizer's manifest has no validity rule")
    if cache.is_file():
        rows = json.loads(cache.read_text())
    else:
        manifest, weights = resolve_model(settings.models_dir, rule.second_detector)
        second = create_detector(manifest, weights, device="cpu")
        rows = collect(data, pipe, second)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(rows))
    rows += every_photo(data, cache.parent)
    min_score = settings.detector.score_threshold
    grid = search(rows, min_score)
    print(
        json.dumps(
            {
                "detections": len(rows),
                "service_score_threshold": min_score,
                "manifest_rule": rule.model_dump(exclude={"measured"}),
                "manifest_rule_result": judge(rows, rule, min_score),
                "feature_norm_median": {
                    k: round(float(np.median([r["norm"] for r in rows if r["set"] == k])), 2)
                    for k in ("lfw", "celeba_main", "dlib", "t1")
                }
                | {
                    "false_detections": round(
                        float(
                            np.median(
                                [
                                    r["norm"]
                                    for r in rows
                                    if r["set"].startswith("neg:") and r["score"] >= min_score
                                ]
                            )
                        ),
                        2,
                    )
                },
                "sure_gap": sure_gap(rows, min_score),
                "grid_rules_losing_no_real_face": len(grid),
                "grid_best": grid[:5],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
