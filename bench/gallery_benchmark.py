"""Large galleries: build time, memory, search latency, recall@1 and recall@10 per FAISS index
factory and search parameter.

Vectors: ``--gallery realistic`` (the default) draws them from the identity model fitted on real
SFace embeddings (``bench/realistic_gallery.py``: identity centres and within-identity spread of
CelebA-299, Glint-24 and LFW); ``uniform`` is the old generator (random centres on the sphere).
5 faces per identity; probes are new faces of enrolled identities. Recall@k is the share of the
exact (Flat) top-k that the index returns in its top-k. Runs through the service's own
FaissIndex. Prints JSON.

Usage: python bench/gallery_benchmark.py [--sizes 1000000] [--gallery realistic|uniform]
       [--factories "Flat;IVF4096,Flat;HNSW32"]   (';' between factories: they contain commas)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.gallery.index import FaissIndex  # noqa: E402

DIM = 128
DEFAULT_FACTORIES = "Flat;IVF1024,Flat;IVF4096,Flat;HNSW32;IVF4096,PQ32"


def search_params(factory: str) -> list[str]:
    """The search parameters tried per factory (each on the same built index)."""
    if re.search(r"IVF(\d+)", factory):
        return ["nprobe=16", "nprobe=64", "nprobe=256", "nprobe=512", "nprobe=1024"]
    if factory.startswith("HNSW"):
        return ["efSearch=64", "efSearch=128", "efSearch=256"]
    return [""]


def realistic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n faces from the identity model of real SFace embeddings, and 1,000 probes."""
    from bench.realistic_gallery import fitted_model

    return fitted_model().gallery(n, per_identity=5, probes=1000, seed=seed)


def gallery(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors in clusters of 5, and 1,000 probes of enrolled identities."""
    rng = np.random.default_rng(seed)
    identities = max(1, n // 5)
    out = np.empty((n, DIM), dtype=np.float32)
    step = 200_000
    centres = rng.standard_normal((identities, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for start in range(0, n, step):
        stop = min(n, start + step)
        owner = np.arange(start, stop) // 5 % identities
        v = centres[owner] + rng.standard_normal((stop - start, DIM)).astype(np.float32) * 0.09
        out[start:stop] = v / np.linalg.norm(v, axis=1, keepdims=True)
    owners = rng.integers(0, identities, 1000)
    probes = centres[owners] + rng.standard_normal((1000, DIM)).astype(np.float32) * 0.09
    return out, (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bench(
    factory: str, vectors: np.ndarray, probes: np.ndarray, exact: np.ndarray | None
) -> list[dict]:
    """One build of ``factory``; a row per search parameter."""
    gc.collect()
    before = rss_mb()
    index = FaissIndex(DIM, factory)
    ids = np.arange(len(vectors), dtype=np.int64)
    t0 = time.perf_counter()
    index.rebuild(ids, vectors)
    build_s = time.perf_counter() - t0
    size_mb = len(faiss.serialize_index(index._index)) / 1024**2
    growth = rss_mb() - before
    rows = []
    for params in search_params(factory):
        if params:
            faiss.ParameterSpace().set_index_parameters(index._inner(), params)
        index.search(probes[:10], 10)  # warm-up
        lat = []
        found = []
        for q in probes:
            t = time.perf_counter()
            _, hits = index.search(q[None, :], 10)
            lat.append((time.perf_counter() - t) * 1000)
            found.append(hits[0])
        t = time.perf_counter()
        index.search(probes, 10)
        batch_ms = (time.perf_counter() - t) * 1000 / len(probes)
        top = np.asarray(found)
        row = {
            "factory": factory,
            "search_params": params,
            "build_s": round(build_s, 2),
            "index_mb": round(size_mb, 1),
            "rss_growth_mb": round(growth, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "batch_1000_ms_per_query": round(batch_ms, 3),
            "_top": top,
        }
        if exact is not None:
            row["recall_at_1"] = round(float(np.mean(top[:, 0] == exact[:, 0])), 4)
            # what identify needs: the same person first (5 faces per identity, ids in order)
            row["subject_recall_at_1"] = round(
                float(np.mean(top[:, 0] // 5 == exact[:, 0] // 5)), 4
            )
            row["recall_at_10"] = round(
                float(
                    np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, exact, strict=True)])
                ),
                4,
            )
        rows.append(row)
        print(
            json.dumps({k: v for k, v in row.items() if k != "_top"}), file=sys.stderr, flush=True
        )
    del index
    gc.collect()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--gallery", choices=("realistic", "uniform"), default="realistic")
    parser.add_argument("--factories", default=DEFAULT_FACTORIES)
    args = parser.parse_args()
    factories = args.factories.split(";")
    if factories[0] != "Flat":
        factories.insert(0, "Flat")  # the exact reference for recall
    make = realistic if args.gallery == "realistic" else gallery
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "faiss": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "dim": DIM,
        "gallery": args.gallery,
        "probes": 1000,
        "sizes": {},
    }
    for n in (int(s) for s in args.sizes.split(",")):
        vectors, probes = make(n)
        out = []
        exact = None
        for factory in factories:
            rows = bench(factory, vectors, probes, exact)
            if factory == "Flat":
                exact = rows[0]["_top"]
                rows[0]["recall_at_1"] = rows[0]["recall_at_10"] = 1.0
                rows[0]["subject_recall_at_1"] = 1.0
            out += [{k: v for k, v in r.items() if k != "_top"} for r in rows]
        results["sizes"][str(n)] = out  # type: ignore[index]
        del vectors
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
