"""One subject-id rule for every route and every job (issue 25, finding 5): index jobs created
``Colin_Powell\\n`` (``re.match`` with ``$`` accepts a trailing newline), an id the subjects
route refuses and that prints like ``Colin_Powell`` beside it."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.subject_id import is_subject_id
from service.vision.pipeline import FacePipeline
from tests.api.test_jobs import wait
from tests.conftest import API_KEY, lfw, make_settings

VALID = "Colin_Powell"
#: ids a file system and a zip can hold as folder names
HOSTILE_NAMES = [
    f"{VALID}\n",
    f"{VALID}\r",
    f"{VALID}\r\n",
    f"{VALID}\t",
    f"{VALID} ",
    f" {VALID}",
    f"{VALID}\u200b",  # zero-width space: prints as Colin_Powell
    f"{VALID}\u00a0",  # no-break space
    "\u0421olin_Powell",  # Cyrillic capital Es
    "Colin_P\u043ewell",  # Cyrillic small o
    "\uff23olin_Powell",  # fullwidth C
    "Co\u0301lin_Powell",  # a combining accent
    "\u212aelvin",  # the Kelvin sign, which case-folds to K
    "\u0661\u0662\u0663",  # Arabic-Indic digits (\d would take them)
    "a" * 129,
    "-leading-dash",
    "_leading-underscore",
    "@leading-at",
]
#: ids no folder can be named, or that a path or zip cannot carry as one name
HOSTILE_OTHERS = ["", ".", "..", "/", "a/b", "../Colin_Powell", "Colin\x00Powell"]
HOSTILE = HOSTILE_NAMES + HOSTILE_OTHERS
#: what a router answers for an id it cannot route to one path segment
UNROUTABLE = {"", ".", "..", "/", "a/b", "../Colin_Powell"}


def test_the_rule() -> None:
    assert is_subject_id(VALID) and is_subject_id("a") and is_subject_id("x@y.z-1_2")
    assert is_subject_id("a" * 128)
    for bad in HOSTILE:
        assert not is_subject_id(bad), repr(bad)


@pytest.fixture
def service(tmp_path: Path, pipeline: FacePipeline) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path,
        jobs={"allowed_roots": [str(tmp_path / "allowed")], "work_dir": tmp_path / "jobs"},
    )
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}, raise_server_exceptions=False) as c:
        yield c


def refused(r, bad: str, *, in_path: bool = True) -> None:  # type: ignore[no-untyped-def]
    """422 invalid_subject_id; an id in the URL that the router cannot take as one path
    segment never reaches an id route (another route or a 4xx answers, never a 5xx)."""
    if in_path and bad in UNROUTABLE:
        assert r.status_code < 500, (bad, r.status_code, r.text)
        return
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_subject_id"), (bad, r.text)


def subjects(client: TestClient) -> set[str]:
    return {s["id"] for s in client.get("/v1/subjects").json()["items"]}


def test_every_route_that_takes_an_id_refuses_the_same_hostile_ids(service: TestClient) -> None:
    client = service
    photo = lfw(VALID, 1).read_bytes()
    assert client.post("/v1/subjects", json={"id": VALID, "name": "C"}).status_code == 201
    for bad in HOSTILE:
        segment = quote(bad, safe="")
        refused(client.post("/v1/subjects", json={"id": bad, "name": "x"}), bad, in_path=False)
        refused(client.get(f"/v1/subjects/{segment}"), bad)
        refused(client.patch(f"/v1/subjects/{segment}", json={"name": "y"}), bad)
        refused(client.get(f"/v1/subjects/{segment}/faces"), bad)
        refused(
            client.post(
                f"/v1/subjects/{segment}/faces", files={"files": ("a.jpg", photo, "image/jpeg")}
            ),
            bad,
        )
        r = client.post(
            "/v1/verify",
            files={"image_a": ("a.jpg", photo, "image/jpeg")},
            data={"subject_id": bad},
        )
        if bad == "":  # an empty form field is a missing one: 'send exactly one of ...'
            assert r.status_code == 422, r.text
        else:
            refused(r, bad, in_path=False)
        r = client.delete(f"/v1/subjects/{segment}")  # erasing looks the id up as it is
        assert 400 <= r.status_code < 500, (bad, r.text)
    assert subjects(client) == {VALID}


def people_zip(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.write(lfw(VALID, 1), f"{name}/a.jpg")
    return buf.getvalue()


def test_index_jobs_refuse_the_same_hostile_ids(service: TestClient, tmp_path: Path) -> None:
    client = service
    for source in ("zip", "path"):
        if source == "zip":
            r = client.post(
                "/v1/jobs/index",
                files={
                    "archive": ("a.zip", people_zip([VALID, *HOSTILE_NAMES]), "application/zip")
                },
            )
        else:
            batch = tmp_path / "allowed" / "batch"
            for name in [VALID, *HOSTILE_NAMES]:
                (batch / name).mkdir(parents=True)
                shutil.copy(lfw(VALID, 1), batch / name / "a.jpg")
            r = client.post("/v1/jobs/index", data={"path": str(batch)})
        assert r.status_code == 202, r.text
        job = wait(client, r.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["summary"]["invalid_subject"] == len(HOSTILE_NAMES), (source, job["summary"])
        assert subjects(client) == {VALID}, source
    for bad in HOSTILE_OTHERS:  # refused as an archive, or a nested folder: never a subject
        if bad in ("", ".", "/"):
            continue
        r = client.post(
            "/v1/jobs/index", files={"archive": ("a.zip", people_zip([bad]), "application/zip")}
        )
        assert r.status_code in (202, 422), (bad, r.text)
        if r.status_code == 202:
            assert wait(client, r.json()["id"])["status"] == "succeeded"
    # 'a/b/a.jpg' is a wrapper folder 'a' around a subject 'b' (a valid id): nothing else
    assert subjects(client) == {VALID, "b"}


def test_naming_a_cluster_refuses_the_same_hostile_ids(service: TestClient) -> None:
    client = service
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in (1, 2, 3, 4):
            zf.write(lfw(VALID, k), f"pile/{k}.jpg")
    r = client.post(
        "/v1/jobs/cluster", files={"archive": ("p.zip", buf.getvalue(), "application/zip")}
    )
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    view = client.get(f"/v1/jobs/{job['id']}/clusters").json()
    assert view["clusters"], view
    cluster = view["clusters"][0]["cluster"]
    for bad in HOSTILE:
        r = client.post(
            f"/v1/jobs/{job['id']}/clusters/{cluster}/subject", json={"subject_id": bad}
        )
        refused(r, bad, in_path=False)
    assert subjects(client) == set()
