"""The distributed backend with real parts: a PostgreSQL server, a milvus-lite server process,
the real CLI, two real API processes. What the parametrised gallery suite cannot show."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import BackendUnavailable, SchemaOutdated
from service.gallery import Gallery, NewFace, backends
from service.gallery.embedded import embedded_gallery
from service.gallery.postgres import PostgresStore, latest_version, upgrade
from service.gallery.records import FaceRecord, Subject
from service.settings import GallerySettings
from service.vision.pipeline import FacePipeline
from tests.backends import Distributed, Postgres, postgres_server, start_milvus
from tests.conftest import API_KEY, DATA, ROOT, lfw, make_settings, read
from tests.test_server import HEADERS, free_port, server

MODEL = "sface-2021dec@test"
DIM = 128
GLINT = DATA / "glint24_aligned"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `marginface ...` as a user would (models from the repo)."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args]
        + ([] if args[0] == "db" else ["--models-dir", str(ROOT / "models")]),
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_db_upgrade_is_needed_idempotent_and_refuses_a_newer_schema(postgres: Postgres) -> None:
    dsn = postgres.new_database()
    with pytest.raises(SchemaOutdated, match="marginface db upgrade"):
        PostgresStore(dsn, model_id=MODEL, embedding_dim=DIM)
    first = cli("db", "upgrade", "--dsn", dsn, "--json")
    assert first.returncode == 0, first.stderr
    every = list(range(1, latest_version() + 1))
    assert json.loads(first.stdout) == {"from": 0, "to": latest_version(), "applied": every}
    again = cli("db", "upgrade", "--dsn", dsn, "--json")
    assert json.loads(again.stdout)["applied"] == []
    PostgresStore(dsn, model_id=MODEL, embedding_dim=DIM).close()  # now it opens
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)")
    newer = cli("db", "upgrade", "--dsn", dsn, "--json")
    assert newer.returncode == 2 and "schema_outdated" in newer.stdout + newer.stderr
    with pytest.raises(SchemaOutdated, match="version 99"):
        PostgresStore(dsn, model_id=MODEL, embedding_dim=DIM)


def test_upgrading_a_version_1_database_keeps_its_data(postgres: Postgres) -> None:
    dsn = postgres.new_database()
    assert upgrade(dsn, upto=1)["applied"] == [1]  # what an earlier release left
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO subjects VALUES ('kept', 'Kept', '{\"a\": 1}', 1.0)")
    with pytest.raises(SchemaOutdated, match="version 1"):
        PostgresStore(dsn, model_id=MODEL, embedding_dim=DIM)
    r = cli("db", "upgrade", "--dsn", dsn, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["applied"] == list(range(2, latest_version() + 1))
    store = PostgresStore(dsn, model_id=MODEL, embedding_dim=DIM)
    try:
        kept = store.get_subject("kept")
        assert (kept.name, kept.metadata, kept.created_at) == ("Kept", {"a": 1}, 1.0)
    finally:
        store.close()


def clustered_gallery(g: Gallery, subjects: int, per_subject: int, seed: int = 0) -> None:
    """Bulk-load people whose faces cluster around a centre (like real embeddings do)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((subjects, DIM)).astype(np.float32)
    g.import_subjects(
        [Subject(f"p{i:05d}", f"Person {i}", {"i": i}, 1000.0 + i) for i in range(subjects)]
    )
    rows = []
    for i in range(subjects):
        for j in range(per_subject):
            v = centres[i] + rng.normal(0, 0.6, DIM).astype(np.float32)
            v /= np.linalg.norm(v)
            face = FaceRecord(
                i * per_subject + j + 1, f"p{i:05d}", MODEL, [0, 0, 1, 1], 0.9, f"h{i}-{j}", 1.0
            )
            rows.append((face, v))
    for start in range(0, len(rows), 5000):
        g.import_faces(rows[start : start + 5000])  # indexed as they are imported
    g.flush()


@pytest.mark.slow
def test_migrate_round_trips_10k_faces_with_identical_searches(
    tmp_path: Path, distributed: Distributed
) -> None:
    source_dir, back_dir = tmp_path / "source", tmp_path / "back"
    source = embedded_gallery(source_dir, model_id=MODEL, embedding_dim=DIM)
    clustered_gallery(source, subjects=2000, per_subject=5)
    source.close()
    env = distributed.env()
    to_distributed = ["gallery", "migrate", "--to", "distributed", "--gallery", str(source_dir)]
    there = cli(*to_distributed, "--json", env=env)
    assert there.returncode == 0, there.stdout + there.stderr
    report = json.loads(there.stdout)
    assert (report["copied"]["subjects"], report["copied"]["faces"]) == (2000, 10_000)
    assert report["check"]["ok"] and report["check"]["identical_searches"] == 100
    again = cli(*to_distributed, "--json", env=env)
    assert again.returncode == 2 and "not empty" in again.stdout + again.stderr  # never merges
    to_embedded = ["gallery", "migrate", "--to", "embedded", "--gallery", str(back_dir)]
    back = cli(*to_embedded, "--probes", "200", "--json", env=env)
    assert back.returncode == 0, back.stdout + back.stderr
    assert json.loads(back.stdout)["check"]["identical_searches"] == 200

    a = embedded_gallery(source_dir, model_id=MODEL, embedding_dim=DIM)
    b = embedded_gallery(back_dir, model_id=MODEL, embedding_dim=DIM)
    try:  # the round trip kept everything: subjects, metadata, face ids, embeddings bit for bit
        assert [s for p in a.iter_subjects(500) for s in p] == [
            s for p in b.iter_subjects(500) for s in p
        ]
        ids_a, vecs_a, _ = a._store.all_embeddings()
        ids_b, vecs_b, _ = b._store.all_embeddings()
        np.testing.assert_array_equal(ids_a, ids_b)
        assert vecs_a.tobytes() == vecs_b.tobytes()
        probes = vecs_a[::97] + 0.01
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        assert a.search(probes, top_k=5, model_id=MODEL) == b.search(
            probes, top_k=5, model_id=MODEL
        )
    finally:
        a.close()
        b.close()


def test_a_new_database_never_meets_an_old_collection(postgres: Postgres, milvus_uri: str) -> None:
    """Face ids restart at 1 in every new database: two galleries (a recreated database, or two
    deployments given the same prefix on one Milvus) sharing a collection would overwrite each
    other's face 1. The gallery id that PostgreSQL records keeps their collections apart."""
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((2, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    galleries = []
    for _ in range(2):  # both open before either enrolls
        dsn = postgres.new_database()
        upgrade(dsn)
        settings = GallerySettings(**Distributed(dsn, milvus_uri, "samename").settings())
        galleries.append(backends.open_gallery(settings, model_id=MODEL, embedding_dim=DIM))
    try:
        for g, vector in zip(galleries, vectors, strict=True):
            g.create_subject("s", "S", {})
            [(face_id, _)] = g.add_faces(
                "s", [NewFace(vector, (0, 0, 1, 1), 0.9, "x")], model_id=MODEL
            )
            assert face_id == 1
        for g, vector in zip(galleries, vectors, strict=True):
            (top,) = g.search(vector[None], top_k=1, model_id=MODEL)
            assert top[0].score == pytest.approx(1.0, abs=1e-5)  # its own face 1, intact
        names = [g.stats()["index_factory"] for g in galleries]
        assert names[0] != names[1]
    finally:
        for g in galleries:
            g.close()


def test_reconcile_command_repairs_the_shared_index(distributed: Distributed) -> None:
    settings = GallerySettings(**distributed.settings())
    g = backends.open_gallery(settings, model_id=MODEL, embedding_dim=DIM)
    clustered_gallery(g, subjects=20, per_subject=3)
    g._index.remove([1, 2, 3, 4])  # a lost index write
    g.close()
    r = cli("gallery", "reconcile", "--json", env=distributed.env())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"replayed": 4, "removed": 0, "faces": 60}


def test_an_enrollment_milvus_missed_is_acknowledged_then_replayed(
    tmp_path: Path, postgres: Postgres
) -> None:
    """Milvus goes down: an enrollment is still acknowledged (PostgreSQL holds it), searches
    answer 503 backend_unavailable rather than a wrong answer, and once Milvus is back the
    flusher replays what it missed."""
    root, port = tmp_path / "milvus", free_port()
    milvus = start_milvus(root, port)
    dsn = postgres.new_database()
    upgrade(dsn)
    settings = GallerySettings(
        backend="distributed",
        postgres_dsn=dsn,
        milvus_uri=f"http://127.0.0.1:{port}",
        milvus_collection="outage",
        milvus_timeout_s=3,
    )
    rng = np.random.default_rng(8)
    v = rng.standard_normal((2, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    g = backends.open_gallery(settings, model_id=MODEL, embedding_dim=DIM)
    try:
        g.create_subject("a", "A", {})
        g.add_faces("a", [NewFace(v[0], (0, 0, 1, 1), 0.9, "one")], model_id=MODEL)
        os.killpg(milvus.pid, signal.SIGKILL)  # an outage, not a shutdown
        milvus.wait()
        [(second, created)] = g.add_faces(
            "a", [NewFace(v[1], (0, 0, 1, 1), 0.9, "two")], model_id=MODEL
        )
        assert created and g.counts() == (1, 2)  # acknowledged: the store has it
        with pytest.raises(BackendUnavailable):
            g.search(v[1:], top_k=1, model_id=MODEL)
        milvus = start_milvus(root, port)
        for _ in range(40):  # what the server's flusher does every flush_interval_s; the
            if not g.flush():  # client's first calls after the outage fail while it reconnects
                break
            time.sleep(0.5)
        ids, vectors, _ = g._store.all_embeddings()
        index_ids, index_vectors = g._index.vectors()
        np.testing.assert_array_equal(ids, index_ids)
        np.testing.assert_allclose(vectors, index_vectors, atol=1e-6)
        (top,) = g.search(v[1:], top_k=1, model_id=MODEL)
        assert top[0].face_id == second and top[0].score > 0.999
    finally:
        g.close()
        os.killpg(milvus.pid, signal.SIGTERM)
        milvus.wait()


def test_a_postgres_outage_answers_503_and_the_replica_reconnects(
    tmp_path: Path, milvus_uri: str, pipeline: FacePipeline
) -> None:
    with postgres_server() as pg:  # a server of its own: this test stops it
        dsn = pg.new_database()
        upgrade(dsn)
        gallery = Distributed(dsn, milvus_uri, "pg" + uuid.uuid4().hex[:8]).settings()
        app = create_app(make_settings(tmp_path, gallery=gallery), pipeline=pipeline)
        with TestClient(app, headers={"X-API-Key": API_KEY}) as c:
            assert c.post("/v1/subjects", json={"id": "a", "name": "A"}).status_code == 201
            pg.stop()
            for request in (
                lambda: c.get("/v1/subjects/a"),  # the open connection is gone
                lambda: c.post("/v1/subjects", json={"id": "b", "name": "B"}),  # refused
            ):
                r = request()
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "backend_unavailable"
                assert r.headers["retry-after"] == "1"
            pg.start()
            assert c.get("/v1/subjects/a").json()["name"] == "A"  # reconnected by itself
            assert c.post("/v1/subjects", json={"id": "b", "name": "B"}).status_code == 201
            assert c.get("/v1/subjects").json()["total"] == 2  # nothing half-written


def test_export_of_a_distributed_gallery_says_what_to_use_instead(
    tmp_path: Path, distributed: Distributed, pipeline: FacePipeline
) -> None:
    settings = make_settings(tmp_path, gallery=distributed.settings())
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}) as c:
        r = c.get("/v1/gallery/export")
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "unsupported_by_backend"
        assert "pg_dump" in r.json()["error"]["message"]
        assert c.get("/readyz").json()["gallery"]["index_factory"].startswith("milvus:")


def test_erasure_reaches_postgres_and_milvus(
    tmp_path: Path, distributed: Distributed, pipeline: FacePipeline
) -> None:
    """The logical half of erasure on the distributed backend (byte-level wiping of
    PostgreSQL's WAL and Milvus's segments is not promised: docs/security.md)."""
    settings = make_settings(tmp_path, gallery=distributed.settings())
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}) as c:
        for subject, photos in {
            "powell": [lfw("Colin_Powell", n) for n in (1, 2, 3)],
            "blair": [lfw("Tony_Blair", 1)],
        }.items():
            assert c.post("/v1/subjects", json={"id": subject, "name": subject}).status_code == 201
            files = [("files", (p.name, read(p), "image/jpeg")) for p in photos]
            assert c.post(f"/v1/subjects/{subject}/faces", files=files).status_code == 201
        powell_ids = [f["id"] for f in c.get("/v1/subjects/powell/faces").json()]
        assert c.delete("/v1/subjects/powell").status_code == 200
        for n in (1, 4):
            r = c.post(
                "/v1/identify",
                files={"image": ("p.jpg", read(lfw("Colin_Powell", n)), "image/jpeg")},
            )
            assert all(
                cand["subject_id"] != "powell"
                for f in r.json()["faces"]
                for cand in f["candidates"]
            )
    g = backends.open_gallery(
        GallerySettings(**distributed.settings()), model_id="x", embedding_dim=1
    )
    try:
        index: Any = g._index
        assert not set(powell_ids) & set(g.face_ids().tolist())
        assert not set(powell_ids) & set(index.ids().tolist())
        assert len(index.ids()) == 1  # blair's face stays
    finally:
        g.close()


def send(client: httpx.Client, path: str, files: list[Any], into: list[httpx.Response]) -> None:
    """POST aligned crops (from a thread), keeping the response."""
    into.append(client.post(path, files=files, params={"aligned": "true"}))


@pytest.mark.slow
def test_two_replicas_share_one_gallery(tmp_path: Path, distributed: Distributed) -> None:
    """Two API processes on different ports, one PostgreSQL and one Milvus: a face enrolled
    through one replica is found through the other, and a mixed load loses or duplicates
    nothing."""
    people = sorted(p.name for p in GLINT.iterdir() if p.is_dir())
    crops = {p: sorted((GLINT / p).glob("*.jpg"), key=lambda f: int(f.stem)) for p in people}
    ports = [free_port(), free_port()]
    incoming = tmp_path / "incoming"
    for subject, person in (("job-a", "Colin_Powell"), ("job-b", "Tony_Blair")):
        (incoming / subject).mkdir(parents=True)
        for n in (1, 2):  # whole LFW photos: the job detects and aligns
            (incoming / subject / f"{n}.jpg").write_bytes(read(lfw(person, n)))
    env = {
        **distributed.env(),
        "MARGINFACE_INTRA_OP_THREADS": "1",
        "MARGINFACE_JOBS__ALLOWED_ROOTS": json.dumps([str(incoming)]),
    }
    errors: list[str] = []
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    with (
        server(tmp_path / "gallery-a", ports[0], env),
        server(tmp_path / "gallery-b", ports[1], env),
    ):
        clients = [
            httpx.Client(base_url=f"http://127.0.0.1:{p}", headers=HEADERS, timeout=60)
            for p in ports
        ]

        def enroll(worker: int) -> None:
            """Each person enrolled through one replica, checked through the other; the same
            photo is also sent through both at once (enrolled once)."""
            mine = people[worker::4]
            for n, person in enumerate(mine):
                via, other = clients[(worker + n) % 2], clients[(worker + n + 1) % 2]
                r = via.post("/v1/subjects", json={"id": person, "name": person})
                if r.status_code != 201:
                    errors.append(f"create {r.status_code}")
                    continue
                files = [
                    ("files", (f.name, f.read_bytes(), "image/jpeg")) for f in crops[person][:3]
                ]
                first = crops[person][0]
                same = [("files", (first.name, first.read_bytes(), "image/jpeg"))]
                results: list[httpx.Response] = []
                t = threading.Thread(
                    target=send, args=(other, f"/v1/subjects/{person}/faces", same, results)
                )
                t.start()
                r = via.post(
                    f"/v1/subjects/{person}/faces", files=files, params={"aligned": "true"}
                )
                t.join()
                # the same photos twice at once: one creates them (201), the other finds them
                # there (200, created false), never a duplicate
                if sorted([r.status_code, results[0].status_code]) not in ([200, 201], [201, 201]):
                    errors.append(f"enroll {r.status_code} {results[0].status_code}")
                    continue
                with lock:
                    acknowledged[person] = 3
                # one of the photos just enrolled through the other replica: its own face must
                # come back first (a recognition miss cannot hide a consistency miss)
                probe = crops[person][1].read_bytes()
                found = other.post(
                    "/v1/identify",
                    files={"image": ("p.jpg", probe, "image/jpeg")},
                    data={"aligned": "true"},
                ).json()["faces"][0]
                top = found["candidates"][0] if found["candidates"] else {}
                if top.get("subject_id") != person or top.get("score", 0) < 0.999:
                    errors.append(f"{person} enrolled through one replica, not via other: {found}")

        workers = [threading.Thread(target=enroll, args=(w,)) for w in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors, errors[:5]
        assert len(acknowledged) == len(people)
        for c in clients:
            subjects = c.get("/v1/subjects", params={"limit": 100}).json()["items"]
            assert {s["id"]: s["face_count"] for s in subjects} == acknowledged
            ready = c.get("/readyz").json()["gallery"]
            assert ready["faces"] == ready["indexed"] == sum(acknowledged.values())
        # a delete through one replica is seen by the other at once
        victim = people[0]
        assert clients[0].delete(f"/v1/subjects/{victim}").status_code == 200
        assert clients[1].get(f"/v1/subjects/{victim}").status_code == 404
        r = (
            clients[1]
            .post(
                "/v1/identify",
                files={"image": ("p.jpg", crops[victim][10].read_bytes(), "image/jpeg")},
                data={"aligned": "true"},
            )
            .json()["faces"][0]
        )
        assert all(c["subject_id"] != victim for c in r["candidates"])
        # a batch job accepted by one replica is followed (and listed) through the other
        r = clients[0].post("/v1/jobs/index", data={"path": str(incoming)})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while (job := clients[1].get(f"/v1/jobs/{job_id}").json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "succeeded" and job["summary"]["enrolled"] == 4, job
        assert job_id in [j["id"] for j in clients[1].get("/v1/jobs").json()]
        assert clients[1].get("/v1/subjects/job-a").json()["face_count"] == 2
        for c in clients:
            c.close()
