"""POST /v1/jobs/index: zip uploads and server folders, hostile archives refused, gallery intact."""

from __future__ import annotations

import io
import stat
import time
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.vision.pipeline import FacePipeline
from tests.conftest import API_KEY, DATA, make_settings

LFW = DATA / "lfw" / "images"
PEOPLE = ["Colin_Powell", "Tony_Blair", "Serena_Williams"]


def people_zip(wrap: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in PEOPLE:
            for photo in sorted((LFW / name).glob("*.jpg"))[:2]:
                zf.write(photo, f"{wrap}{name}/{photo.name}")
    return buf.getvalue()


def wait(client: TestClient, job_id: str, timeout_s: float = 120) -> dict:
    """The job's record once it has stopped running (index and cluster jobs alike)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def post_zip(client: TestClient, data: bytes, name: str = "people.zip"):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs/index", files={"archive": (name, data, "application/zip")})


def test_zip_job_enrolls_then_a_resubmit_adds_nothing(client: TestClient) -> None:
    r = post_zip(client, people_zip(wrap="export/"))
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["summary"]["enrolled"] == 6 and job["progress"]["done"] == 6
    assert {s["id"] for s in client.get("/v1/subjects").json()["items"]} == set(PEOPLE)

    again = wait(client, post_zip(client, people_zip()).json()["id"])
    assert again["summary"]["enrolled"] == 0 and again["summary"]["already_present"] == 6
    assert client.get("/readyz").json()["gallery"]["faces"] == 6
    assert [j["id"] for j in client.get("/v1/jobs").json()] == [again["id"], job["id"]]


def hostile(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def test_hostile_archives_are_refused_and_change_nothing(client: TestClient) -> None:
    photo = (LFW / "Colin_Powell/Colin_Powell_0001.jpg").read_bytes()
    link = zipfile.ZipInfo("Colin_Powell/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    cases = {
        "climbs": hostile([("../evil/x.jpg", photo)]),
        "absolute": hostile([("/tmp/evil/x.jpg", photo)]),
        "drive": hostile([("C:/evil/x.jpg", photo)]),
        "symlink": hostile([(link, b"/etc/passwd")]),
        "bomb": hostile([("Colin_Powell/zeros.jpg", bytes(50 * 1024 * 1024))]),
        "not a zip": photo,
        "truncated": people_zip()[:3000],
    }
    before = client.get("/readyz").json()["gallery"]
    for label, data in cases.items():
        r = post_zip(client, data)
        assert r.status_code == 422, (label, r.status_code, r.text)
        assert r.json()["error"]["code"] == "invalid_archive", label
    assert client.get("/readyz").json()["gallery"] == before
    assert not Path("/tmp/evil").exists()
    r = client.post("/v1/jobs/index", data={"path": "/etc"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = client.post("/v1/jobs/index")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.get("/v1/jobs/0123")
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    r = client.post("/v1/jobs/index", data={"path": "/etc"}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401


def test_unpacked_size_limit_and_archive_size_limit(tmp_path: Path, pipeline: FacePipeline) -> None:
    settings = make_settings(
        tmp_path,
        jobs={
            "work_dir": tmp_path / "jobs",
            "max_unpacked_bytes": 30_000,
            "max_archive_bytes": 2_000_000,
        },
    )
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}) as c:
        r = post_zip(c, people_zip())  # 6 photos of ~9 kB each: over 30 kB unpacked
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = post_zip(c, bytes(3_000_000))
        assert r.status_code == 413
    assert list((tmp_path / "jobs").iterdir()) == []  # nothing left behind


def test_server_side_folder_under_an_allowed_root(tmp_path: Path, pipeline: FacePipeline) -> None:
    root = tmp_path / "incoming"
    for name in PEOPLE[:2]:
        (root / "batch1" / name).mkdir(parents=True)
        for photo in sorted((LFW / name).glob("*.jpg"))[:2]:
            (root / "batch1" / name / photo.name).write_bytes(photo.read_bytes())
    settings = make_settings(tmp_path, jobs={"allowed_roots": [str(root)]})
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}) as c:
        r = c.post("/v1/jobs/index", data={"path": str(root / "batch1")})
        assert r.status_code == 202, r.text
        job = wait(c, r.json()["id"])
        assert job["summary"]["enrolled"] == 4
        escape = c.post("/v1/jobs/index", data={"path": str(root / "batch1" / ".." / "..")})
        assert escape.status_code == 403
    assert (root / "batch1" / PEOPLE[0]).is_dir()  # a server folder is never deleted
