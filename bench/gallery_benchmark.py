"""Large galleries: build time, memory, search latency and recall@1 per FAISS index factory.

Vectors are synthetic but shaped like a face gallery: unit 128-d vectors in identity clusters
(5 faces per identity around a random centre, cosine ~0.7 to it, as same-person faces are), and
probes are new faces of enrolled identities. Recall@1 is the share of probes whose top hit is the
one exact search (Flat) returns. Runs through the service's own VectorIndex. Prints JSON.

Usage: python bench/gallery_benchmark.py [--sizes 1000000] [--factories Flat,IVF4096,Flat,...]
Factories are separated by ';' (they contain commas).
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

import faiss
import numpy as np

from service.gallery.index import VectorIndex

DIM = 128
DEFAULT_FACTORIES = "Flat;IVF4096,Flat;HNSW32;IVF4096,PQ32"


def search_params(factory: str) -> str:
    """nprobe = nlist/64 (at least 8) for IVF, efSearch=64 for HNSW."""
    ivf = re.search(r"IVF(\d+)", factory)
    if ivf:
        return f"nprobe={max(8, int(ivf.group(1)) // 64)}"
    return "efSearch=64" if factory.startswith("HNSW") else ""


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


def bench(factory: str, vectors: np.ndarray, probes: np.ndarray, exact: np.ndarray | None) -> dict:
    gc.collect()
    before = rss_mb()
    index = VectorIndex(DIM, factory, search_params=search_params(factory))
    ids = np.arange(len(vectors), dtype=np.int64)
    t0 = time.perf_counter()
    index.rebuild(ids, vectors, generation=1)
    build_s = time.perf_counter() - t0
    size_mb = len(faiss.serialize_index(index._index)) / 1024**2
    index.search(probes[:10], 1)  # warm-up
    lat = []
    top1 = []
    for q in probes:
        t = time.perf_counter()
        _, found = index.search(q[None, :], 10)
        lat.append((time.perf_counter() - t) * 1000)
        top1.append(found[0, 0])
    t = time.perf_counter()
    index.search(probes, 10)
    batch_ms = (time.perf_counter() - t) * 1000 / len(probes)
    top1_arr = np.asarray(top1)
    out = {
        "factory": factory,
        "search_params": search_params(factory),
        "active_factory": index.active_factory,
        "build_s": round(build_s, 2),
        "index_mb": round(size_mb, 1),
        "rss_growth_mb": round(rss_mb() - before, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "batch_1000_ms_per_query": round(batch_ms, 3),
        "recall_at_1": None if exact is None else round(float(np.mean(top1_arr == exact)), 4),
    }
    del index
    gc.collect()
    return out | {"_top1": top1_arr}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--factories", default=DEFAULT_FACTORIES)
    args = parser.parse_args()
    factories = args.factories.split(";")
    if factories[0] != "Flat":
        factories.insert(0, "Flat")  # the exact reference for recall
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "faiss": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "dim": DIM,
        "probes": 1000,
        "sizes": {},
    }
    for n in (int(s) for s in args.sizes.split(",")):
        vectors, probes = gallery(n)
        rows = []
        exact = None
        for factory in factories:
            row = bench(factory, vectors, probes, exact)
            if factory == "Flat":
                exact = row["_top1"]
                row["recall_at_1"] = 1.0
            row.pop("_top1")
            rows.append(row)
            print(json.dumps({"size": n, **row}), file=sys.stderr, flush=True)
        results["sizes"][str(n)] = rows  # type: ignore[index]
        del vectors
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
