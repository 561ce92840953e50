"""Many clients enroll, delete and identify at once against a real uvicorn process: no 5xx, no
lost or duplicated faces, and no search returns a subject deleted before it started."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.backends import Distributed, backend_env
from tests.conftest import DATA
from tests.test_server import HEADERS, free_port, server

GLINT = DATA / "glint24_aligned"


@pytest.mark.slow
def test_concurrent_enroll_delete_identify(
    tmp_path: Path, gallery_backend: Distributed | None
) -> None:
    people = sorted(p.name for p in GLINT.iterdir() if p.is_dir())
    crops = {p: sorted((GLINT / p).glob("*.jpg"), key=lambda f: int(f.stem)) for p in people}
    port = free_port()
    lock = threading.Lock()
    enrolled: dict[str, list[int]] = {}
    deleted_at: dict[str, float] = {}  # subject -> when its delete was acknowledged
    errors: list[str] = []
    latencies: list[float] = []
    stop_at = time.monotonic() + 20

    def reported(work: Callable[[int], None]) -> Callable[[int], None]:
        """A client thread's exception (a refused connection, a timeout) becomes an error the
        test reports, instead of a thread that dies silently and leaves nothing to report."""

        def run(i: int) -> None:
            try:
                work(i)
            except Exception as exc:
                with lock:
                    errors.append(f"{work.__name__} {i}: {exc.__class__.__name__}: {exc}")

        return run

    @reported
    def writer(w: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=60) as c:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                subject, person = f"w{w}-{n}", people[(w * 7 + n) % len(people)]
                t = time.perf_counter()
                r = c.post("/v1/subjects", json={"id": subject, "name": person})
                files = [
                    ("files", (f.name, f.read_bytes(), "image/jpeg"))
                    for f in crops[person][n % 8 : n % 8 + 2]
                ]
                r2 = c.post(
                    f"/v1/subjects/{subject}/faces", files=files, params={"aligned": "true"}
                )
                with lock:
                    latencies.append(time.perf_counter() - t)
                    if r.status_code != 201 or r2.status_code != 201:
                        errors.append(f"enroll {r.status_code} {r2.status_code} {r2.text[:100]}")
                        continue
                    enrolled[subject] = [f["face_id"] for f in r2.json()["faces"]]
                if n % 3 == 0:
                    r = c.delete(f"/v1/subjects/{subject}")
                    with lock:
                        if r.status_code == 200:
                            deleted_at[subject] = time.monotonic()
                        else:
                            errors.append(f"delete {r.status_code}")

    @reported
    def reader(i: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=60) as c:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                probe = crops[people[(i + n) % len(people)]][15]
                started = time.monotonic()
                t = time.perf_counter()
                r = c.post(
                    "/v1/identify",
                    files={"image": ("p.jpg", probe.read_bytes(), "image/jpeg")},
                    data={"aligned": "true", "top_k": "10"},
                )
                with lock:
                    latencies.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        errors.append(f"identify {r.status_code} {r.text[:100]}")
                        continue
                    gone = {s for s, at in deleted_at.items() if at < started}
                for cand in r.json()["faces"][0]["candidates"]:
                    if cand["subject_id"] in gone:
                        errors.append(f"identify returned {cand['subject_id']}, deleted before")

    with server(tmp_path / "gallery", port, backend_env(gallery_backend)):
        started = time.perf_counter()
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        threads += [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=60) as c:
            total = c.get("/v1/subjects", params={"limit": 1}).json()["total"]
            items = c.get("/v1/subjects", params={"limit": 500}).json()["items"]
            ready = c.get("/readyz").json()["gallery"]
    assert not errors, errors[:10]
    assert latencies, "no request completed"
    alive = {s: ids for s, ids in enrolled.items() if s not in deleted_at}
    assert total == len(alive) and len(items) == min(total, 500)
    assert {s["id"]: s["face_count"] for s in items} == {s: len(v) for s, v in alive.items()}
    assert ready["faces"] == ready["indexed"] == sum(len(v) for v in alive.values())
    lat = np.asarray(latencies) * 1000
    print(
        json.dumps(
            {
                "requests_per_s": round(len(lat) / elapsed, 1),
                "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "requests": len(lat),
                "clients": 8,
                "backend": "distributed" if gallery_backend else "embedded",
            }
        )
    )


@pytest.mark.slow
def test_a_full_embedding_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    """Backpressure: a tiny queue and a slow batch fill up; the overflow gets 503 overloaded
    with Retry-After at once instead of queueing without bound."""
    port = free_port()
    env = {
        "MARGINFACE_EMBEDDER__BATCHING": "true",
        "MARGINFACE_EMBEDDER__QUEUE_MAX": "1",
        "MARGINFACE_EMBEDDER__BATCH_WORKERS": "1",
        "MARGINFACE_EMBEDDER__BATCH_MAX_SIZE": "1",
    }
    photo = (DATA / "lfw/images/Colin_Powell/Colin_Powell_0001.jpg").read_bytes()
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=60) as c:
            for _ in range(3):
                r = c.post("/v1/embed", files={"image": ("p.jpg", photo, "image/jpeg")})
                with lock:
                    results.append(r)

    with server(tmp_path / "gallery", port, env):
        threads = [threading.Thread(target=client) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    statuses = {r.status_code for r in results}
    assert statuses <= {200, 503}, statuses
    overloaded = [r for r in results if r.status_code == 503]
    assert overloaded, "24 clients never filled a queue of 1"
    assert sum(r.status_code == 200 for r in results) > 0
    for r in overloaded:
        assert r.json()["error"]["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1


@pytest.mark.slow
def test_too_many_requests_in_flight_get_503_and_probes_still_answer(tmp_path: Path) -> None:
    """Backpressure without the batcher (the CPU default): past the in-flight limit the API
    answers 503 overloaded with Retry-After at once; /healthz stays reachable."""
    port = free_port()
    photo = (DATA / "detection/insightface/t1.jpg").read_bytes()
    results: list[httpx.Response] = []
    health: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=60) as c:
            for _ in range(2):
                r = c.post("/v1/detect", files={"image": ("t1.jpg", photo, "image/jpeg")})
                with lock:
                    results.append(r)
                health.append(c.get("/healthz").status_code)

    with server(tmp_path / "gallery", port, {"MARGINFACE_LIMITS__MAX_INFLIGHT_REQUESTS": "2"}):
        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert {r.status_code for r in results} <= {200, 503}
    overloaded = [r for r in results if r.status_code == 503]
    assert overloaded and any(r.status_code == 200 for r in results)
    assert all(r.json()["error"]["code"] == "overloaded" for r in overloaded)
    assert all(int(r.headers["retry-after"]) >= 1 for r in overloaded)
    assert set(health) == {200}
