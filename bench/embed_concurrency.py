"""Why micro-batching does not pay on a small CPU: faces/s of the recognizer when T threads each
run batches of B faces at once, straight on the ONNX session (no HTTP). Prints JSON.

Usage: python bench/embed_concurrency.py [--seconds 3] [--intra-op-threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np

from service.recognition import build_pipeline
from service.settings import Settings

GRID = ((1, 1), (2, 1), (4, 1), (8, 1), (1, 8), (1, 32), (2, 8), (2, 16), (4, 8))


def faces_per_s(embed, crops: list[np.ndarray], threads: int, batch: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    stop = time.monotonic() + seconds
    done = [0] * threads

    def work(i: int) -> None:
        while time.monotonic() < stop:
            embed(crops[:batch])
            done[i] += batch

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done) / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--intra-op-threads", type=int, default=0)
    args = parser.parse_args()
    settings = Settings(device="cpu", intra_op_threads=args.intra_op_threads)
    embedder = build_pipeline(settings, batching=False).embedder
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(32)]
    embedder.embed(crops[:1])
    rows = [
        {
            "threads": t,
            "batch": b,
            "faces_per_s": round(faces_per_s(embedder.embed, crops, t, b, args.seconds), 1),
        }
        for t, b in GRID
    ]
    print(
        json.dumps(
            {"cpus": os.cpu_count(), "intra_op_threads": args.intra_op_threads, "rows": rows},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
