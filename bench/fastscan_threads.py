"""Why fast-scan single queries collapse with a second OpenMP thread: single-query latency of
``IVF{nlist},PQ32x4fs,RFlat`` (nprobe nlist/4, k_factor 32) and of ``IVF{nlist},Flat`` with one
and two FAISS threads, under whatever ``OMP_WAIT_POLICY`` the process was started with. Prints
one JSON line per measurement. The gallery is clustered Gaussian noise (5 faces per identity):
this measures threading, not recall.

    for p in default PASSIVE ACTIVE; do [ $p = default ] && unset OMP_WAIT_POLICY || \\
        export OMP_WAIT_POLICY=$p; nice -n 10 .venv/bin/python bench/fastscan_threads.py; done
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np


def clustered(n: int, queries: int, dim: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors, 5 per identity, and ``queries`` new faces of enrolled identities."""
    rng = np.random.default_rng(0)
    ids = n // 5
    centres = rng.standard_normal((ids, dim)).astype(np.float32) * 0.1
    centres += rng.standard_normal(dim).astype(np.float32) * 0.05
    x = centres[np.arange(n) // 5 % ids] + rng.standard_normal((n, dim)).astype(np.float32) * 0.06
    q = centres[rng.integers(0, ids, queries)]
    q = q + rng.standard_normal((queries, dim)).astype(np.float32) * 0.06
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def built(factory: str, x: np.ndarray, cache: Path) -> faiss.Index:
    """The trained, filled index (cached on disk: the build is the slow part)."""
    path = cache / f"{factory.replace(',', '_')}_{len(x)}.faiss"
    if path.is_file():
        return faiss.read_index(str(path))
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x[: min(len(x), 80_000)])
    index.add(x)
    cache.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return index


def single_p50(index: faiss.Index, queries: np.ndarray, pin: int | None) -> dict[str, object]:
    """Single-query p50 in the calling thread, after ``omp_set_num_threads(pin)`` there."""
    if pin is not None:
        faiss.omp_set_num_threads(pin)
    single = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], 10)
        single.append((time.perf_counter() - t) * 1000)
    return {
        "threads_here": faiss.omp_get_max_threads(),
        "single_p50_ms": round(float(np.median(single)), 3),
    }


def pin_check(index: faiss.Index, queries: np.ndarray) -> None:
    """Where a pin must be made: OpenMP's thread count is per calling thread, so one set in
    the main thread does not reach a server's worker threads."""
    faiss.omp_set_num_threads(1)
    print(json.dumps({"pin": "main thread set to 1", **single_p50(index, queries, None)}))
    with ThreadPoolExecutor(1) as pool:
        for what, pin in (("worker, not pinned", None), ("worker, pinned in it", 1)):
            print(
                json.dumps({"pin": what, **pool.submit(single_p50, index, queries, pin).result()})
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--cache", type=Path, default=Path("runs/fastscan_threads"))
    args = parser.parse_args()
    x, queries = clustered(args.vectors, 200)
    for factory, params in (
        (f"IVF{args.nlist},PQ32x4fs,RFlat", f"nprobe={args.nlist // 4},k_factor_rf=32"),
        (f"IVF{args.nlist},Flat", f"nprobe={args.nlist // 4}"),
    ):
        index = built(factory, x, args.cache)
        faiss.ParameterSpace().set_index_parameters(index, params)
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            index.search(queries[:5], 10)
            single = []
            for q in queries:
                t = time.perf_counter()
                index.search(q[None], 10)
                single.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            index.search(queries, 10)
            batch = (time.perf_counter() - t) * 1000 / len(queries)
            record = {
                "factory": factory,
                "params": params,
                "vectors": args.vectors,
                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "default"),
                "threads": threads,
                "single_p50_ms": round(float(np.median(single)), 3),
                "single_p90_ms": round(float(np.percentile(single, 90)), 3),
                "batch_200_ms_per_query": round(batch, 3),
                "load_average_1m": round(os.getloadavg()[0], 1),
            }
            print(json.dumps(record), flush=True)
        if "PQ" in factory:
            pin_check(index, queries[:100])
            faiss.omp_set_num_threads(2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
