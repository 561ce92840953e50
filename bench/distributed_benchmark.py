"""The distributed gallery (PostgreSQL + Milvus) next to the embedded one (SQLite + FAISS), at
the sizes this machine allows: bulk load, single enrollments, search latency and throughput,
and PostgreSQL's bytes per face. Prints JSON.

The servers are the tests' own: Debian's PostgreSQL in a throwaway cluster, and milvus-lite's
gRPC server in its own process. milvus-lite is a pure-Python Milvus (FAISS underneath) with the
cluster's client API: it shows the backend's protocol costs (a gRPC hop, strong consistency),
not what a Milvus cluster's C++ query nodes do. Vectors are synthetic identity clusters (the
gallery benchmark's generator).

Usage: python bench/distributed_benchmark.py [--sizes 10000 100000] [--queries 200] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gallery_benchmark import gallery as synthetic  # noqa: E402
from service.gallery import Gallery, NewFace, backends  # noqa: E402
from service.gallery.postgres import upgrade  # noqa: E402
from service.gallery.records import FaceRecord, Subject  # noqa: E402
from service.settings import GallerySettings  # noqa: E402
from tests.backends import milvus_server, postgres_server  # noqa: E402

MODEL = "bench@distributed"
DIM = 128


def load(g: Gallery, vectors: np.ndarray) -> dict[str, float]:
    """Bulk-load through the backend (5 faces per subject): each page is committed to the
    store, then indexed."""
    n = len(vectors)
    t = time.perf_counter()
    g.import_subjects([Subject(f"p{i}", f"Person {i}", {}, float(i)) for i in range((n + 4) // 5)])
    for start in range(0, n, 5000):
        rows = [
            (FaceRecord(i + 1, f"p{i // 5}", MODEL, [0, 0, 1, 1], 0.9, f"h{i}", 0.0), vectors[i])
            for i in range(start, min(n, start + 5000))
        ]
        g.import_faces(rows)
    g.flush()
    return {"load_rows_per_s": round(n / (time.perf_counter() - t))}


def enroll_rate(g: Gallery, rng: np.random.Generator, count: int = 200) -> float:
    """Enrollments per second, one face per request (a store transaction + an index write)."""
    g.create_subject("bench-enroll", "Bench", {})
    vecs = rng.standard_normal((count, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    t = time.perf_counter()
    for i, v in enumerate(vecs):
        g.add_faces("bench-enroll", [NewFace(v, (0, 0, 1, 1), 0.9, f"e{i}")], model_id=MODEL)
    return round(count / (time.perf_counter() - t), 1)


def search_figures(g: Gallery, probes: np.ndarray, threads: int) -> dict[str, float]:
    """Latency of one identify-sized search (top 5 subjects), and throughput with threads."""
    lat = []
    for p in probes:
        t = time.perf_counter()
        g.search(p[None], top_k=5, model_id=MODEL)
        lat.append(time.perf_counter() - t)
    ms = np.asarray(lat) * 1000
    done = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + 10

    def worker(seed: int) -> None:
        local = 0
        i = seed
        while time.perf_counter() < stop_at:
            g.search(probes[i % len(probes)][None], top_k=5, model_id=MODEL)
            i += threads
            local += 1
        with lock:
            done[0] += local

    t = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
    for w in pool:
        w.start()
    for w in pool:
        w.join()
    return {
        "search_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "search_p99_ms": round(float(np.percentile(ms, 99)), 2),
        f"searches_per_s_{threads}_threads": round(done[0] / (time.perf_counter() - t), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "milvus": "milvus-lite 3.2.2 server process (FLAT, IP), pymilvus 3.0.2",
        "postgres": None,
        "results": [],
    }
    rng = np.random.default_rng(1)
    with postgres_server() as pg, milvus_server() as milvus:
        milvus_uri = milvus.uri
        with psycopg.connect(pg.dsn()) as conn:
            out["postgres"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        for n in args.sizes:
            vectors, probes = synthetic(n)
            probes = probes[: args.queries]
            for backend in ("embedded", "distributed"):
                with tempfile.TemporaryDirectory() as tmp:
                    if backend == "embedded":
                        settings = GallerySettings(path=Path(tmp))
                    else:
                        dsn = pg.new_database()
                        upgrade(dsn)
                        settings = GallerySettings(
                            backend="distributed",
                            postgres_dsn=dsn,
                            milvus_uri=milvus_uri,
                            milvus_collection="b" + uuid.uuid4().hex[:8],
                        )
                    g = backends.open_gallery(settings, model_id=MODEL, embedding_dim=DIM)
                    row: dict[str, object] = {"backend": backend, "faces": n}
                    rss_before = milvus.rss_bytes()
                    row.update(load(g, vectors))
                    g.flush()
                    if backend == "distributed":
                        row["milvus_rss_mb_per_million"] = round(
                            (milvus.rss_bytes() - rss_before) / n * 1e6 / 2**20
                        )
                    row.update(search_figures(g, probes, args.threads))
                    row["enrollments_per_s"] = enroll_rate(g, rng)
                    if backend == "distributed":
                        with psycopg.connect(dsn) as conn:
                            size = conn.execute(
                                "SELECT pg_total_relation_size('faces') + "
                                "pg_total_relation_size('subjects')"
                            ).fetchone()
                        row["postgres_bytes_per_face"] = round(int(size[0]) / n)  # type: ignore[index]
                    g.close()
                    print(json.dumps(row), file=sys.stderr)
                    out["results"].append(row)  # type: ignore[attr-defined]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
