"""Replay the hostile corpus (tests/reliability/corpus.py) N times against a real server and
report its memory: RSS before, after each tenth of the run, and the peak (VmHWM). Prints JSON.

Usage: python bench/hostile_replay.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reliability.corpus import FACE, corpus  # noqa: E402
from tests.test_server import HEADERS, free_port, server  # noqa: E402


def memory(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    cases = corpus()
    statuses: Counter[str] = Counter()
    samples = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        with (
            server(Path(tmp) / "gallery", port) as proc,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=60) as c,
        ):
            c.post("/v1/subjects", json={"id": "victim", "name": "V"})
            c.post("/v1/subjects", json={"id": "valid-target", "name": "T"})
            c.post(
                "/v1/subjects/victim/faces",
                files=[("files", ("a.jpg", FACE.read_bytes(), "image/jpeg"))],
            )
            samples.append({"round": 0, **memory(proc.pid)})
            for round_ in range(1, args.rounds + 1):
                for case in cases:
                    path = case.path
                    if case.name.startswith("enroll_") and case.expect == {201}:
                        path = path.replace("victim", "valid-target")
                    try:
                        r = c.request(case.method, path, **case.request())
                        statuses[str(r.status_code)] += 1
                    except httpx.TransportError:
                        statuses["transport_error"] += 1
                if round_ % max(1, args.rounds // 10) == 0:
                    samples.append({"round": round_, **memory(proc.pid)})
    result = {
        "rounds": args.rounds,
        "requests": sum(statuses.values()),
        "cases_per_round": len(cases),
        "statuses": dict(sorted(statuses.items())),
        "seconds": round(time.perf_counter() - started, 1),
        "rss_mb": samples,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
