"""/metrics after real requests, request ids, and JSON access logs."""

from __future__ import annotations

import io
import json
import logging
import re

from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import JsonFormatter
from service.vision.pipeline import FacePipeline
from tests.conftest import API_KEY, DATA, lfw, make_settings, read


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in the exposition text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_expose_requests_stages_batches_and_gallery(client: TestClient) -> None:
    group = read(DATA / "detection/insightface/t1.jpg")
    assert (
        client.post("/v1/detect", files={"image": ("t1.jpg", group, "image/jpeg")}).status_code
        == 200
    )
    assert client.post("/v1/subjects", json={"id": "colin", "name": "Colin"}).status_code == 201
    r = client.post(
        "/v1/subjects/colin/faces",
        files=[("files", ("a.jpg", read(lfw("Colin_Powell", 1)), "image/jpeg"))],
    )
    assert r.status_code == 201
    probe = read(lfw("Colin_Powell", 2))
    for _ in range(3):
        assert (
            client.post("/v1/identify", files={"image": ("p.jpg", probe, "image/jpeg")}).status_code
            == 200
        )
    assert client.get("/v1/subjects/nobody").status_code == 404

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    identify = {"route": "/v1/identify", "method": "POST", "status": "200"}
    assert sample(text, "marginface_requests_total", **identify) == 3
    assert (
        sample(text, "marginface_requests_total", route="/v1/subjects/{subject_id}", status="404")
        == 1
    )
    assert (
        sample(
            text, "marginface_request_duration_seconds_count", route="/v1/identify", method="POST"
        )
        == 3
    )
    for stage in ("decode", "detect", "align", "embed", "search"):
        assert sample(text, "marginface_stage_duration_seconds_count", stage=stage) >= 3, stage
    assert sample(text, "marginface_stage_duration_seconds_count", stage="search") == 3
    assert sample(text, "marginface_embed_batch_size_count") >= 4
    assert sample(text, "marginface_faces_per_image_sum") >= 6 + 3  # t1.jpg has six faces
    assert sample(text, "marginface_gallery_faces") == 1
    assert sample(text, "marginface_gallery_subjects") == 1


def test_request_id_is_echoed_and_logged_as_json(client: TestClient) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("marginface.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        r = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
        fresh = client.get("/v1/subjects/nobody")
        bad = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    finally:
        access.removeHandler(handler)
    assert r.headers["x-request-id"] == "trace-42"
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    assert bad.headers["x-request-id"] != "bad id\twith spaces"  # never echo unvetted input
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["request_id"] == "trace-42" and lines[0]["route"] == "/healthz"
    assert lines[0]["status"] == 200 and lines[0]["duration_ms"] >= 0
    assert lines[1]["request_id"] == fresh.headers["x-request-id"] and lines[1]["status"] == 404
    assert all(API_KEY not in line for line in stream.getvalue().splitlines())


def test_metrics_can_be_switched_off(tmp_path, pipeline: FacePipeline) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(tmp_path, metrics_enabled=False), pipeline=pipeline)
    with TestClient(app) as c:
        r = c.get("/metrics")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_an_unexpected_error_is_logged_and_answered_with_its_request_id(
    client: TestClient, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The catch-all 500 handler runs outside the request-context middleware; its log line and
    its response still carry the request id, so an operator can find the traceback."""
    from service.gallery import Gallery

    def broken(self, subject_id: str):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    monkeypatch.setattr(Gallery, "delete_subject", broken)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    app_log = logging.getLogger("marginface")
    app_log.addHandler(handler)
    try:
        r = client.delete("/v1/subjects/anyone", headers={"X-Request-ID": "trace-500"})
    finally:
        app_log.removeHandler(handler)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-request-id"] == "trace-500" and "trace-500" in r.json()["error"]["message"]
    errors = [json.loads(line) for line in stream.getvalue().splitlines()]
    logged = [e for e in errors if e["msg"].startswith("unhandled error")]
    assert logged and logged[0]["request_id"] == "trace-500" and "a bug" in logged[0]["exc"]
