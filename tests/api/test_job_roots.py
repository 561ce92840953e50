"""A path job reads the folder it was accepted for, whatever is renamed or linked afterwards
(issue 25, finding 1): the root is opened once, at acceptance, and never looked up by name again."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.vision.pipeline import FacePipeline
from tests.api.test_boundary import wait
from tests.conftest import API_KEY, lfw, make_settings


@pytest.fixture
def gated(tmp_path: Path, pipeline: FacePipeline) -> Iterator[tuple[TestClient, threading.Event]]:
    """A service whose job thread waits at ``gate`` before running each job: what a queue of
    earlier jobs does, made deterministic (the acceptance and the run are the real ones)."""
    settings = make_settings(
        tmp_path,
        jobs={"allowed_roots": [str(tmp_path / "allowed")], "work_dir": tmp_path / "jobs"},
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


def photo_folder(root: Path, subject: str, number: int = 1) -> None:
    (root / subject).mkdir(parents=True)
    shutil.copy(lfw(subject, number), root / subject / "a.jpg")


@pytest.mark.parametrize("swapped", ["root", "parent"])
def test_a_queued_path_job_never_reads_a_folder_swapped_in_after_acceptance(
    gated: tuple[TestClient, threading.Event], tmp_path: Path, swapped: str
) -> None:
    """Finding 1: the root was resolved again when the job ran, so replacing it (or a folder
    above it) by a link to /outside after the 202 enrolled the photos found there."""
    client, gate = gated
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    photo_folder(allowed / "team" / "batch", "Colin_Powell")
    photo_folder(outside / "batch", "Tony_Blair")  # what a swapped `team` leads to
    photo_folder(outside / "batch", "Serena_Williams")
    r = client.post("/v1/jobs/index", data={"path": str(allowed / "team" / "batch")})
    assert r.status_code == 202, r.text
    if swapped == "root":
        os.rename(allowed / "team" / "batch", allowed / "team" / "old")
        os.symlink(outside / "batch", allowed / "team" / "batch")
    else:
        os.rename(allowed / "team", allowed / "old")
        os.symlink(outside, allowed / "team")
    # not read yet: the job thread waits at the gate before it touches the folder
    assert client.get(f"/v1/jobs/{r.json()['id']}").json()["status"] in ("queued", "running")
    gate.set()
    job = wait(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    subjects = {s["id"] for s in client.get("/v1/subjects").json()["items"]}
    assert subjects == {"Colin_Powell"}  # the accepted folder, moved but the same one
    assert job["summary"]["enrolled"] == 1, job


def test_a_path_through_a_link_at_acceptance_is_resolved_then_held(
    gated: tuple[TestClient, threading.Event], tmp_path: Path
) -> None:
    """A link inside the allowed root to a folder inside it is still accepted (its target is
    checked, then opened); one out of the root is 403."""
    client, gate = gated
    allowed = tmp_path / "allowed"
    photo_folder(allowed / "real", "Colin_Powell")
    os.symlink(allowed / "real", allowed / "alias")
    photo_folder(tmp_path / "outside", "Tony_Blair")
    os.symlink(tmp_path / "outside", allowed / "out")
    gate.set()
    refused = client.post("/v1/jobs/index", data={"path": str(allowed / "out")})
    assert refused.status_code == 403, refused.text
    r = client.post("/v1/jobs/index", data={"path": str(allowed / "alias")})
    assert r.status_code == 202, r.text
    assert wait(client, r.json()["id"])["summary"]["enrolled"] == 1
