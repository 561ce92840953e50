"""A client generated from our OpenAPI description (openapi-python-client, a maintained
generator from the package registry) parses the errors a real server sends.

The spec once documented only FastAPI's `{"detail": [...]}` 422 body, which the service never
sends, and no 401/403/404/409/413/503/507 at all: a generated client then had no type for a real
error. The generator has its own environment (it pins httpx < 0.29; ours is newer), made once
under `.cache/tools/` by `tests.tools.tool_venv`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import Settings
from tests.conftest import API_KEY, DATA
from tests.test_server import free_port, server
from tests.tools import tool_venv

GENERATOR = "openapi-python-client==0.29.1"

# Runs inside the generator's environment, against the real server: each call goes through the
# generated endpoint function, and what the generated client parsed is printed as JSON.
CLIENT_SCRIPT = r"""
import importlib, io, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
url, key, photo = sys.argv[2], sys.argv[3], sys.argv[4]
client_pkg = importlib.import_module("margin_face_client")
api = importlib.import_module("margin_face_client.api")
endpoints = {}
for tag in pkgutil.iter_modules(api.__path__):
    tag_pkg = importlib.import_module(f"margin_face_client.api.{tag.name}")
    for mod in pkgutil.iter_modules(tag_pkg.__path__):
        endpoints[mod.name] = importlib.import_module(f"{tag_pkg.__name__}.{mod.name}")
from margin_face_client.types import File
def find(prefix):
    return next(m for n, m in sorted(endpoints.items()) if n.startswith(prefix))
def parsed(resp):
    p = resp.parsed
    error = getattr(p, "error", None)
    return {"status": int(resp.status_code), "type": type(p).__name__,
            "code": getattr(error, "code", None), "message": getattr(error, "message", None)}
keyed = client_pkg.Client(base_url=url, headers={"X-API-Key": key}, raise_on_unexpected_status=True)
keyless = client_pkg.Client(base_url=url, raise_on_unexpected_status=True)
out = {}
get_subject = find("get_subject")
out["not_found"] = parsed(get_subject.sync_detailed("nobody", client=keyed))
out["unauthorized"] = parsed(get_subject.sync_detailed("nobody", client=keyless))
create = find("create_subject")
body_cls = getattr(importlib.import_module("margin_face_client.models"), "SubjectCreate")
out["created"] = parsed(create.sync_detailed(client=keyed, body=body_cls(name="Ann", id="ann")))
out["conflict"] = parsed(create.sync_detailed(client=keyed, body=body_cls(name="Ann", id="ann")))
identify = find("identify")
form = importlib.import_module("margin_face_client.models").BodyIdentifyV1IdentifyPost
bad = File(payload=io.BytesIO(b"not an image"), file_name="x.jpg", mime_type="image/jpeg")
out["invalid_image"] = parsed(identify.sync_detailed(client=keyed, body=form(image=bad)))
good = File(payload=open(photo, "rb"), file_name="p.jpg", mime_type="image/jpeg")
out["identified"] = parsed(identify.sync_detailed(client=keyed, body=form(image=good)))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_generated_client_parses_real_errors(tmp_path: Path) -> None:
    venv = tool_venv("openapi-client", [GENERATOR])
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(create_app(Settings(auth={"disabled": True})).openapi()))  # type: ignore[arg-type]
    subprocess.run(
        [str(venv / "bin" / "openapi-python-client"), "generate", "--path", str(spec),
         "--output-path", str(tmp_path / "margin_face_client"), "--meta", "none"],
        check=True, capture_output=True, cwd=tmp_path,
        env={**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"},  # its ruff
    )  # fmt: skip
    photo = DATA / "lfw/images/Colin_Powell/Colin_Powell_0001.jpg"
    port = free_port()
    with server(tmp_path / "gallery", port):
        run = subprocess.run(
            [str(venv / "bin" / "python"), "-c", CLIENT_SCRIPT, str(tmp_path),
             f"http://127.0.0.1:{port}", API_KEY, str(photo)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    expected = {
        "not_found": (404, "subject_not_found"),
        "unauthorized": (401, "unauthorized"),
        "conflict": (409, "subject_exists"),
        "invalid_image": (422, "invalid_image"),
    }
    for case, (status, code) in expected.items():
        assert out[case]["status"] == status, (case, out[case])
        assert out[case]["type"] == "ErrorResponse", (case, out[case])
        assert out[case]["code"] == code, (case, out[case])
    assert out["created"]["status"] == 201 and out["created"]["type"] == "SubjectOut", out
    assert out["identified"]["status"] == 200, out
    assert out["identified"]["type"] == "IdentifyResponse", out


def test_no_two_schemas_share_a_name() -> None:
    """Two response models of one name (CompreFace's PoseOut and ours) become module-path names
    (`service__schemas__PoseOut`) that the generator cannot build, and every model that refers to
    one silently disappears from the generated client."""
    schemas = create_app(Settings(auth={"disabled": True})).openapi()["components"]["schemas"]  # type: ignore[arg-type]
    assert not [name for name in schemas if "__" in name and not name.startswith("Body_")]
