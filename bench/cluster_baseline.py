"""Clustering LFW side by side: MarginFace (SFace + Chinese whispers on the k-NN graph at a
calibrated FAR) and face_recognition 1.3.0 (dlib ResNet + dlib's Chinese whispers at 0.5, as in
face_recognition's clustering example), through the same metrics in one run.

face_recognition is not a dependency of MarginFace: run this in the baseline's own virtual
environment (``bash bench/baseline.sh`` makes it), e.g.
``.venv-baseline/bin/python bench/cluster_baseline.py > docs/cluster_baseline.json``.
Both take the face nearest the centre of each of LFW's 13,233 photos; face_recognition with
its documented defaults (HOG, one upsampling, then two when none is found). Embeddings are
cached under runs/cluster/ (delete them to embed again).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster_faces import CACHE, SETS, load, truth_of  # noqa: E402


def _encode(path: str) -> tuple[str, np.ndarray | None, float]:
    import face_recognition  # type: ignore[import-not-found]

    cpu = time.process_time()
    image = face_recognition.load_image_file(path)
    h, w = image.shape[:2]
    boxes = face_recognition.face_locations(image) or face_recognition.face_locations(
        image, number_of_times_to_upsample=2
    )
    if not boxes:
        return path, None, time.process_time() - cpu

    def off_centre(box: tuple[int, int, int, int]) -> float:
        top, right, bottom, left = box
        return ((left + right) / 2 - w / 2) ** 2 + ((top + bottom) / 2 - h / 2) ** 2

    box = min(boxes, key=off_centre)
    vector = face_recognition.face_encodings(image, [box])[0]
    return path, vector.astype(np.float32), time.process_time() - cpu


def face_recognition_lfw(processes: int) -> dict[str, Any]:
    """face_recognition's encodings of every LFW photo (cached)."""
    path = CACHE / "face_recognition_lfw.npz"
    if path.is_file():
        return dict(np.load(path))
    root = SETS["lfw"]
    photos = sorted(str(p) for p in root.glob("*/*.jpg"))
    started = time.perf_counter()
    vectors, files, cpu = [], [], 0.0
    with ProcessPoolExecutor(processes) as pool:
        for i, (p, v, c) in enumerate(pool.map(_encode, photos, chunksize=16)):
            cpu += c
            if v is not None:
                vectors.append(v)
                files.append(str(Path(p).relative_to(root)))
            if i % 1000 == 0:
                print(f"face_recognition {i}/{len(photos)}", file=sys.stderr, flush=True)
    out = {
        "emb": np.stack(vectors),
        "files": np.array(files),
        "labels": truth_of("lfw", files),
        "photos": np.array(len(photos)),
        "without_face": np.array(len(photos) - len(files)),
        "seconds": np.array(time.perf_counter() - started),
        "cpu_seconds": np.array(cpu),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def with_faceless(labels: np.ndarray, truth: np.ndarray, all_truth: np.ndarray) -> tuple:
    """Photos without a face count as clusters of one (they were found by neither method)."""
    missing = len(all_truth) - len(truth)
    if missing <= 0:
        return labels, truth
    counts: dict[str, int] = {}
    for t in all_truth:
        counts[t] = counts.get(t, 0) + 1
    for t in truth:
        counts[t] -= 1
    extra_truth = np.array([t for t, c in counts.items() for _ in range(c)])
    start = int(labels.max()) + 1 if labels.size else 0
    extra = np.arange(start, start + len(extra_truth))
    return np.concatenate([labels, extra]), np.concatenate([truth, extra_truth])


def main() -> None:
    """Cluster LFW both ways; print one JSON document."""
    import dlib  # type: ignore[import-not-found]

    from service.clustering import DEFAULT_FAR, cluster_faces, edge_threshold, score_clustering
    from service.clustering.faces import FoundFace
    from service.models import load_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--far", type=float, default=DEFAULT_FAR)
    args = parser.parse_args()
    all_truth = truth_of(
        "lfw", sorted(str(p.relative_to(SETS["lfw"])) for p in SETS["lfw"].glob("*/*.jpg"))
    )
    ours = load("lfw", args.processes)
    theirs = face_recognition_lfw(args.processes)

    manifest = load_manifest(ROOT / "models" / "sface-2021dec")
    threshold, far = edge_threshold(manifest.calibration, args.far, len(ours["emb"]))
    faces = [
        FoundFace(str(f), (0, 0, 0, 0), 1.0, e)
        for f, e in zip(ours["files"], ours["emb"], strict=True)
    ]
    t0, c0 = time.perf_counter(), time.process_time()
    result = cluster_faces(faces, threshold=threshold, far=far)
    ours_t = (time.perf_counter() - t0, time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    vectors = [dlib.vector(v.astype(np.float64).tolist()) for v in theirs["emb"]]
    labels = np.array(dlib.chinese_whispers_clustering(vectors, 0.5))
    theirs_t = (time.perf_counter() - t0, time.process_time() - c0)
    report: dict[str, Any] = {"data": "LFW, all 13,233 photos, 5,749 people", "runs": {}}
    for key, lab, truth, run, timing, how in (
        (
            "marginface",
            result.labels,
            ours["labels"],
            ours,
            ours_t,
            f"SFace + Chinese whispers on the 30-NN graph at cosine {threshold:.4f} (FAR {far:g})",
        ),
        (
            "face_recognition",
            labels,
            theirs["labels"],
            theirs,
            theirs_t,
            "dlib ResNet + dlib.chinese_whispers_clustering(threshold 0.5), all pairs",
        ),
    ):
        lab, truth = with_faceless(np.asarray(lab), np.asarray(truth), all_truth)
        entry = score_clustering(lab, truth).to_dict()
        entry["method"] = how
        entry["photos_without_face"] = int(run["without_face"])
        entry["embedding_wall_seconds"] = round(float(run["seconds"]), 1)
        entry["clustering_wall_seconds"] = round(timing[0], 2)
        entry["clustering_cpu_seconds"] = round(timing[1], 2)
        report["runs"][key] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
