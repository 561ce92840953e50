"""Access control: every route without a key, with a wrong key, and with too small a scope;
hashed keys rotated while the service runs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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
    ("POST", "/v1/subjects/{subject_id}/negatives"): "write",
    ("GET", "/v1/subjects/{subject_id}/negatives"): "read",
    ("DELETE", "/v1/subjects/{subject_id}/negatives/{negative_id}"): "write",
    ("GET", "/v1/faces/{face_id}/image"): "read",
    ("GET", "/v1/faces/{face_id}/chip"): "read",
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
    ("GET", "/v1/jobs/{job_id}/clusters/{cluster}"): "admin",
    ("POST", "/v1/jobs/{job_id}/faces/{face}/subject"): "admin",
    ("POST", "/v1/jobs/{job_id}/clusters/{cluster}/faces/{face}/not-subject"): "admin",
    ("GET", "/v1/jobs"): "admin",
    ("GET", "/v1/jobs/{job_id}/report"): "admin",
    ("GET", "/v1/gallery/export"): "admin",
    ("GET", "/v1/admin/model-migration"): "admin",
    ("POST", "/v1/admin/model-migration"): "admin",
    ("POST", "/v1/admin/model-migration/rollback"): "admin",
    ("POST", "/v1/admin/model-migration/purge"): "admin",
    # CompreFace's API (docs/compreface.md): its error body, same keys and scopes
    ("POST", "/api/v1/recognition/subjects"): "write",
    ("GET", "/api/v1/recognition/subjects"): "read",
    ("DELETE", "/api/v1/recognition/subjects"): "write",
    ("PUT", "/api/v1/recognition/subjects/{subject}"): "write",
    ("DELETE", "/api/v1/recognition/subjects/{subject}"): "write",
    ("POST", "/api/v1/recognition/faces"): "write",
    ("GET", "/api/v1/recognition/faces"): "read",
    ("DELETE", "/api/v1/recognition/faces"): "write",
    ("POST", "/api/v1/recognition/faces/delete"): "write",
    ("DELETE", "/api/v1/recognition/faces/{image}"): "write",
    ("GET", "/api/v1/recognition/faces/{image}/img"): "read",
    ("POST", "/api/v1/recognition/faces/{image}/verify"): "read",
    ("POST", "/api/v1/recognition/recognize"): "read",
    ("POST", "/api/v1/recognition/embeddings/recognize"): "read",
    ("POST", "/api/v1/recognition/embeddings/faces/{image}/verify"): "read",
    ("POST", "/api/v1/detection/detect"): "read",
    ("POST", "/api/v1/verification/verify"): "read",
    ("POST", "/api/v1/verification/embeddings/verify"): "read",
    # the key is in the path (for an <img> tag): checked by the route, read scope
    ("GET", "/api/v1/static/{api_key}/images/{image}"): "read",
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
    url = url.replace("{negative_id}", "1")
    url = url.replace("{job_id}", "0").replace("{cluster}", "0").replace("{face}", "0")
    url = url.replace("{subject}", "someone").replace("{image}", "0" * 32)
    if "{api_key}" in url:  # CompreFace's direct image link carries the key in its path
        return client.request(method, url.replace("{api_key}", key or "-"))
    headers = {"X-API-Key": key} if key is not None else {}
    return client.request(method, url, headers=headers)


def error_code(body: dict[str, Any]) -> object:
    """Our error body's code, or CompreFace's on its routes (``{"message", "code"}``: 20 is a
    missing key, 10 a wrong one)."""
    if "error" in body:
        return body["error"]["code"]
    return "unauthorized" if body["code"] in (10, 20) else body["code"]


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
        assert error_code(r.json()) == "unauthorized"
    # scopes nest (admin > write > read): only a key below the route's scope is too small
    too_small = {"read": None, "write": "reader", "admin": "operator"}[scope]
    if too_small is not None:
        r = call(client, method, path, keys[too_small])
        assert r.status_code == 403, (method, path, r.text)
        if "error" in r.json():  # CompreFace's body has no details
            assert r.json()["error"]["code"] == "forbidden"
            assert r.json()["error"]["details"]["required_scope"] == scope
    enough = {"read": ["reader", "writer", "admin"], "write": ["writer", "admin"]}
    for right in enough.get(scope, ["admin"]):
        assert call(client, method, path, keys[right]).status_code not in (401, 403), right


def test_an_admin_key_made_as_the_readme_shows_can_read_and_write(keyed) -> None:  # type: ignore[no-untyped-def]
    """`keys create --id ops --scopes admin` (the README's line) once got 403 on GET /v1/subjects
    and could not sign in to the console: admin includes write, write includes read."""
    client, keys, _ = keyed
    for key in (keys["admin"], keys["writer"]):
        assert call(client, "GET", "/v1/subjects", key).status_code == 200
    r = client.post(
        "/v1/subjects", json={"id": "ops-made", "name": "Ops"}, headers={"X-API-Key": keys["admin"]}
    )
    assert r.status_code == 201, r.text


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
