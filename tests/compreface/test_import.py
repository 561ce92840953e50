"""``marginface import compreface`` against a small fake CompreFace (no real CompreFace can run
here: it is a Java service with a Python embedding calculator and PostgreSQL). The fake serves
only the three GET routes the import reads, with CompreFace's shapes (the ones the SDK tests
prove our own /api/v1 serves), and can fail a download to test resuming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.vision.pipeline import FacePipeline
from tests.conftest import DATA, ROOT, lfw, make_settings, read

KEY = "00000000-0000-0000-0000-000000000002"
SUBJECTS = ["Colin Powell", "George W Bush", "Nobody Yet"]
EXAMPLES: list[tuple[str, str, bytes]] = [
    ("6b135f5b-a365-4522-b1f1-4c9ac2dd0001", "Colin Powell", read(lfw("Colin_Powell", 2))),
    ("6b135f5b-a365-4522-b1f1-4c9ac2dd0002", "Colin Powell", read(lfw("Colin_Powell", 3))),
    ("6b135f5b-a365-4522-b1f1-4c9ac2dd0003", "George W Bush", read(lfw("George_W_Bush", 2))),
    ("6b135f5b-a365-4522-b1f1-4c9ac2dd0004", "George W Bush", b""),  # image not kept
    ("6b135f5b-a365-4522-b1f1-4c9ac2dd0005", "Dog", read(DATA / "detection/dlib_faces/dogs.jpg")),
    ("6b135f5b-a365-4522-b1f1-4c9ac2dd0006", "Colin Powell", read(lfw("Colin_Powell", 5))),
]
FLAKY = "6b135f5b-a365-4522-b1f1-4c9ac2dd0006"


class FakeCompreFace(BaseHTTPRequestHandler):
    """CompreFace's subjects list, examples pages and image download; 401-like 404 for a
    wrong key (CompreFace's "service with API Key ... not found")."""

    fail_downloads: ClassVar[set[str]] = set()

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if self.headers.get("x-api-key") != KEY:
            message = {"message": f"Recognition service with API Key {KEY} not found", "code": 10}
            return self._send(404, json.dumps(message).encode())
        if url.path == "/api/v1/recognition/subjects":
            return self._send(200, json.dumps({"subjects": [*SUBJECTS, "Dog"]}).encode())
        if url.path == "/api/v1/recognition/faces":
            query = parse_qs(url.query)
            page, size = int(query["page"][0]), int(query["size"][0])
            chosen = EXAMPLES[page * size : (page + 1) * size]
            body = {
                "faces": [{"image_id": i, "subject": s} for i, s, _ in chosen],
                "page_number": page,
                "page_size": size,
                "total_pages": -(-len(EXAMPLES) // size),
                "total_elements": len(EXAMPLES),
            }
            return self._send(200, json.dumps(body).encode())
        for image_id, _, data in EXAMPLES:
            if url.path == f"/api/v1/recognition/faces/{image_id}/img":
                if image_id in self.fail_downloads:
                    return self._send(500, b'{"message": "boom", "code": 0}')
                return self._send(200, data, "application/octet-stream")
        return self._send(404, b'{"message": "no route", "code": 0}')


@pytest.fixture
def compreface() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCompreFace)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_import(url: str, tmp_path: Path, key: str = KEY) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "service.cli", "import", "compreface", url, "--json",
           "--gallery", str(tmp_path / "gallery"), "--models-dir", str(ROOT / "models"),
           "--device", "cpu", "--page-size", "2", "--no-progress",
           "--state", str(tmp_path / "state.jsonl"),
           "--report", str(tmp_path / "report.json")]  # fmt: skip
    env = {**os.environ, "COMPREFACE_API_KEY": key}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_import_from_compreface_is_resumable_and_reports(
    compreface: str, tmp_path: Path, pipeline: FacePipeline
) -> None:
    wrong = run_import(compreface, tmp_path, key="not-the-key")
    assert wrong.returncode == 2 and "compreface_unavailable" in wrong.stdout + wrong.stderr

    FakeCompreFace.fail_downloads = {FLAKY}
    first = run_import(compreface, tmp_path)
    assert first.returncode == 1, first.stderr  # a download failed: run it again
    summary = json.loads(first.stdout)
    assert (summary["imported"], summary["no_image"], summary["refused"]) == (3, 1, 1)
    assert summary["download_failed"] == 1 and not summary["complete"]
    assert sorted(summary["subjects_created"]) == sorted([*SUBJECTS, "Dog"])
    items = json.loads((tmp_path / "report.json").read_text())["items"]
    refused = next(i for i in items if i["outcome"] == "refused")
    assert refused["subject"] == "Dog" and refused["reason"].startswith("no_face")

    FakeCompreFace.fail_downloads = set()
    second = run_import(compreface, tmp_path)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert (summary["done_before"], summary["imported"], summary["complete"]) == (5, 1, True)
    assert summary["subjects_created"] == []

    # the gallery now answers as the CompreFace did, through the CompreFace API
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, pipeline=pipeline), headers={"x-api-key": "x"}) as c:
        c.headers["x-api-key"] = settings.auth.api_keys[0].get_secret_value()
        subjects = c.get("/api/v1/recognition/subjects").json()["subjects"]
        assert sorted(subjects) == sorted([*SUBJECTS, "Dog"])
        page = c.get("/api/v1/recognition/faces", params={"subject": "Colin Powell"}).json()
        assert page["total_elements"] == 3
        probe = {"file": ("p.jpg", read(lfw("Colin_Powell", 4)), "image/jpeg")}
        best = c.post("/api/v1/recognition/recognize", files=probe).json()["result"][0]
        assert best["subjects"][0]["subject"] == "Colin Powell"
