"""SIGKILL at random moments during enrolls, deletes and a batch index job, 20 rounds: every
acknowledged write survives, unacknowledged ones are all or nothing, deleted subjects never come
back, and the FAISS index equals the store."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.backends import Distributed, assert_index_equals_store, backend_env, open_backend_gallery
from tests.conftest import DATA
from tests.test_server import HEADERS, free_port, server

GLINT = DATA / "glint24_aligned"


def crash_env(gallery: Path, allowed: Path) -> dict[str, str]:
    """Index files written often (so kills land during saves too), a folder a job may index."""
    return {
        "MARGINFACE_GALLERY__FLUSH_INTERVAL_S": "0.5",
        "MARGINFACE_JOBS__ALLOWED_ROOTS": json.dumps([str(allowed)]),
        "MARGINFACE_JOBS__WORK_DIR": str(gallery.parent / "jobs"),
        "MARGINFACE_INTRA_OP_THREADS": "1",
    }


@pytest.mark.slow
def test_twenty_sigkills_lose_nothing_acknowledged(
    tmp_path: Path, gallery_backend: Distributed | None
) -> None:
    rng = random.Random(7)
    gallery = tmp_path / "gallery"
    people = sorted(p.name for p in GLINT.iterdir() if p.is_dir())
    crops = {p: sorted((GLINT / p).glob("*.jpg"), key=lambda f: int(f.stem)) for p in people}
    # a folder for the batch index job: 4 people x 5 crops
    allowed = tmp_path / "incoming"
    for p in people[:4]:
        (allowed / "batch" / f"job-{p}").mkdir(parents=True)
        for f in crops[p][:5]:
            (allowed / "batch" / f"job-{p}" / f.name).write_bytes(f.read_bytes())

    acknowledged: dict[str, list[int]] = {}  # subject -> face ids acknowledged
    deleted: set[str] = set()  # acknowledged deletes
    # deletes sent but not acknowledged (the kill can land after the commit, before the reply):
    # such a subject may be gone or intact, never half-deleted
    delete_sent: set[str] = set()
    attempted: dict[str, int] = {}  # subject -> files in its one enroll request
    port = free_port()
    counter = 0
    env = {**crash_env(gallery, allowed), **backend_env(gallery_backend)}
    for round_ in range(20):
        stop = threading.Event()

        def stream(round_: int, stop: threading.Event) -> None:
            nonlocal counter
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=30
            ) as c:
                if round_ % 5 == 0:
                    c.post("/v1/jobs/index", data={"path": str(allowed / "batch")})
                while not stop.is_set():
                    counter += 1
                    subject = f"s{counter}"
                    person = people[counter % len(people)]
                    try:
                        if (
                            c.post("/v1/subjects", json={"id": subject, "name": person}).status_code
                            != 201
                        ):
                            continue
                        files = [
                            ("files", (f.name, f.read_bytes(), "image/jpeg"))
                            for f in crops[person][counter % 10 : counter % 10 + 3]
                        ]
                        attempted[subject] = len(files)
                        r = c.post(
                            f"/v1/subjects/{subject}/faces", files=files, params={"aligned": "true"}
                        )
                        if r.status_code == 201:
                            acknowledged[subject] = [f["face_id"] for f in r.json()["faces"]]
                        candidates = sorted(set(acknowledged) - delete_sent)
                        if counter % 4 == 0 and candidates:
                            victim = rng.choice(candidates)
                            delete_sent.add(victim)
                            if c.delete(f"/v1/subjects/{victim}").status_code == 200:
                                deleted.add(victim)
                    except httpx.TransportError:
                        return

        with server(gallery, port, env) as proc:
            worker = threading.Thread(target=stream, args=(round_, stop))
            worker.start()
            # kill at a random moment, but only once this round has done some writes, so that a
            # slow or busy machine still exercises every round
            before = len(acknowledged)
            deadline = time.monotonic() + 60
            while len(acknowledged) < before + 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            stop.set()
            worker.join(timeout=30)

    with (
        server(gallery, port, env),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=30) as c,
    ):
        ready = c.get("/readyz").json()["gallery"]
        assert ready["faces"] == ready["indexed"]
        subjects = {
            s["id"]: s["face_count"]
            for s in c.get("/v1/subjects", params={"limit": 500}).json()["items"]
        }
        total = c.get("/v1/subjects", params={"limit": 1}).json()["total"]
        page, offset = subjects, 500
        while len(subjects) < total:
            page = {
                s["id"]: s["face_count"]
                for s in c.get("/v1/subjects", params={"limit": 500, "offset": offset}).json()[
                    "items"
                ]
            }
            subjects.update(page)
            offset += 500
    assert len(acknowledged) > 20, "the stream did too little to prove anything"
    for subject, face_ids in acknowledged.items():
        if subject in deleted:
            assert subject not in subjects, f"deleted {subject} came back"
        elif subject in delete_sent:
            assert subjects.get(subject) in (None, len(face_ids)), f"{subject}: half a delete"
        else:
            assert subjects.get(subject) == len(face_ids), subject
    for subject, n in attempted.items():
        if subject in subjects and subject not in acknowledged:
            assert subjects[subject] in (0, n), f"{subject}: half an enrollment"
    job_subjects = [s for s in subjects if s.startswith("job-")]
    assert all(subjects[s] <= 5 for s in job_subjects)  # re-runs never duplicate
    g = open_backend_gallery(gallery_backend, gallery)
    try:
        assert_index_equals_store(g)
    finally:
        g.close()
