"""Per-image speed, MarginFace beside face_recognition 1.3.0, in one run: the same LFW photos,
one compute thread each, several passes, stage by stage.

MarginFace: decode, detect, align, embed (the pipeline's own stage timer), and the rest (quality,
validity, Python) for the face enrollment would take (``choose_face``). face_recognition: load,
HOG detection (``face_locations``), and landmarks + encoding (``face_encodings``) of the face
nearest the centre. Medians over passes of the per-image means; process CPU seconds beside wall
seconds (other load on the machine inflates wall time, not CPU time).

Run in the baseline's environment (``bash bench/baseline.sh`` makes it):
``OMP_NUM_THREADS=1 .venv-baseline/bin/python bench/speed_side_by_side.py > out.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LFW = ROOT.parent / "shared" / "data" / "lfw" / "images"


def ours(photos: list[Path], model: str | None) -> dict[str, Any]:
    """One pass of MarginFace: ms per image by stage, wall and CPU. ``model``: a recognizer,
    or ``RECOGNIZER@DETECTOR`` for another detector than the default."""
    from service.errors import MarginFaceError
    from service.recognition import build_pipeline
    from service.settings import Settings
    from service.vision.image import decode_image

    settings = Settings(device="cpu", intra_op_threads=1)
    recognizer, _, detector = (model or "").partition("@")
    if recognizer:
        settings = settings.model_copy(
            update={"embedder": settings.embedder.model_copy(update={"model": recognizer})}
        )
    if detector:
        settings = settings.model_copy(
            update={"detector": settings.detector.model_copy(update={"model": detector})}
        )
    pipeline = build_pipeline(settings, batching=False)
    times: dict[str, float] = defaultdict(float)
    pipeline.observe = lambda stage, s: times.__setitem__(stage, times[stage] + s)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for path in photos:
        data = path.read_bytes()
        d0 = time.perf_counter()
        image = decode_image(data)
        times["decode"] += time.perf_counter() - d0
        with contextlib.suppress(MarginFaceError):
            pipeline.choose_face(image)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n = len(photos)
    stages = {k: 1000 * v / n for k, v in times.items()}
    stages["other"] = 1000 * wall / n - sum(stages.values())
    return {"stages": stages, "wall_ms": 1000 * wall / n, "cpu_ms": 1000 * cpu / n}


def theirs(photos: list[Path]) -> dict[str, Any]:
    """One pass of face_recognition with its documented defaults."""
    import face_recognition  # type: ignore[import-not-found]

    times: dict[str, float] = defaultdict(float)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for path in photos:
        t0 = time.perf_counter()
        image = face_recognition.load_image_file(str(path))
        t1 = time.perf_counter()
        boxes = face_recognition.face_locations(image)
        t2 = time.perf_counter()
        if boxes:
            h, w = image.shape[:2]
            box = min(
                boxes,
                key=lambda b: ((b[1] + b[3]) / 2 - w / 2) ** 2 + ((b[0] + b[2]) / 2 - h / 2) ** 2,
            )
            face_recognition.face_encodings(image, [box])
        t3 = time.perf_counter()
        times["load"] += t1 - t0
        times["detect (HOG)"] += t2 - t1
        times["landmarks + encode"] += t3 - t2
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n = len(photos)
    return {
        "stages": {k: 1000 * v / n for k, v in times.items()},
        "wall_ms": 1000 * wall / n,
        "cpu_ms": 1000 * cpu / n,
    }


def median_of(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-field medians over passes, rounded."""
    out: dict[str, Any] = {
        "wall_ms": round(statistics.median(p["wall_ms"] for p in passes), 2),
        "cpu_ms": round(statistics.median(p["cpu_ms"] for p in passes), 2),
    }
    out["stages_ms"] = {
        k: round(statistics.median(p["stages"][k] for p in passes), 2) for k in passes[0]["stages"]
    }
    return out


def main() -> None:
    """Alternate passes of the two (so drifting load hits both), print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="our recognizer(s), each RECOGNIZER or RECOGNIZER@DETECTOR",
    )
    args = parser.parse_args()
    everything = sorted(LFW.glob("*/*.jpg"))
    photos = everything[:: max(1, len(everything) // args.images)][: args.images]
    models = args.model or ["sface-2021dec"]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models} | {"face_recognition": []}
    for _ in range(args.passes):
        for m in models:
            runs[m].append(ours(photos, m))
        runs["face_recognition"].append(theirs(photos))
    report: dict[str, Any] = {
        "images": len(photos),
        "passes": args.passes,
        "threads": "one each (ORT intra_op_threads=1; OMP_NUM_THREADS=1 for dlib)",
    }
    fr = median_of(runs["face_recognition"])
    report["face_recognition"] = fr
    for m in models:
        mine = median_of(runs[m])
        mine["ratio_wall"] = round(mine["wall_ms"] / fr["wall_ms"], 3)
        mine["ratio_cpu"] = round(mine["cpu_ms"] / fr["cpu_ms"], 3)
        report[f"marginface ({m})"] = mine
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
