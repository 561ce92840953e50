"""The hostile corpus against a real uvicorn process: a documented 4xx or a correct 200 for
every request, never a 5xx or a hang, and the gallery unchanged by the failures."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.backends import Distributed, backend_env
from tests.conftest import lfw, read
from tests.reliability.corpus import FACE, corpus
from tests.test_server import HEADERS, free_port, server


def state(c: httpx.Client) -> tuple[object, ...]:
    victim = c.get("/v1/subjects/victim/faces").json()
    subjects = c.get("/v1/subjects", params={"limit": 500}).json()["items"]
    ready = c.get("/readyz").json()["gallery"]
    return (
        [f["id"] for f in victim],
        sorted(s["id"] for s in subjects if not s["id"].startswith("name-")),
        ready["faces"] - sum(s["face_count"] for s in subjects if s["id"] == "valid-target"),
    )


@pytest.mark.slow
def test_hostile_corpus_against_a_real_server(
    tmp_path: Path, gallery_backend: Distributed | None
) -> None:
    port = free_port()
    cases = corpus()
    assert len(cases) > 100
    with (
        server(tmp_path / "gallery", port, backend_env(gallery_backend)),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=60) as c,
    ):
        assert c.post("/v1/subjects", json={"id": "victim", "name": "V"}).status_code == 201
        assert c.post("/v1/subjects", json={"id": "valid-target", "name": "T"}).status_code == 201
        r = c.post(
            "/v1/subjects/victim/faces", files=[("files", ("a.jpg", read(FACE), "image/jpeg"))]
        )
        assert r.status_code == 201
        before = state(c)
        failures = []
        for case in cases:
            path = case.path
            if case.name.startswith("enroll_") and case.expect == {201}:
                path = path.replace("victim", "valid-target")  # valid images may be enrolled
            try:
                r = c.request(case.method, path, **case.request())
            except httpx.TransportError as exc:  # the server may close on an oversized body
                if case.name != "oversized_body":
                    failures.append((case.name, f"transport error {exc!r}"))
                continue
            code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
            if r.status_code >= 500 or r.status_code not in case.expect:
                failures.append((case.name, r.status_code, r.text[:200]))
            elif code is not None and case.codes and code not in case.codes:
                failures.append((case.name, r.status_code, code))
        assert not failures, failures
        assert c.get("/healthz").status_code == 200
        assert state(c) == before


def rotate_by_exif(photo: Image.Image, orientation: int) -> bytes:
    """Store the pixels so that applying EXIF orientation `orientation` gives back `photo`."""
    undo = {
        1: [],
        2: [Image.Transpose.FLIP_LEFT_RIGHT],
        3: [Image.Transpose.ROTATE_180],
        4: [Image.Transpose.FLIP_TOP_BOTTOM],
        5: [Image.Transpose.TRANSPOSE],
        6: [Image.Transpose.ROTATE_90],
        7: [Image.Transpose.TRANSVERSE],
        8: [Image.Transpose.ROTATE_270],
    }[orientation]
    stored = photo
    for op in undo:
        stored = stored.transpose(op)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_exif_rotated_photos_match_like_the_upright_one(client: TestClient) -> None:
    assert client.post("/v1/subjects", json={"id": "powell", "name": "P"}).status_code == 201
    r = client.post(
        "/v1/subjects/powell/faces",
        files=[("files", ("a.jpg", read(lfw("Colin_Powell", 1)), "image/jpeg"))],
    )
    assert r.status_code == 201
    upright = Image.open(lfw("Colin_Powell", 2)).convert("RGB")
    scores = []
    for orientation in range(1, 9):
        data = rotate_by_exif(upright, orientation)
        r = client.post("/v1/identify", files={"image": ("r.jpg", data, "image/jpeg")})
        assert r.status_code == 200
        face = r.json()["faces"][0]
        assert face["match"]["subject_id"] == "powell", orientation
        scores.append(face["match"]["score"])
    assert max(scores) - min(scores) < 0.02  # the same face, whatever the EXIF says
