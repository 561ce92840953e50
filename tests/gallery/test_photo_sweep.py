"""Issue 26, finding 4: a replica's start-up photo sweep racing another replica's enrollment."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import Distributed
from tests.conftest import API_KEY, ROOT, lfw, read
from tests.test_server import free_port, server

HEADERS = {"X-API-Key": API_KEY}


def enroll(client: httpx.Client, subject: str, photos: list[Path]) -> httpx.Response:
    """Create a subject (if new) and enroll photos through a real server."""
    client.post("/v1/subjects", json={"id": subject, "name": subject})
    files = [("files", (p.name, read(p), "image/jpeg")) for p in photos]
    return client.post(f"/v1/subjects/{subject}/faces", files=files)


SLOW_SWEEP = '''
import os, time
from pathlib import Path
from service.images import ImageVault

_real = ImageVault.sweep


def _slow(self, *args, **kwargs):
    """Widen the window between what the sweep knows and what it lists (the race of issue 26)."""
    Path(os.environ["SWEEP_MARKER"]).touch()
    time.sleep(float(os.environ.get("SWEEP_DELAY_S", "4")))
    return _real(self, *args, **kwargs)


ImageVault.sweep = _slow
'''


@pytest.fixture
def replica_env(distributed: Distributed, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of a replica of one distributed gallery that keeps photos in one shared
    folder."""
    env = {
        **distributed.env(),
        "MARGINFACE_PRIVACY__KEEP_IMAGES": "true",
        "MARGINFACE_PRIVACY__IMAGES_DIR": str(tmp_path / "photos"),
        "MARGINFACE_JOBS__WORK_DIR": str(tmp_path / "work"),
    }
    yield env


def test_a_starting_replica_keeps_the_photo_another_replica_is_enrolling(
    tmp_path: Path, replica_env: dict[str, str]
) -> None:
    """Main: each replica snapshotted the face ids at start-up, then deleted every kept photo
    not in the snapshot: a photo enrolled through another replica in between was erased."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_SWEEP)
    marker = tmp_path / "sweeping"
    port_a, port_b = free_port(), free_port()
    with (
        server(tmp_path / "a", port_a, replica_env, log_dir=tmp_path),
        httpx.Client(base_url=f"http://127.0.0.1:{port_a}", headers=HEADERS) as a,
    ):
        assert enroll(a, "powell", [lfw("Colin_Powell", 1)]).status_code == 201
        env_b = {
            **replica_env,
            "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', ROOT)}",
            "SWEEP_MARKER": str(marker),
        }
        enrolled: dict[str, Any] = {}

        def enroll_while_b_sweeps() -> None:
            deadline = time.monotonic() + 180
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            r = enroll(a, "blair", [lfw("Tony_Blair", 1)])
            enrolled["response"] = r

        writer = threading.Thread(target=enroll_while_b_sweeps)
        writer.start()
        with server(tmp_path / "b", port_b, env_b, log_dir=tmp_path):
            writer.join(timeout=200)
            r = enrolled["response"]
            assert r.status_code == 201, r.text
            face_id = r.json()["faces"][0]["face_id"]
            photo = a.get(f"/v1/faces/{face_id}/image")
            assert photo.status_code == 200, "replica b's start-up deleted a live photo"
            assert photo.content == read(lfw("Tony_Blair", 1))
