"""Issue 26, finding 2: the store file deleted or truncated under a running server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest

from service.errors import GalleryCorrupted
from service.gallery import backends
from service.gallery.index import INDEX_FILE
from service.gallery.sqlite import STORE_FILE
from service.settings import GallerySettings
from tests.backends import Distributed
from tests.conftest import API_KEY, lfw, read
from tests.gallery.test_gallery import DIM, MODEL, face, unit
from tests.test_server import free_port, serve_command, server

HEADERS = {"X-API-Key": API_KEY}


def enroll(client: httpx.Client, subject: str, photos: list[Path]) -> httpx.Response:
    """Create a subject (if new) and enroll photos through a real server."""
    client.post("/v1/subjects", json={"id": subject, "name": subject})
    files = [("files", (p.name, read(p), "image/jpeg")) for p in photos]
    return client.post(f"/v1/subjects/{subject}/faces", files=files)


# ---- (b) the store file deleted or truncated under a running server


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_store_file_lost_under_a_running_server_refuses_writes_and_restarts(
    tmp_path: Path, damage: str
) -> None:
    """Main: with gallery.sqlite3 deleted (or truncated), writes kept answering 201 into the
    lost file and /readyz stayed ready; at restart the empty store was opened as a new gallery
    and index.faiss was rebuilt from it, overwriting the last copy of every vector."""
    gallery = tmp_path / "gallery"
    port = free_port()
    with (  # first a gallery whose saved index holds vectors
        server(gallery, port),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS) as c,
    ):
        assert enroll(c, "powell", [lfw("Colin_Powell", 1)]).status_code == 201
    port = free_port()
    with server(gallery, port) as proc:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS) as c:
            assert c.get("/readyz").json()["gallery"]["indexed"] == 1
            if damage == "deleted":
                (gallery / STORE_FILE).unlink()
            else:
                os.truncate(gallery / STORE_FILE, 0)
            r = enroll(c, "blair", [lfw("Tony_Blair", 1)])
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "gallery_corrupted", r.text
            ready = c.get("/readyz")
            assert ready.status_code == 503, ready.text
        proc.terminate()
        proc.wait(timeout=30)
    index_before = (gallery / INDEX_FILE).read_bytes()
    restart = subprocess.run(
        [*serve_command(free_port(), gallery), "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "MARGINFACE_AUTH__API_KEYS": json.dumps([API_KEY])},
    )
    assert restart.returncode != 0
    assert "gallery_corrupted" in restart.stdout, restart.stdout + restart.stderr[-2000:]
    assert (gallery / INDEX_FILE).read_bytes() == index_before  # the last copy is kept


def test_an_emptied_database_beside_a_full_collection_is_refused(
    distributed: Distributed,
) -> None:
    """The distributed twin: at start-up an empty PostgreSQL store was reconciled against the
    Milvus collection, deleting every vector in it."""
    settings = GallerySettings(**distributed.settings())
    rng = np.random.default_rng(27)
    g = backends.open_gallery(settings, model_id=MODEL, embedding_dim=DIM)
    g.create_subject("s", "S", {})
    g.add_faces("s", [face(v, f"f{i}") for i, v in enumerate(unit(rng, 3))], model_id=MODEL)
    g.close()
    with psycopg.connect(distributed.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE faces, subjects CASCADE")
    with pytest.raises(GalleryCorrupted):
        backends.open_gallery(settings, model_id=MODEL, embedding_dim=DIM)
    kept = backends.open_gallery(settings, model_id=MODEL, embedding_dim=DIM, check_index=False)
    try:
        assert kept.stats()["indexed"] == 3  # nothing was erased from the collection
    finally:
        kept.close()
