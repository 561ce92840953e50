"""Access control: every route without a key, with a wrong key, and with too small a scope;
hashed keys rotated while the service runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.keys import create_key, revoke_key
from service.vision.pipeline import FacePipeline
from tests.conftest import lfw, make_settings, read

# every route of the API and the scope it needs (None: open); a new route must be added here
SCOPES: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("POST", "/v1/subjects"): "write",
    ("GET", "/v1/subjects"): "read",
    ("GET", "/v1/subjects/{subject_id}"): "read",
    ("PATCH", "/v1/subjects/{subject_id}"): "write",
    ("DELETE", "/v1/subjects/{subject_id}"): "write",
    ("POST", "/v1/subjects/{subject_id}/faces"): "write",
    ("GET", "/v1/subjects/{subject_id}/faces"): "read",
    ("DELETE", "/v1/faces/{face_id}"): "write",
    ("GET", "/v1/faces/{face_id}/image"): "read",
    ("POST", "/v1/verify"): "read",
    ("POST", "/v1/identify"): "read",
    ("POST", "/v1/detect"): "read",
    ("POST", "/v1/embed"): "read",
    ("GET", "/v1/model"): "read",
    ("POST", "/v1/jobs/index"): "admin",
    ("GET", "/v1/jobs/{job_id}"): "admin",
    ("DELETE", "/v1/jobs/{job_id}"): "admin",
    ("POST", "/v1/jobs/cluster"): "admin",
    ("GET", "/v1/jobs/{job_id}/clusters"): "admin",
    ("GET", "/v1/jobs/{job_id}/faces/{face}.jpg"): "admin",
    ("POST", "/v1/jobs/{job_id}/clusters/merge"): "admin",
    ("DELETE", "/v1/jobs/{job_id}/clusters/{cluster}/faces/{face}"): "admin",
    ("POST", "/v1/jobs/{job_id}/clusters/{cluster}/subject"): "admin",
    ("GET", "/v1/jobs"): "admin",
    ("GET", "/v1/jobs/{job_id}/report"): "admin",
    ("GET", "/v1/gallery/export"): "admin",
}


@pytest.fixture
def keyed(tmp_path: Path, pipeline: FacePipeline):  # type: ignore[no-untyped-def]
    keys_file = tmp_path / "keys.json"
    keys = {
        "reader": create_key(keys_file, "reader", ["read"]),
        "writer": create_key(keys_file, "writer", ["write"]),
        "operator": create_key(keys_file, "operator", ["read", "write"]),
        "admin": create_key(keys_file, "admin", ["admin"]),
    }
    settings = make_settings(tmp_path, auth={"keys_file": str(keys_file)})
    with TestClient(create_app(settings, pipeline=pipeline)) as client:
        yield client, keys, keys_file


def routes(client: TestClient) -> set[tuple[str, str]]:
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    return {(m.upper(), p) for p, ops in paths.items() for m in ops}


def call(client: TestClient, method: str, path: str, key: str | None):  # type: ignore[no-untyped-def]
    url = path.replace("{subject_id}", "someone").replace("{face_id}", "1")
    url = url.replace("{job_id}", "0").replace("{cluster}", "0").replace("{face}", "0")
    headers = {"X-API-Key": key} if key is not None else {}
    return client.request(method, url, headers=headers)


def test_every_route_is_in_the_scope_table(keyed) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = keyed
    assert routes(client) == set(SCOPES) - {("GET", "/metrics")}


@pytest.mark.parametrize(("method", "path"), sorted(SCOPES))
def test_no_key_wrong_key_and_too_small_a_scope(keyed, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = keyed
    scope = SCOPES[(method, path)]
    if scope is None:
        assert call(client, method, path, None).status_code == 200
        return
    for key in (None, "", "wrong-key", keys["reader"] + "x"):
        r = call(client, method, path, key)
        assert r.status_code == 401, (method, path, key, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
    too_small = {"read": "writer", "write": "reader", "admin": "operator"}[scope]
    r = call(client, method, path, keys[too_small])
    assert r.status_code == 403, (method, path, r.text)
    assert r.json()["error"]["code"] == "forbidden"
    assert r.json()["error"]["details"]["required_scope"] == scope
    right = {"read": "reader", "write": "writer", "admin": "admin"}[scope]
    assert call(client, method, path, keys[right]).status_code not in (401, 403)


def test_keys_rotate_without_a_restart(keyed) -> None:  # type: ignore[no-untyped-def]
    client, keys, keys_file = keyed
    photo = read(lfw("Colin_Powell", 1))
    new = create_key(keys_file, "new-reader", ["read"])
    deadline = time.monotonic() + 5
    while call(client, "GET", "/v1/subjects", new).status_code != 200:
        assert time.monotonic() < deadline, "the new key was not picked up"
        time.sleep(0.2)
    assert revoke_key(keys_file, "reader")
    deadline = time.monotonic() + 5
    while call(client, "GET", "/v1/subjects", keys["reader"]).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.2)
    r = client.post(
        "/v1/detect", files={"image": ("a.jpg", photo, "image/jpeg")}, headers={"X-API-Key": new}
    )
    assert r.status_code == 200
    stored = keys_file.read_text()
    assert new not in stored and keys["admin"] not in stored  # only digests are stored
    assert all(len(e["sha256"]) == 64 for e in json.loads(stored)["keys"])
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
