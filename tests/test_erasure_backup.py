"""Erasure (a deleted person is gone from search, store file, WAL, index file and the next
backup) and backup/restore round trip while a real server runs."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient

from service.gallery.embedded import embedded_gallery
from service.gallery.index import INDEX_FILE
from service.gallery.sqlite import STORE_FILE
from tests.conftest import API_KEY, ROOT, lfw, read
from tests.test_server import HEADERS, free_port, server


def enroll(client: TestClient | httpx.Client, subject: str, photos: list[Path]) -> list[int]:
    assert client.post("/v1/subjects", json={"id": subject, "name": subject}).status_code == 201
    files = [("files", (p.name, read(p), "image/jpeg")) for p in photos]
    r = client.post(f"/v1/subjects/{subject}/faces", files=files)
    assert r.status_code == 201, r.text
    return [f["face_id"] for f in r.json()["faces"]]


def stored_vectors(gallery: Path, subject: str) -> list[np.ndarray]:
    """A subject's embeddings read from the store file with sqlite3 (the server keeps running)."""
    with sqlite3.connect(f"file:{gallery / STORE_FILE}?mode=ro", uri=True) as conn:
        found = conn.execute(
            "SELECT embedding FROM faces WHERE subject_id=?", (subject,)
        ).fetchall()
    return [np.frombuffer(r[0], dtype=np.float32) for r in found]


def on_disk(gallery: Path) -> bytes:
    return b"".join(
        p.read_bytes()
        for p in (gallery / STORE_FILE, gallery / (STORE_FILE + "-wal"), gallery / INDEX_FILE)
        if p.exists()
    )


def test_a_deleted_person_is_gone_everywhere(client: TestClient, tmp_path: Path) -> None:
    gallery_dir = tmp_path / "gallery"  # the `client` fixture's gallery
    powell = [lfw("Colin_Powell", n) for n in (1, 2, 3)]
    enroll(client, "powell", powell)
    enroll(client, "blair", [lfw("Tony_Blair", 1)])
    powell_vectors = stored_vectors(gallery_dir, "powell")  # straight from the store file
    blair_vectors = stored_vectors(gallery_dir, "blair")
    before = on_disk(gallery_dir)
    assert any(v.tobytes() in before for v in powell_vectors)  # so the check below can fail

    r = client.delete("/v1/subjects/powell")
    assert r.status_code == 200 and r.json()["faces_deleted"] == 3

    for n in (1, 2, 4, 5):
        r = client.post(
            "/v1/identify", files={"image": ("p.jpg", read(lfw("Colin_Powell", n)), "image/jpeg")}
        )
        assert r.status_code == 200
        for f in r.json()["faces"]:
            assert all(c["subject_id"] != "powell" for c in f["candidates"])
    assert client.get("/v1/subjects/powell").status_code == 404
    deadline = time.monotonic() + 10  # the flusher erases off the request path, at once
    while any(v.tobytes()[:64] in on_disk(gallery_dir) for v in powell_vectors):
        assert time.monotonic() < deadline, "an erased embedding is still on disk"
        time.sleep(0.1)
    backup = client.get("/v1/gallery/export")
    assert backup.status_code == 200
    assert all(v.tobytes() not in backup.content for v in powell_vectors)
    assert blair_vectors[0].tobytes() in backup.content  # the backup does hold the others


def test_export_while_serving_then_import_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "gallery"
    port = free_port()
    people = {
        "powell": [lfw("Colin_Powell", n) for n in (1, 2)],
        "blair": [lfw("Tony_Blair", n) for n in (1, 2)],
        "serena": [lfw("Serena_Williams", n) for n in (1, 2)],
    }
    backup = tmp_path / "backup.sqlite3"
    cli = [sys.executable, "-m", "service.cli"]
    with (
        server(source, port),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=60) as c,
    ):
        for subject, photos in people.items():
            enroll(c, subject, photos)
        done = subprocess.run(
            [*cli, "gallery", "export", str(backup), "--gallery", str(source), "--json"],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout)["faces"] == 6
        probe = read(lfw("Tony_Blair", 3))
        expected = c.post("/v1/identify", files={"image": ("p.jpg", probe, "image/jpeg")}).json()
        enroll(c, "late", [lfw("George_W_Bush", 1)])  # after the backup: not in it

    restored = tmp_path / "restored"
    args = [*cli, "gallery", "import", str(backup), "--gallery", str(restored), "--json"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    again = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=120)
    assert again.returncode == 2 and b"not empty" in again.stdout + again.stderr

    a = embedded_gallery(source, model_id="x@y", embedding_dim=128)
    b = embedded_gallery(restored, model_id="x@y", embedding_dim=128)
    try:
        for subject in people:
            ids_a, vecs_a = a.subject_embeddings(subject, model_id=a.model_id)
            ids_b, vecs_b = b.subject_embeddings(subject, model_id=b.model_id)
            np.testing.assert_array_equal(ids_a, ids_b)
            np.testing.assert_array_equal(vecs_a, vecs_b)
        assert b.stats()["faces"] == b.stats()["indexed"] == 6
    finally:
        a.close()
        b.close()
    with (
        server(restored, port),
        httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": API_KEY}, timeout=60
        ) as c,
    ):
        got = c.post("/v1/identify", files={"image": ("p.jpg", probe, "image/jpeg")}).json()
        assert got["faces"] == expected["faces"]
        assert c.get("/v1/subjects/late").status_code == 404
