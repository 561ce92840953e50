"""Our own image routes take base64 JSON as well as multipart, and a body that is neither is
refused with an error that names both (the trial of issue 28: a 422 "Field required" did not
say that multipart was needed)."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient

from tests.conftest import lfw, read


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_base64_json_gives_the_multipart_answers(client: TestClient) -> None:
    a, b = read(lfw("Colin_Powell", 2)), read(lfw("Colin_Powell", 3))
    assert client.post("/v1/subjects", json={"id": "powell", "name": "P"}).status_code == 201
    r = client.post("/v1/subjects/powell/faces", json={"files": [b64(a)]})
    assert r.status_code == 201, r.text
    r = client.post("/v1/subjects/powell/faces", files=[("files", ("a.jpg", a, "image/jpeg"))])
    assert (r.status_code, r.json()["faces"][0]["created"]) == (200, False)  # the same photo
    multipart = client.post(
        "/v1/identify", files={"image": ("b.jpg", b, "image/jpeg")}, data={"top_k": "2"}
    ).json()
    as_json = client.post("/v1/identify", json={"image": b64(b), "top_k": 2}).json()
    assert as_json == multipart and as_json["faces"][0]["match"]["subject_id"] == "powell"
    r = client.post("/v1/verify", json={"image_a": b64(a), "image_b": b64(b), "far": 0.001})
    assert r.status_code == 200 and r.json()["match"] is True
    assert r.json()["threshold"]["source"].startswith("request far=0.001")
    r = client.post("/v1/verify", json={"image_a": b64(a), "subject_id": "powell"})
    assert r.status_code == 200 and r.json()["subject_id"] == "powell"
    detect = client.post("/v1/detect", json={"image": f"data:image/jpeg;base64,{b64(b)}"})
    assert detect.status_code == 200 and len(detect.json()["faces"]) == 1
    embed = client.post("/v1/embed", json={"image": b64(b)})
    assert len(embed.json()["faces"][0]["embedding"]) == 128


def test_a_body_that_is_not_multipart_names_multipart(client: TestClient) -> None:
    photo = read(lfw("Colin_Powell", 2))
    r = client.post("/v1/identify", content=photo, headers={"content-type": "image/jpeg"})
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "multipart/form-data" in message and "application/json" in message
    assert "image" in message
    r = client.post("/v1/identify", json={"image": "not base64 !"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_image")
    assert "base64" in r.json()["error"]["message"].lower()
    r = client.post("/v1/identify", json={"picture": b64(photo)})
    assert r.status_code == 422 and "'image'" in r.json()["error"]["message"]
    r = client.post("/v1/identify", json=[b64(photo)])
    assert r.status_code == 422 and "object" in r.json()["error"]["message"]
