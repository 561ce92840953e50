"""Service speed on this machine; prints one JSON object.

Measures: detector ms per image; embedding ms per face at batch 1 and 32; verify request latency
(p50/p99) with 1 and 4 concurrent clients against a real uvicorn process; gallery search latency
(the identify path after embedding: FAISS search plus subject lookup) at 10k, 100k and 1M faces
(random unit vectors, since only the size matters there).

Usage: python bench/service_benchmark.py [--sizes 10000,100000,1000000] [--requests 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from service.gallery import FaceRecord, Subject
from service.gallery.embedded import embedded_gallery
from service.recognition import build_pipeline
from service.settings import Settings
from service.vision.image import decode_image

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
KEY = "bench-key"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_ms(fn: object, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter() - start) * 1000)
    return out


def bench_models(repeats: int) -> dict[str, object]:
    pipeline = build_pipeline(Settings(device="cpu"), batching=False)
    images = [
        decode_image(p.read_bytes())
        for p in sorted((DATA / "lfw/images/George_W_Bush").glob("*.jpg"))[:10]
    ]
    group = decode_image((DATA / "detection/insightface/t1.jpg").read_bytes())
    pipeline.detect(images[0])  # warm-up
    det = [t for img in images for t in time_ms(lambda img=img: pipeline.detect(img), 3)]
    det_group = time_ms(lambda: pipeline.detect(group), 5)
    crops = [pipeline.align(images[0], pipeline.detect(images[0])[0].landmarks)] * 32
    pipeline.embedder.embed(crops[:1])
    b1 = time_ms(lambda: pipeline.embedder.embed(crops[:1]), repeats)
    b32 = time_ms(lambda: pipeline.embedder.embed(crops), max(3, repeats // 5))
    return {
        "detector_ms_per_image_250px": round(statistics.median(det), 2),
        "detector_ms_per_image_1280x886": round(statistics.median(det_group), 2),
        "embed_ms_per_face_batch1": round(statistics.median(b1), 2),
        "embed_ms_per_face_batch32": round(statistics.median(b32) / 32, 2),
    }


def bench_http(requests: int) -> dict[str, object]:
    port = 18000 + os.getpid() % 1000
    gallery = tempfile.mkdtemp()
    env = {**os.environ, "MARGINFACE_AUTH__API_KEYS": json.dumps([KEY])}
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--port",
        str(port),
        "--gallery",
        gallery,
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        a = (DATA / "lfw/images/George_W_Bush/George_W_Bush_0001.jpg").read_bytes()
        b = (DATA / "lfw/images/George_W_Bush/George_W_Bush_0002.jpg").read_bytes()
        out: dict[str, object] = {}
        for clients in (1, 4):
            latencies: list[float] = []
            lock = threading.Lock()

            def worker(
                n: int, latencies: list[float] = latencies, lock: threading.Lock = lock
            ) -> None:
                with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=60) as c:
                    for _ in range(n):
                        start = time.perf_counter()
                        r = c.post(
                            "/v1/verify", files={"image_a": ("a.jpg", a), "image_b": ("b.jpg", b)}
                        )
                        r.raise_for_status()
                        with lock:
                            latencies.append((time.perf_counter() - start) * 1000)

            worker(2)  # warm-up
            latencies.clear()
            start = time.perf_counter()
            threads = [
                threading.Thread(target=worker, args=(requests // clients,)) for _ in range(clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            out[f"verify_{clients}_clients"] = {
                "requests": len(latencies),
                "p50_ms": round(percentile(latencies, 50), 1),
                "p99_ms": round(percentile(latencies, 99), 1),
                "requests_per_s": round(len(latencies) / wall, 2),
            }
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_gallery(sizes: list[int], queries: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    out: dict[str, object] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            g = embedded_gallery(Path(tmp), model_id="bench@0", embedding_dim=128)
            start = time.perf_counter()
            # bulk load through the backend (the benchmark is about search)
            g.import_subjects([Subject(f"s{i}", f"S{i}", {}, 0.0) for i in range(size // 2)])
            for lo in range(0, size, 50_000):
                n = min(50_000, size - lo)
                v = rng.standard_normal((n, 128)).astype(np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                g.import_faces(
                    [
                        (
                            FaceRecord(
                                lo + i + 1,
                                f"s{(lo + i) // 2}",
                                "bench@0",
                                [],
                                1.0,
                                str(lo + i),
                                0.0,
                            ),
                            v[i],
                        )
                        for i in range(n)
                    ]
                )
            build_s = time.perf_counter() - start
            probes = rng.standard_normal((queries, 128)).astype(np.float32)
            probes /= np.linalg.norm(probes, axis=1, keepdims=True)
            lat = [
                t
                for q in probes
                for t in time_ms(lambda q=q, g=g: g.search(q[None], top_k=5, model_id="bench@0"), 1)
            ]
            out[str(size)] = {
                "load_and_index_s": round(build_s, 1),
                "search_p50_ms": round(percentile(lat, 50), 2),
                "search_p99_ms": round(percentile(lat, 99), 2),
            }
            g.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "models": bench_models(args.repeats),
        "http": bench_http(args.requests),
        "gallery_search": bench_gallery([int(s) for s in args.sizes.split(",")], queries=50),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
