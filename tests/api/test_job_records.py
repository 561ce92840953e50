"""Job records stay small whatever the job met (issue 25, "also found"): a 100,000-file job's
record was 9.5 MB and ``GET /v1/jobs`` 10.5 MB. A record has counts and a capped sample of the
problems; the full report is a download; the list is paginated; no record shows the server's
own folders; special files and folders too deep to read are in the report, not passed over."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.jobs import PROBLEM_SAMPLE
from service.vision.pipeline import FacePipeline
from tests.api.test_jobs import people_zip, post_zip, wait
from tests.conftest import API_KEY, lfw, make_settings

BROKEN = 3000  # files that are not images: one problem each


@pytest.fixture
def service(tmp_path: Path, pipeline: FacePipeline) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path,
        jobs={"allowed_roots": [str(tmp_path / "allowed")], "work_dir": tmp_path / "work"},
    )
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}, raise_server_exceptions=False) as c:
        yield c


def test_a_job_record_is_bounded_and_the_full_report_is_a_download(
    service: TestClient, tmp_path: Path
) -> None:
    client = service
    batch = tmp_path / "allowed" / "batch"
    (batch / "Broken").mkdir(parents=True)
    for k in range(BROKEN):
        (batch / "Broken" / f"not-an-image-{k:05d}.jpg").write_bytes(b"no image here")
    (batch / "Colin_Powell" / "deeper").mkdir(parents=True)
    shutil.copy(lfw("Colin_Powell", 1), batch / "Colin_Powell" / "a.jpg")
    shutil.copy(lfw("Colin_Powell", 2), batch / "Colin_Powell" / "deeper" / "b.jpg")
    os.mkfifo(batch / "Colin_Powell" / "pipe.jpg")
    r = client.post("/v1/jobs/index", data={"path": str(batch)})
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    summary = job["summary"]
    assert summary["enrolled"] == 1 and summary["unreadable"] == BROKEN, summary
    assert len(summary["files"]["unreadable"]) == PROBLEM_SAMPLE
    assert summary["files_truncated"] is True
    assert len(json.dumps(job)) < 16_000, len(json.dumps(job))
    listed = client.get("/v1/jobs").json()
    assert len(json.dumps(listed)) < 16_000
    # what was passed over is in the report: the FIFO, the folder below a subject folder
    assert summary["skipped_special"] == 1 and summary["skipped_too_deep"] == 1, summary
    report = client.get(f"/v1/jobs/{job['id']}/report")
    assert report.status_code == 200, report.text
    full = report.json()
    assert len(full["files"]["unreadable"]) == BROKEN
    assert any("pipe.jpg" in f for f in full["files"]["skipped_special"])
    assert any("deeper" in f for f in full["files"]["skipped_too_deep"])


def test_no_record_shows_the_servers_own_folders(service: TestClient, tmp_path: Path) -> None:
    client = service
    job = wait(client, post_zip(client, people_zip()).json()["id"])
    assert job["status"] == "succeeded", job
    text = json.dumps(job) + json.dumps(client.get("/v1/jobs").json())
    assert str(tmp_path) not in text, text


def test_the_job_list_is_paginated(service: TestClient) -> None:
    client = service
    ids = [post_zip(client, people_zip()).json()["id"] for _ in range(3)]
    for job_id in ids:
        wait(client, job_id)
    newest_first = ids[::-1]
    assert [j["id"] for j in client.get("/v1/jobs", params={"limit": 2}).json()] == newest_first[:2]
    page = client.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert [j["id"] for j in page] == newest_first[2:]
    assert client.get("/v1/jobs", params={"limit": 100_000}).status_code == 422


def test_a_path_job_reads_no_more_entries_than_a_zip_may_hold(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    """Files per job: a server folder is bounded by jobs.max_entries as a zip is (before, a
    path job listed whatever the folder held, millions of files included)."""
    settings = make_settings(
        tmp_path,
        jobs={
            "allowed_roots": [str(tmp_path / "allowed")],
            "work_dir": tmp_path / "work",
            "max_entries": 50,
        },
    )
    batch = tmp_path / "allowed" / "batch"
    (batch / "Many").mkdir(parents=True)
    for k in range(60):
        (batch / "Many" / f"{k}.jpg").write_bytes(b"x")
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}, raise_server_exceptions=False) as c:
        job = wait(c, c.post("/v1/jobs/index", data={"path": str(batch)}).json()["id"])
        assert job["status"] == "failed", job
        assert "more than 50 entries" in job["error"], job
        cluster = wait(c, c.post("/v1/jobs/cluster", data={"path": str(batch)}).json()["id"])
        assert cluster["status"] == "failed" and "more than 50" in cluster["error"], cluster
        many = io.BytesIO()
        with zipfile.ZipFile(many, "w") as zf:
            for k in range(60):
                zf.writestr(f"Many/{k}.jpg", b"x")
        r = post_zip(c, many.getvalue())
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_archive", r.text
        assert "at most 50" in r.json()["error"]["message"]
