"""What CompreFace's API costs on top of our own: the same probes through /v1/identify and
/api/v1/recognition/recognize (multipart and base64 JSON), interleaved, in one process (the app
over ASGI with the real pipeline, so the figures are the routes' own work, not the network).

Prints one JSON object: per route, median and p90 wall milliseconds and median CPU milliseconds
(this process: the pipeline runs in it) per request.
    nice -n 10 python bench/compreface_overhead.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
LFW = ROOT.parent / "shared" / "data" / "lfw" / "images"
PEOPLE = ["Colin_Powell", "George_W_Bush", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder"]
KEY = "bench-key-0123456789"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the 20 probes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            models_dir=ROOT / "models",
            device="cpu",
            gallery={"path": Path(tmp) / "gallery", "flush_interval_s": 3600},  # type: ignore[arg-type]
            auth={"api_keys": [KEY]},  # type: ignore[arg-type]
        )
        with TestClient(create_app(settings), headers={"x-api-key": KEY}) as c:
            for name in PEOPLE:
                photo = (LFW / name / f"{name}_0002.jpg").read_bytes()
                r = c.post(
                    "/api/v1/recognition/faces",
                    params={"subject": name},
                    files={"file": ("a.jpg", photo, "image/jpeg")},
                )
                assert r.status_code == 201, r.text
            probes = [
                (LFW / n / f"{n}_{k:04d}.jpg").read_bytes() for n in PEOPLE for k in (3, 4, 5, 6)
            ]
            routes = {
                "v1_identify": lambda d: c.post(
                    "/v1/identify", files={"image": ("p.jpg", d, "image/jpeg")}
                ),
                "compreface_recognize": lambda d: c.post(
                    "/api/v1/recognition/recognize", files={"file": ("p.jpg", d, "image/jpeg")}
                ),
                "compreface_recognize_base64": lambda d: c.post(
                    "/api/v1/recognition/recognize", json={"file": base64.b64encode(d).decode()}
                ),
            }
            for call in routes.values():  # warm-up
                call(probes[0])
            wall: dict[str, list[float]] = {k: [] for k in routes}
            cpu: dict[str, list[float]] = {k: [] for k in routes}
            for _ in range(args.rounds):
                for probe in probes:
                    for name, call in routes.items():
                        w0, c0 = time.perf_counter(), time.process_time()
                        assert call(probe).status_code == 200
                        wall[name].append((time.perf_counter() - w0) * 1000)
                        cpu[name].append((time.process_time() - c0) * 1000)
    out = {
        "requests_per_route": len(probes) * args.rounds,
        "routes": {
            name: {
                "wall_ms_median": round(statistics.median(wall[name]), 1),
                "wall_ms_p90": round(statistics.quantiles(wall[name], n=10)[-1], 1),
                "cpu_ms_median": round(statistics.median(cpu[name]), 1),
            }
            for name in routes
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
