"""Which clustering algorithm, at which threshold: measured on three labelled sets, and the
default's time and memory at 10k and 100k faces.

Compared on the same SFace embeddings (``bench/cluster_faces.py``: the face nearest the centre
of each photo of LFW, CelebA-299 and Glint-24):

- Chinese whispers on the 30-NN graph (dlib's method, face_recognition's example; ours);
- connected components of the same graph (single linkage, the simplest graph method);
- DBSCAN, cosine, eps = 1 - threshold, min_samples 3 (Immich's method and its default
  minimum of 3 faces; noise points count as clusters of one);
- HDBSCAN (min_cluster_size 2, Euclidean on unit vectors; it picks its own density levels);
- average-linkage agglomerative clustering, cosine, cut at 1 - threshold (all pairs).

The graph methods and DBSCAN and agglomerative clustering use the calibrated cosine at FAR
1e-3, 1e-4, 1e-5 and 1e-6 (``models/sface-2021dec/manifest.json``), and the default path also
at the automatic FAR (0.1 / the number of faces: ``service.clustering.auto_far``). Scores:
pairwise and BCubed precision, recall and F (``service.clustering.scores``), and the number of
clusters.

Scale: synthetic embeddings from a two-covariance identity model fitted on those real
embeddings (``bench/realistic_gallery.IdentityModel``: identity centres and faces drawn with
the real between- and within-identity covariances, 10 faces per identity), clustered by the
default path (``service.clustering.cluster_faces``) in a fresh process per size, with wall and
CPU seconds and peak RSS.

Usage: python bench/cluster_benchmark.py [--sizes 10000 100000] > docs/cluster_benchmark.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster_faces import SETS, load  # noqa: E402

FARS = (1e-3, 1e-4, 1e-5, 1e-6)
METHODS = ("chinese-whispers", "connected-components", "dbscan", "agglomerative", "hdbscan")


def thresholds() -> dict[float, float]:
    """The calibrated cosine for each FAR."""
    from service.calibration import threshold_for_far
    from service.models import load_manifest

    calibration = load_manifest(ROOT / "models" / "sface-2021dec").calibration
    return {far: threshold_for_far(calibration, far)[0] for far in FARS}


def singletons(labels: np.ndarray) -> np.ndarray:
    """Noise (-1) becomes one cluster per point."""
    labels = labels.copy()
    noise = labels < 0
    labels[noise] = labels.max() + 1 + np.arange(int(noise.sum()))
    return labels


def run_method(name: str, emb: np.ndarray, threshold: float | None) -> np.ndarray:
    """Labels of one method."""
    from service.clustering import create
    from service.gallery.neighbours import knn_graph

    if name in ("chinese-whispers", "connected-components"):
        assert threshold is not None
        return create(name)(knn_graph(emb, k=30, threshold=threshold), 0)
    from sklearn.cluster import DBSCAN, HDBSCAN, AgglomerativeClustering

    if name == "dbscan":
        assert threshold is not None
        model = DBSCAN(eps=1 - threshold, min_samples=3, metric="cosine", n_jobs=1)
        return singletons(model.fit_predict(emb))
    if name == "hdbscan":
        return singletons(HDBSCAN(min_cluster_size=2, metric="euclidean").fit_predict(emb))
    if name == "agglomerative":
        assert threshold is not None
        model = AgglomerativeClustering(
            n_clusters=None, distance_threshold=1 - threshold, metric="cosine", linkage="average"
        )
        return model.fit_predict(emb)
    raise KeyError(name)


def compare(sets: list[str]) -> list[dict[str, Any]]:
    """Every method on every set (at every FAR where the method takes a threshold)."""
    from service.clustering import score_clustering

    rows = []
    cosines = thresholds()
    for name in sets:
        data = load(name)
        emb, truth = data["emb"].astype(np.float32), data["labels"]
        for method in (
            "chinese-whispers",
            "connected-components",
            "dbscan",
            "agglomerative",
            "hdbscan",
        ):
            for far in FARS if method != "hdbscan" else (None,):
                t0, c0 = time.perf_counter(), time.process_time()
                labels = run_method(method, emb, cosines[far] if far else None)
                row = {"set": name, "method": method, "far": far}
                row |= score_clustering(labels, truth).to_dict()
                row["wall_seconds"] = round(time.perf_counter() - t0, 2)
                row["cpu_seconds"] = round(time.process_time() - c0, 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        from service.clustering import edge_threshold
        from service.models import load_manifest

        calibration = load_manifest(ROOT / "models" / "sface-2021dec").calibration
        threshold, far = edge_threshold(calibration, None, len(emb))
        labels = run_method("chinese-whispers", emb, threshold)
        row = {"set": name, "method": "chinese-whispers (auto FAR, the default)", "far": far}
        rows.append(row | score_clustering(labels, truth).to_dict())
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: getrusage's ru_maxrss survives execve on Linux, so a
    child started by a big parent would report the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def scale_run(size: int) -> dict[str, Any]:
    """In this (fresh) process: synthesise ``size`` faces, cluster them the default way."""
    from bench.realistic_gallery import IdentityModel
    from service.clustering import cluster_faces, edge_threshold, score_clustering
    from service.clustering.faces import FoundFace
    from service.models import load_manifest

    parts = [load(name) for name in SETS]
    emb = np.concatenate([p["emb"] for p in parts]).astype(np.float32)
    labels = np.concatenate(
        [[f"{n}:{x}" for x in p["labels"]] for n, p in zip(SETS, parts, strict=True)]
    )
    model = IdentityModel(emb, labels)
    per = 10
    fake, _ = model.gallery(size, per_identity=per, probes=1, seed=1)
    truth = np.arange(size) // per
    del emb, parts
    faces = [FoundFace("", (0.0, 0.0, 0.0, 0.0), 1.0, v) for v in fake]
    calibration = load_manifest(ROOT / "models" / "sface-2021dec").calibration
    t0, c0 = time.perf_counter(), time.process_time()
    threshold, far = edge_threshold(calibration, None, len(faces))
    result = cluster_faces(faces, threshold=threshold, far=far)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    scores = score_clustering(result.labels, truth).to_dict()
    return {
        "faces": size,
        "identities": size // per,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_mb": peak_rss_mb(),
        "edges": result.edges,
        "far": far,
        "fitted_on": {"identities": model.identities, "faces": model.faces},
        **{k: scores[k] for k in ("clusters", "bcubed_f", "pairwise_f1")},
    }


def main() -> None:
    """The comparison table and the scale runs, as one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    parser.add_argument("--scale-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_one:
        print(json.dumps(scale_run(args.scale_one)))
        return
    report: dict[str, Any] = {"thresholds": {f"{k:g}": v for k, v in thresholds().items()}}
    report["comparison"] = compare(args.sets) if args.sets else []
    report["scale"] = []
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--scale-one", str(size)],
            check=True,
            capture_output=True,
            text=True,
        )
        report["scale"].append(json.loads(out.stdout))
        print(out.stdout, file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
