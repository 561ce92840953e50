"""Search latency while the embedded gallery trains a new IVF index, against idle (JSON).

The gallery's builder trains and fills a fresh index beside the live one and swaps it in; the
searches here must not wait for it. The figures: single-query search p50/p99 with the builder
idle, then while a rebuild (``repair``) runs, the rebuild's wall and CPU seconds, and the
longest single search seen during it.

Usage: python bench/index_build_benchmark.py [--faces 200000] [--factory IVF1024,Flat]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.gallery import FaceRecord, Subject  # noqa: E402
from service.gallery.embedded import embedded_gallery  # noqa: E402

MODEL, DIM = "bench@0", 128


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    ms = np.array(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "searches": len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=200_000)
    parser.add_argument("--factory", default="IVF1024,Flat")
    parser.add_argument("--idle-searches", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        g = embedded_gallery(
            Path(tmp), model_id=MODEL, embedding_dim=DIM, index_factory=args.factory
        )
        g.import_subjects([Subject(f"s{i}", "", {}, 0.0) for i in range(args.faces // 4)])
        for lo in range(0, args.faces, 20_000):
            n = min(20_000, args.faces - lo)
            v = rng.standard_normal((n, DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            g.import_faces(
                [
                    (
                        FaceRecord(
                            lo + i + 1, f"s{(lo + i) // 4}", MODEL, [], 1.0, str(lo + i), 0.0
                        ),
                        v[i],
                    )
                    for i in range(n)
                ]
            )
        assert g.wait_until_indexed(timeout_s=3600)
        probes = rng.standard_normal((args.idle_searches, DIM)).astype(np.float32)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)

        def one(i: int) -> float:
            t = time.perf_counter()
            g.search(probes[i % len(probes)][None], top_k=5, model_id=MODEL)
            return time.perf_counter() - t

        idle = [one(i) for i in range(args.idle_searches)]
        during: list[float] = []
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        g.repair_index()  # the builder trains a fresh index beside the live one
        done = threading.Event()

        def watch() -> None:
            g.wait_until_indexed(timeout_s=3600)
            done.set()

        threading.Thread(target=watch, daemon=True).start()
        i = 0
        while not done.is_set():
            during.append(one(i))
            i += 1
        build_s = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        stats = g.stats()
        g.close()
    print(
        json.dumps(
            {
                "faces": args.faces,
                "factory": args.factory,
                "index_after": stats["index_factory"],
                "idle": percentiles(idle),
                "during_build": percentiles(during) if during else None,
                "build_wall_s": round(build_s, 2),
                "process_cpu_s_during_build": round(
                    (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), 2
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
