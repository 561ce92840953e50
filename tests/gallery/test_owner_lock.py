"""Issue 26, finding 3: a restore (`gallery import --replace`) while a server holds the gallery."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from service.gallery.embedded import embedded_gallery
from service.gallery.sqlite import STORE_FILE
from tests.conftest import API_KEY, ROOT, lfw, read
from tests.test_server import free_port, server

HEADERS = {"X-API-Key": API_KEY}


def enroll(client: httpx.Client, subject: str, photos: list[Path]) -> httpx.Response:
    """Create a subject (if new) and enroll photos through a real server."""
    client.post("/v1/subjects", json={"id": subject, "name": subject})
    files = [("files", (p.name, read(p), "image/jpeg")) for p in photos]
    return client.post(f"/v1/subjects/{subject}/faces", files=files)


# ---- (c) `gallery import --replace` while a server holds the gallery


def test_import_replace_is_refused_while_a_server_holds_the_gallery(tmp_path: Path) -> None:
    """Main: "imported 48 subjects" while the server kept serving (and acknowledging writes
    into) the deleted file; after a restart every write since the import was gone."""
    gallery = tmp_path / "gallery"
    backup = tmp_path / "backup.sqlite3"
    port = free_port()
    with (
        server(gallery, port),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS) as c,
    ):
        assert enroll(c, "powell", [lfw("Colin_Powell", 1)]).status_code == 201
        export = _cli("gallery", "export", str(backup), "--gallery", str(gallery))
        assert export.returncode == 0, export.stderr
        assert enroll(c, "blair", [lfw("Tony_Blair", 1)]).status_code == 201
        imported = _cli("gallery", "import", str(backup), "--replace", "--gallery", str(gallery))
        assert imported.returncode != 0, imported.stdout
        assert "gallery_busy" in imported.stderr + imported.stdout
        assert enroll(c, "bush", [lfw("George_W_Bush", 1)]).status_code == 201
    restarted = embedded_gallery(gallery, model_id=_model_id(gallery), embedding_dim=128)
    try:
        assert restarted.existing_subjects(["powell", "blair", "bush"]) == {
            "powell",
            "blair",
            "bush",
        }
    finally:
        restarted.close()
    # with the server stopped, the restore goes through
    done = _cli("gallery", "import", str(backup), "--replace", "--gallery", str(gallery))
    assert done.returncode == 0, done.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            *args,
            "--json",
            "--models-dir",
            str(ROOT / "models"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _model_id(gallery: Path) -> str:
    import sqlite3

    with sqlite3.connect(f"file:{gallery / STORE_FILE}?mode=ro", uri=True) as conn:
        return str(conn.execute("SELECT value FROM meta WHERE key='model_id'").fetchone()[0])
