"""The service's own throughput: identify and enroll under 1 to 64 concurrent clients.

A real ``marginface serve`` on loopback (started by ``tests.test_server.server``, as the tests
start it) answers closed-loop clients posting LFW photos (250x250, one face each) for a fixed
time per (route, clients) cell. One server per mode (micro-batching off and on, ONNX Runtime's
thread count per call) runs through the whole run, and each cell is measured on every mode in
turn, so that the load of a shared machine falls on the modes alike. Enroll goes into each
server's own throwaway gallery (subjects made from LFW people before the cells; each request
adds one photo to its person, made new by a JPEG comment so that it is stored, not taken as
the same image again), identify searches that gallery afterwards. Clients spread over several
API keys so the per-key cap does not bind before the server-wide one; a 429 or 503 answer is
counted apart (a bounded queue sheds load on purpose) and its client waits the Retry-After it
was given, as a polite client does.

Per cell: requests/s, p50/p99 latency of the answered requests, the server process's CPU seconds
(from /proc, every thread) per answered request beside the wall time, this process's own CPU
(the clients share the two cores), the mean micro-batch, and the load average before and after.
Prints one JSON object.

Usage: nice -n 10 python bench/service_throughput.py [--clients 1,4,16,64] [--seconds 20]
    [--modes off,on,off-1t,on-1t]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from tests.test_server import free_port, server  # noqa: E402

#: keys the clients take turns with (client i uses KEYS[i % len]): 64 clients stay under the
#: per-key cap (half the in-flight slots), so the server-wide bound is what is measured
KEYS = [f"throughput-key-{i:02d}-0123456789" for i in range(8)]
#: server modes: the micro-batcher off or on, ONNX Runtime's own thread count (0) or one per call;
#: ``default``: whatever the settings ship
MODES: dict[str, dict[str, str]] = {
    "default": {},
    "off": {"MARGINFACE_EMBEDDER__BATCHING": "false", "MARGINFACE_INTRA_OP_THREADS": "0"},
    "on": {"MARGINFACE_EMBEDDER__BATCHING": "true", "MARGINFACE_INTRA_OP_THREADS": "0"},
    "off-1t": {"MARGINFACE_EMBEDDER__BATCHING": "false", "MARGINFACE_INTRA_OP_THREADS": "1"},
    "on-1t": {"MARGINFACE_EMBEDDER__BATCHING": "true", "MARGINFACE_INTRA_OP_THREADS": "1"},
}
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Person:
    """An LFW person: a subject id, a photo to enroll and another to identify."""

    subject_id: str
    enroll: bytes
    probe: bytes


def lfw_people(count: int) -> list[Person]:
    """The first ``count`` LFW people (sorted) with at least two photos."""
    people = []
    for folder in sorted((DATA / "lfw/images").iterdir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= 2:
            people.append(Person(folder.name, photos[0].read_bytes(), photos[1].read_bytes()))
        if len(people) == count:
            break
    return people


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def own_cpu_s() -> float:
    """This process's CPU seconds (the clients' side)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batch_counters(port: int) -> tuple[float, float]:
    """(batches, faces) the micro-batcher has run so far, from /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    found = [
        re.search(rf"^marginface_embed_batch_size_{name} (\S+)", text, re.M)
        for name in ("count", "sum")
    ]
    count, total = (float(m.group(1)) if m else 0.0 for m in found)
    return count, total


def commented(jpeg: bytes, note: str) -> bytes:
    """The same JPEG with a comment segment after SOI: the same pixels, a new sha256 (an image
    enrolled twice for a subject is stored once)."""
    text = note.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def shed_reason(r: httpx.Response) -> str:
    """Which bound shed a request: its error message with the numbers taken out."""
    try:
        message = str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = r.text[:80]
    return re.sub(r"\d+", "N", re.sub(r"key '[^']*'", "key K", message))


def post(c: httpx.Client, route: str, person: Person, note: str = "") -> httpx.Response:
    """One request of the cell's kind (``note`` makes an enrolled photo new)."""
    if route == "enroll":
        photo = commented(person.enroll, note) if note else person.enroll
        files = [("files", ("p.jpg", photo, "image/jpeg"))]
        return c.post(f"/v1/subjects/{person.subject_id}/faces", files=files)
    return c.post("/v1/identify", files={"image": ("p.jpg", person.probe, "image/jpeg")})


def cell(
    port: int, pid: int, route: str, clients: int, seconds: float, people: list[Person]
) -> dict[str, object]:
    """Closed-loop clients on one route for ``seconds``; the figures of that cell."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    shed_by: Counter[str] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        headers = {"X-API-Key": KEYS[i % len(KEYS)]}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=150) as c:
            n = i
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    note = f"{time.time_ns()}-{i}-{n}"
                    r = post(c, route, people[n % len(people)], note)
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all (a dropped connection, a client timeout)
                dt = time.perf_counter() - t0
                n += clients
                with lock:
                    statuses[status] += 1
                    if 200 <= status < 300:
                        latencies.append(dt)
                if status in (429, 503):  # shed: come back when told to
                    with lock:
                        shed_by[shed_reason(r)] += 1
                    time.sleep(min(float(r.headers.get("Retry-After", 1)), 5.0))

    batches0, faces0 = batch_counters(port)
    load_before = os.getloadavg()
    cpu0, own0, started = server_cpu_s(pid), own_cpu_s(), time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    cpu, own = server_cpu_s(pid) - cpu0, own_cpu_s() - own0
    batches1, faces1 = batch_counters(port)
    ok = len(latencies)
    lat = np.asarray(latencies) * 1000
    answered = sum(v for k, v in statuses.items() if k)
    return {
        "route": route,
        "clients": clients,
        "wall_s": round(wall, 1),
        "ok": ok,
        "requests_per_s": round(ok / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if ok else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if ok else None,
        "overloaded_503": statuses[503],
        "too_many_429": statuses[429],
        "other_errors": {str(k): v for k, v in sorted(statuses.items()) if k >= 300 and
                         k not in (429, 503)} | ({"no_answer": statuses[0]} if statuses[0] else {}),
        "shed_by": dict(shed_by),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_ms_per_ok": round(1000 * cpu / ok, 1) if ok else None,
        "server_cpu_ms_per_answer": round(1000 * cpu / answered, 1) if answered else None,
        "server_cores_busy": round(cpu / wall, 2),
        "client_cpu_s": round(own, 2),
        "mean_batch": round((faces1 - faces0) / (batches1 - batches0), 2)
        if batches1 > batches0
        else None,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip


def seed(port: int, people: list[Person]) -> list[Person]:
    """Make a subject per person and enroll its first photo; the people that enrolled (a photo
    below the quality floor is left out, so that enroll cells measure enrollments)."""
    kept = []
    headers = {"X-API-Key": KEYS[0]}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=150) as c:
        for p in people:
            r = c.post("/v1/subjects", json={"id": p.subject_id, "name": p.subject_id})
            assert r.status_code == 201, r.text
            if post(c, "enroll", p).status_code == 201:
                kept.append(p)
    return kept


def run_matrix(
    modes: list[str], clients: list[int], seconds: float, people: list[Person], verbose: bool
) -> dict[str, object]:
    """One server per mode, all started at once (an idle one costs no CPU); each cell is measured
    on every mode in turn, so that the machine's changing load falls on the modes alike. Enroll
    cells first (they fill each gallery alike), then identify cells."""
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        running = {}
        for mode in modes:
            port = free_port()
            env = {
                **MODES[mode],
                "MARGINFACE_AUTH__API_KEYS": json.dumps(KEYS),
                "MARGINFACE_LOG_LEVEL": "WARNING",
            }
            (Path(tmp) / mode).mkdir()  # the server's log goes beside its gallery
            proc = stack.enter_context(server(Path(tmp) / mode / "gallery", port, env))
            kept = seed(port, people)
            cell(port, proc.pid, "identify", 2, min(3.0, seconds), kept)  # warm-up
            running[mode] = (port, proc.pid, kept)
            out[mode] = {"env": MODES[mode], "people": len(kept), "cells": []}
        for route in ("enroll", "identify"):
            for n in clients:
                for mode, (port, pid, kept) in running.items():
                    figures = {"mode": mode, **cell(port, pid, route, n, seconds, kept)}
                    out[mode]["cells"].append(figures)  # type: ignore[index]
                    if verbose:
                        print(json.dumps(figures), file=sys.stderr, flush=True)
        for mode, (port, _, _) in running.items():
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30).json()
            out[mode]["gallery_after"] = ready["gallery"]  # type: ignore[index]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=20.0, help="per cell")
    parser.add_argument("--modes", default="off,on,off-1t,on-1t", help=", ".join(MODES))
    parser.add_argument("--people", type=int, default=100, help="LFW people in the gallery")
    parser.add_argument("--quiet", action="store_true", help="no per-cell lines on stderr")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    people = lfw_people(args.people)
    clients = [int(c) for c in args.clients.split(",")]
    report: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "nice": os.nice(0),
            "load_before": [round(x, 2) for x in os.getloadavg()],
        },
        "seconds_per_cell": args.seconds,
        "requests": "POST /v1/subjects/{id}/faces (one LFW photo) and POST /v1/identify "
        "(another photo of a gallery person); 250x250, one face",
        "keys": len(KEYS),
    }
    report.update(run_matrix(modes, clients, args.seconds, people, not args.quiet))
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
