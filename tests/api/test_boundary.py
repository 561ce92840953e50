"""The HTTP boundary's inputs that answered 500 or slipped through (issue 13's findings 3 to 8):
chunked oversized bodies, zip bombs made of small entries, malformed archives, server-side
paths through links, unservable metadata, ambiguous credentials."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.vision.pipeline import FacePipeline
from tests.conftest import API_KEY, DATA, lfw, make_settings
from tests.reliability.corpus import MALFORMED_ARCHIVES, nested, small_entry_bomb

LFW = DATA / "lfw" / "images"


def wait(client: TestClient, job_id: str) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 120
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


@pytest.fixture
def small_limits(tmp_path: Path, pipeline: FacePipeline) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path,
        limits={"max_request_bytes": 256 * 1024, "max_upload_bytes": 200 * 1024},
        jobs={"work_dir": tmp_path / "jobs", "max_archive_bytes": 4 * 1024 * 1024},
    )
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}, raise_server_exceptions=False) as c:
        yield c


def test_a_chunked_oversized_body_is_413_not_400(small_limits: TestClient) -> None:
    """Finding 3: a body without Content-Length (chunked) over the limit got 400 bad_request."""
    photo = lfw("Colin_Powell", 1).read_bytes()
    boundary = "x" * 16
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # a generator: httpx sends it chunked, no Content-Length
        yield head + photo
        for _ in range(40):
            yield b"\0" * 16384
        yield f"\r\n--{boundary}--\r\n".encode()

    r = small_limits.post(
        "/v1/identify",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"


def post_zip(client: TestClient, data: bytes):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs/index", files={"archive": ("a.zip", data, "application/zip")})


def test_a_zip_bomb_of_small_entries_is_refused(small_limits: TestClient, tmp_path: Path) -> None:
    """Finding 4: the per-entry ratio check applied only to entries over 1 MiB, so entries of
    exactly 1 MiB of zeros passed (2,048 of them, a 2.3 MB upload, wrote 2 GiB)."""
    bomb = small_entry_bomb()
    assert len(bomb) < 200_000
    r = post_zip(small_limits, bomb)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_archive"
    assert "inflates" in r.json()["error"]["message"]
    leftovers = [p for p in (tmp_path / "jobs").rglob("*") if p.is_file() and p.name != ".owner"]
    assert leftovers == []


MALFORMED = {k: v for k, v in MALFORMED_ARCHIVES.items() if k not in ("not-a-zip", "traversal")}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_archives_are_422_invalid_archive(small_limits: TestClient, case: str) -> None:
    """Finding 5: each of these answered 500."""
    archive = MALFORMED[case](lfw("Colin_Powell", 1).read_bytes())
    r = post_zip(small_limits, archive)
    assert r.status_code == 422, (case, r.text)
    assert r.json()["error"]["code"] == "invalid_archive", r.text


@pytest.fixture
def allowed_root(tmp_path: Path, pipeline: FacePipeline) -> Iterator[tuple[TestClient, Path, Path]]:
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    for name in ("Tony_Blair", "Serena_Williams"):
        (outside / name).mkdir(parents=True)
        shutil.copy(LFW / name / f"{name}_0001.jpg", outside / name / "secret.jpg")
    batch = allowed / "batch"
    (batch / "Colin_Powell").mkdir(parents=True)
    shutil.copy(lfw("Colin_Powell", 1), batch / "Colin_Powell" / "a.jpg")
    big = lfw("Colin_Powell", 2).read_bytes() + b"\0" * 100_000  # a JPEG with a long tail
    (batch / "Colin_Powell" / "big.jpg").write_bytes(big)  # over the 40 KB cap below
    os.symlink(outside / "Tony_Blair", batch / "Tony_Blair")  # a folder link out of the root
    (batch / "Serena_Williams").mkdir()
    os.symlink(outside / "Serena_Williams" / "secret.jpg", batch / "Serena_Williams" / "x.jpg")
    settings = make_settings(
        tmp_path,
        limits={"max_upload_bytes": 40 * 1024},
        jobs={"allowed_roots": [str(allowed)], "work_dir": tmp_path / "jobs"},
    )
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}, raise_server_exceptions=False) as c:
        yield c, batch, outside


def test_path_jobs_follow_no_link_out_of_the_root_and_cap_file_sizes(
    allowed_root: tuple[TestClient, Path, Path],
) -> None:
    """Finding 6: `allowed/b/s -> /outside/dir` or `allowed/b/s/x.jpg -> /any/file` was read
    and enrolled (/etc/shadow was read), and files were read whole with no size cap."""
    client, batch, _ = allowed_root
    r = client.post("/v1/jobs/index", data={"path": str(batch)})
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    summary = job["summary"]
    assert summary["enrolled"] == 1, summary  # Colin_Powell/a.jpg only
    subjects = {s["id"] for s in client.get("/v1/subjects").json()["items"]}
    assert subjects == {"Colin_Powell"}  # nothing from outside the root
    assert summary["skipped_link"] == 2 and summary["too_large"] == 1
    report = json.dumps(summary)
    assert "Tony_Blair" in report and "Serena_Williams/x.jpg" in report and "big.jpg" in report


@pytest.mark.parametrize("tail", ["a\x00b", "a" * 5000, "b" * 300 + "/c"])
def test_a_malformed_job_path_is_422(
    allowed_root: tuple[TestClient, Path, Path], tail: str
) -> None:
    """Finding 6: a `path` (under an allowed root) with a NUL byte or 5,000 characters
    answered 500."""
    client, batch, _ = allowed_root
    r = client.post("/v1/jobs/index", data={"path": f"{batch}/{tail}"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("validation_error", "invalid_request")


# (create body, patch body) as raw JSON text: the escapes reach the service as they are
UNSERVABLE = {
    "lone-surrogate": (
        '{"id": "s1", "name": "S", "metadata": {"x": "\\ud800"}}',
        '{"metadata": {"x": "\\ud800"}}',
    ),
    "surrogate-name": ('{"id": "s1", "name": "\\udfff", "metadata": {}}', '{"name": "\\udfff"}'),
    "deep-list": (
        json.dumps({"id": "s1", "name": "S", "metadata": {"x": nested(300)}}),
        json.dumps({"metadata": {"x": nested(300)}}),
    ),
}


@pytest.mark.parametrize("case", sorted(UNSERVABLE))
def test_metadata_the_service_cannot_serve_is_refused_and_listings_keep_working(
    client: TestClient, case: str
) -> None:
    """Finding 7: a subject created or patched with a lone surrogate or a list nested about 300
    deep answered 500 but was stored, and from then on GET /v1/subjects answered 500."""
    create, patch = UNSERVABLE[case]
    headers = {"Content-Type": "application/json"}
    r = client.post("/v1/subjects", content=create, headers=headers)
    assert r.status_code == 422, r.text
    assert client.get("/v1/subjects").status_code == 200
    assert client.get("/v1/subjects").json()["total"] == 0  # not stored
    assert client.post("/v1/subjects", json={"id": "s2", "name": "ok"}).status_code == 201
    r = client.patch("/v1/subjects/s2", content=patch, headers=headers)
    assert r.status_code == 422, r.text
    r = client.get("/v1/subjects")
    assert r.status_code == 200
    assert r.json()["items"][0]["name"] == "ok" and r.json()["items"][0]["metadata"] == {}


def test_two_api_keys_are_refused(client: TestClient) -> None:
    """Finding 8: with two X-API-Key headers the first one won."""
    for keys in ([API_KEY, "someone-else"], ["someone-else", API_KEY], [API_KEY, API_KEY]):
        r = client.get("/v1/subjects", headers=[("X-API-Key", k) for k in keys])
        assert r.request.headers.get_list("x-api-key") == keys  # both really sent
        assert r.status_code == 400, (keys, r.text)
        assert r.json()["error"]["code"] == "ambiguous_credentials"
    assert client.get("/v1/subjects").status_code == 200
