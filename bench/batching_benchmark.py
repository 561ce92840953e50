"""Micro-batching on and off, 1 to 64 concurrent clients, against a real uvicorn process.

Each client posts LFW photos to /v1/embed (decode, detect, align, embed: the identify path
without the search) in a closed loop for a fixed time. The same server settings are used with
``MARGINFACE_EMBEDDER__BATCHING`` true and false, one after the other, in one run. Prints JSON:
requests/s, faces/s, p50 and p99 latency per (mode, clients), and the server's batch sizes
(from /metrics) with batching on.

Usage: python bench/batching_benchmark.py [--clients 1,4,16,64] [--seconds 20] [--device cuda]
(``bench/gpu_check.py`` runs it too, through ``run``, printing each point as it is measured.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from tests.test_server import HEADERS, free_port, server  # noqa: E402


def load(port: int, clients: int, seconds: float, photos: list[bytes]) -> dict[str, float]:
    """Closed-loop clients; returns throughput and latency."""
    latencies: list[float] = []
    faces = 0
    errors = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        nonlocal faces, errors
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=120) as c:
            n = i
            while time.monotonic() < stop_at:
                data = photos[n % len(photos)]
                n += clients
                t0 = time.perf_counter()
                r = c.post("/v1/embed", files={"image": ("p.jpg", data, "image/jpeg")})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                        faces += len(r.json()["faces"])
                    else:
                        errors += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    lat = np.asarray(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "faces_per_s": round(faces / elapsed, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }


def batch_sizes(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    count = float(re.search(r"^marginface_embed_batch_size_count (\S+)", text, re.M).group(1))
    total = float(re.search(r"^marginface_embed_batch_size_sum (\S+)", text, re.M).group(1))
    return {"batches": count, "mean_faces_per_batch": round(total / count, 2) if count else 0}


def lfw_photos(count: int = 200) -> list[bytes]:
    """The request bodies: LFW photos (250x250, usually one face)."""
    return [p.read_bytes() for p in sorted((DATA / "lfw/images").glob("A*/*.jpg"))[:count]]


def run(
    clients: list[int],
    seconds: float,
    *,
    wait_ms: float = 2.0,
    intra_op_threads: int = 0,
    device: str = "cpu",
    on_point: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, object]:
    """Both modes at each client count; ``on_point(mode, figures)`` hears each point as it is
    measured (so a crash later loses nothing already measured)."""
    photos = lfw_photos()
    out: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "device": device,
        "seconds_per_point": seconds,
        "batch_max_wait_ms": wait_ms,
        "intra_op_threads": intra_op_threads,
        "request": "POST /v1/embed with an LFW photo (250x250, usually 1 face)",
    }
    for batching in (False, True):
        mode = "batching_on" if batching else "batching_off"
        port = free_port()
        env = {
            "MARGINFACE_INTRA_OP_THREADS": str(intra_op_threads),
            "MARGINFACE_EMBEDDER__BATCHING": "true" if batching else "false",
            "MARGINFACE_EMBEDDER__BATCH_MAX_WAIT_MS": str(wait_ms),
            "MARGINFACE_GALLERY__FLUSH_INTERVAL_S": "3600",
            "MARGINFACE_LOG_LEVEL": "WARNING",
        }
        with (
            tempfile.TemporaryDirectory() as tmp,
            server(Path(tmp) / "gallery", port, env, device=device),
        ):
            load(port, 2, min(3.0, seconds), photos)  # warm-up
            points = []
            for n in clients:
                points.append(load(port, n, seconds, photos))
                if on_point:
                    on_point(mode, points[-1])
            out[mode] = points
            if batching:
                out["batches"] = batch_sizes(port)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--wait-ms", type=float, default=2.0)
    parser.add_argument("--intra-op-threads", type=int, default=0, help="0: ONNX Runtime's choice")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    out = run(
        [int(c) for c in args.clients.split(",")],
        args.seconds,
        wait_ms=args.wait_ms,
        intra_op_threads=args.intra_op_threads,
        device=args.device,
    )
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
