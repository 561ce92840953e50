"""What one zip upload, and all of them together, may write to disk (issue 25, finding 3): the
overlapped-file bomb (every entry sharing one compressed kernel) passed every ratio check,
because the whole-archive check summed ``compress_size`` and so counted the shared bytes once
per entry: 1 MB accepted (202) wrote 1.1 GB."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.vision.pipeline import FacePipeline
from tests.api.test_jobs import wait
from tests.backends import free_port
from tests.conftest import API_KEY, lfw, make_settings
from tests.reliability.corpus import overlap_bomb
from tests.test_server import HEADERS, server

MAX_RATIO = 100  # the default jobs.max_ratio


def written_bytes(pid: int) -> int:
    """Bytes the process has passed to write calls (files and sockets)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar")


def test_an_overlapping_entry_bomb_writes_no_more_than_its_bound(tmp_path: Path) -> None:
    """The bomb (1 MB, 12 entries of 90 MiB sharing one kernel, every CRC and local header
    right) is refused, 422 invalid_archive, and the server writes less than what any archive
    of its size may unpack to (max_ratio x its real size); main wrote 1.1 GB and answered 202."""
    bomb = overlap_bomb()
    assert len(bomb) < 1_100_000
    port = free_port()
    env = {"MARGINFACE_JOBS__WORK_DIR": str(tmp_path / "jobs")}
    with (
        server(tmp_path / "gallery", port, env, log_dir=tmp_path) as proc,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=300) as c,
    ):
        before = written_bytes(proc.pid)
        r = c.post("/v1/jobs/index", files={"archive": ("b.zip", bomb, "application/zip")})
        written = written_bytes(proc.pid) - before
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_archive"
        assert "overlap" in r.json()["error"]["message"]
        assert written < MAX_RATIO * len(bomb), written
        assert written < 4 * len(bomb), written  # the upload itself, not one entry unpacked
        assert c.get("/readyz").json()["gallery"]["subjects"] == 0
    leftovers = [p for p in (tmp_path / "jobs").rglob("*") if p.is_file() and p.name != ".owner"]
    assert leftovers == []


def people_zip(people: list[str], per_person: int = 3) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in people:
            for k in range(1, per_person + 1):
                zf.write(lfw(name, k), f"{name}/{k}.jpg")
    return buf.getvalue()


def unpacked_size(data: bytes) -> int:
    return sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(data)).infolist())


@pytest.fixture
def budgeted(
    tmp_path: Path, pipeline: FacePipeline
) -> Iterator[tuple[TestClient, threading.Event]]:
    """A service whose unpacked job trees may hold 1.5 x one test zip in total, with its job
    thread held at ``gate`` (queued jobs keep their unpacked photos until they run)."""
    one = unpacked_size(people_zip(["Colin_Powell"]))
    settings = make_settings(
        tmp_path,
        jobs={"work_dir": tmp_path / "jobs", "max_unpacked_total_bytes": int(one * 1.5)},
    )
    gate = threading.Event()
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}, raise_server_exceptions=False) as c:
        jobs = c.app_state["app_state"].jobs
        indexer_run = jobs.indexer.run

        def run_after_gate(*args: Any, **kwargs: Any) -> Any:
            assert gate.wait(60)
            return indexer_run(*args, **kwargs)

        jobs.indexer.run = run_after_gate
        try:
            yield c, gate
        finally:
            gate.set()


def test_queued_uploads_cannot_add_up_past_the_total_budget(
    budgeted: tuple[TestClient, threading.Event], tmp_path: Path
) -> None:
    """Each upload's unpacked bytes are reserved against jobs.max_unpacked_total_bytes until
    its job ends: a second upload that would pass the total is 503 overloaded (retry later),
    and is accepted once the first job has ended and given its bytes back."""
    client, gate = budgeted
    archive = people_zip(["Colin_Powell"])

    def post() -> httpx.Response:
        return client.post(
            "/v1/jobs/index", files={"archive": ("a.zip", archive, "application/zip")}
        )

    first = post()
    assert first.status_code == 202, first.text
    second = post()
    assert second.status_code == 503, second.text
    assert second.json()["error"]["code"] == "overloaded"
    assert "Retry-After" in second.headers
    folders = [p for p in (tmp_path / "jobs").iterdir()]
    assert len(folders) == 1  # the refused upload left nothing
    gate.set()
    assert wait(client, first.json()["id"])["status"] == "succeeded"
    third = post()
    assert third.status_code == 202, third.text
    assert wait(client, third.json()["id"])["status"] == "succeeded"
