"""REST API v1 through the app with the real pipeline, gallery and error mapping."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.errors import ConfigError
from service.settings import Settings
from service.vision.pipeline import FacePipeline
from tests.conftest import API_KEY, DATA, lfw, make_settings, png_bytes, read

JPEG = "image/jpeg"


def upload(path: Path) -> tuple[str, bytes, str]:
    return (path.name, read(path), JPEG)


def enroll(
    client: TestClient, subject: str, *paths: Path, status: int = 201, **params: str
) -> dict:
    r = client.post(
        f"/v1/subjects/{subject}/faces",
        files=[("files", upload(p)) for p in paths],
        params=params,
    )
    assert r.status_code == status, r.text
    return r.json()


def snapshot(client: TestClient) -> tuple[int, int, int]:
    gallery = client.get("/readyz").json()["gallery"]
    return gallery["subjects"], gallery["faces"], gallery["indexed"]


def test_enroll_then_identify_same_person(client: TestClient) -> None:
    r = client.post(
        "/v1/subjects", json={"id": "powell", "name": "Colin Powell", "metadata": {"k": 1}}
    )
    assert r.status_code == 201 and r.json()["face_count"] == 0
    client.post("/v1/subjects", json={"id": "bush", "name": "George W Bush"})
    enroll(client, "powell", lfw("Colin_Powell", 1), lfw("Colin_Powell", 2))
    enroll(client, "bush", lfw("George_W_Bush", 1))
    r = client.post("/v1/identify", files={"image": upload(lfw("Colin_Powell", 10))})
    assert r.status_code == 200
    body = r.json()
    assert body["threshold"]["source"].startswith("default identify far=0.0001")

    def area(f: dict) -> float:
        x1, y1, x2, y2 = f["detection"]["box"]
        return float((x2 - x1) * (y2 - y1))

    face = max(body["faces"], key=area)  # this photo shows three people; Powell is the main one
    assert face["decision"] == "match" and face["match"]["subject_id"] == "powell"
    assert len(face["detection"]["landmarks"]) == 5
    # a stranger is unknown (open set)
    r = client.post("/v1/identify", files={"image": upload(lfw("Serena_Williams", 1))})
    assert r.json()["faces"][0]["decision"] == "unknown"
    assert r.json()["faces"][0]["match"] is None


def test_identify_returns_every_face_of_a_group_photo(client: TestClient) -> None:
    client.post("/v1/subjects", json={"id": "x", "name": "X"})
    enroll(client, "x", lfw("Colin_Powell", 1))
    r = client.post(
        "/v1/identify",
        files={"image": upload(DATA / "detection/insightface/t1.jpg")},
        data={"top_k": "1"},
    )
    assert r.status_code == 200
    assert len(r.json()["faces"]) == 6
    assert all(len(f["candidates"]) <= 1 for f in r.json()["faces"])


def test_verify_images_and_subject_with_thresholds(client: TestClient) -> None:
    same = client.post(
        "/v1/verify",
        files={
            "image_a": upload(lfw("Colin_Powell", 1)),
            "image_b": upload(lfw("Colin_Powell", 3)),
        },
    ).json()
    diff = client.post(
        "/v1/verify",
        files={
            "image_a": upload(lfw("Colin_Powell", 1)),
            "image_b": upload(lfw("George_W_Bush", 3)),
        },
    ).json()
    assert same["match"] and not diff["match"] and same["score"] > diff["score"]
    strict = client.post(
        "/v1/verify",
        files={
            "image_a": upload(lfw("Colin_Powell", 1)),
            "image_b": upload(lfw("Colin_Powell", 3)),
        },
        data={"threshold": "0.99"},
    ).json()
    assert strict["threshold"] == {"value": 0.99, "source": "request"} and not strict["match"]
    client.post("/v1/subjects", json={"id": "p", "name": "P"})
    enroll(client, "p", lfw("Colin_Powell", 1), lfw("Colin_Powell", 2))
    r = client.post(
        "/v1/verify", files={"image_a": upload(lfw("Colin_Powell", 5))}, data={"subject_id": "p"}
    )
    assert r.status_code == 200 and r.json()["match"] and r.json()["matched_face_id"] is not None


def test_far_chooses_a_calibrated_threshold(client: TestClient) -> None:
    files = {"image_a": upload(lfw("Colin_Powell", 1)), "image_b": upload(lfw("Colin_Powell", 3))}
    loose = client.post("/v1/verify", files=files, data={"far": "0.01"}).json()["threshold"]
    strict = client.post("/v1/verify", files=files, data={"far": "0.0001"}).json()["threshold"]
    assert strict["value"] > loose["value"] and "FAR 0.0001 threshold" in strict["source"]
    # what it rests on: all 29,640,749 cross-identity pairs, not pairs.txt's 3,000 impostors
    assert "29,640,749 impostor pairs (all cross-identity pairs" in strict["source"]
    default = client.post("/v1/verify", files=files).json()["threshold"]
    assert "best accuracy" in default["source"]
    r = client.post("/v1/verify", files=files, data={"far": "1e-9"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.post("/v1/verify", files=files, data={"far": "0.01", "threshold": "0.3"})
    assert r.json()["error"]["code"] == "invalid_request"
    r = client.post("/v1/verify", files=files, data={"far": "1.5"})
    assert r.json()["error"]["code"] == "validation_error"


def test_subject_crud_and_pagination(client: TestClient) -> None:
    for i in range(7):
        assert (
            client.post("/v1/subjects", json={"id": f"s{i}", "name": f"Name {i}"}).status_code
            == 201
        )
    assert (
        client.post("/v1/subjects", json={"id": "s0", "name": "dup"}).json()["error"]["code"]
        == "subject_exists"
    )
    page = client.get("/v1/subjects", params={"offset": 5, "limit": 5}).json()
    assert page["total"] == 7 and [s["id"] for s in page["items"]] == ["s5", "s6"]
    assert client.get("/v1/subjects", params={"search": "Name 3"}).json()["total"] == 1
    r = client.patch("/v1/subjects/s1", json={"name": "Renamed", "metadata": {"team": "a"}})
    assert r.json()["name"] == "Renamed" and r.json()["metadata"] == {"team": "a"}
    generated = client.post("/v1/subjects", json={"name": "No id"}).json()
    assert len(generated["id"]) == 32
    assert client.delete("/v1/subjects/s1").json() == {"subject_id": "s1", "faces_deleted": 0}
    assert client.get("/v1/subjects/s1").status_code == 404


def test_faces_list_delete_and_reenroll_noop(client: TestClient) -> None:
    client.post("/v1/subjects", json={"id": "p", "name": "P"})
    first = enroll(client, "p", lfw("Colin_Powell", 1))["faces"][0]
    again = enroll(client, "p", lfw("Colin_Powell", 1), status=200)["faces"][0]  # was 201
    assert first["created"] and not again["created"] and first["face_id"] == again["face_id"]
    # one new photo among known ones: 201
    mixed = enroll(client, "p", lfw("Colin_Powell", 1), lfw("Colin_Powell", 2))["faces"]
    assert [f["created"] for f in mixed] == [False, True]
    faces = client.get("/v1/subjects/p/faces").json()
    assert len(faces) == 2 and faces[0]["model_id"].startswith("sface-2021dec@")
    r = client.delete(f"/v1/faces/{first['face_id']}")
    assert r.status_code == 200
    # named fields: {"deleted": 2} read like a count of deleted faces
    assert r.json() == {"face_id": first["face_id"], "faces_deleted": 1}
    assert (
        client.delete(f"/v1/faces/{first['face_id']}").json()["error"]["code"] == "face_not_found"
    )
    r = client.post("/v1/identify", files={"image": upload(lfw("Colin_Powell", 1))})
    found = [c["face_id"] for c in r.json()["faces"][0]["candidates"]]
    assert first["face_id"] not in found and found  # a deleted face is never returned


def test_unknown_query_parameters_are_refused(client: TestClient) -> None:
    """Was: /v1/verify?far=0.01 was answered with the default threshold, far ignored."""
    a = upload(lfw("Colin_Powell", 1))
    r = client.post("/v1/verify?far=0.01", files={"image_a": a, "image_b": a})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "unknown_parameter" and error["details"]["unknown"] == ["far"]
    assert "form field" in error["message"]
    r = client.post("/v1/verify", files={"image_a": a, "image_b": a}, data={"far": "0.01"})
    assert r.status_code == 200 and "far=0.01" in r.json()["threshold"]["source"]
    r = client.get("/v1/subjects", params={"serch": "p"})
    assert r.status_code == 422 and "search" in r.json()["error"]["details"]["accepted"]
    assert client.get("/v1/subjects", params={"search": "p"}).status_code == 200


def test_multiple_faces_policy(client: TestClient) -> None:
    client.post("/v1/subjects", json={"id": "g", "name": "G"})
    group = DATA / "detection/insightface/t1.jpg"
    r = client.post(
        "/v1/subjects/g/faces",
        files=[("files", upload(group))],
        params={"multiple_faces": "reject"},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "multiple_faces"
    assert enroll(client, "g", group, multiple_faces="largest")["faces"][0]["created"]


def test_detect_and_embed(client: TestClient) -> None:
    r = client.post("/v1/detect", files={"image": upload(DATA / "detection/insightface/t1.jpg")})
    assert r.status_code == 200 and len(r.json()["faces"]) == 6
    e = client.post("/v1/embed", files={"image": upload(lfw("Colin_Powell", 1))}).json()
    vec = np.asarray(e["faces"][0]["embedding"])
    assert e["embedding_dim"] == 128 and vec.shape == (128,)
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-4)
    crop = DATA / "glint24_aligned/Barack_Obama/1.jpg"
    aligned = client.post(
        "/v1/embed", files={"image": upload(crop)}, data={"aligned": "true"}
    ).json()
    assert len(aligned["faces"]) == 1 and aligned["faces"][0]["box"] == [0.0, 0.0, 112.0, 112.0]


def test_cmyk_photo_of_a_face_is_enrolled(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.open(lfw("Colin_Powell", 1)).convert("CMYK").save(buf, format="JPEG")
    client.post("/v1/subjects", json={"id": "c", "name": "C"})
    r = client.post("/v1/subjects/c/faces", files=[("files", ("c.jpg", buf.getvalue(), JPEG))])
    assert r.status_code == 201
    r = client.post("/v1/identify", files={"image": upload(lfw("Colin_Powell", 2))})
    assert r.json()["faces"][0]["match"]["subject_id"] == "c"


def _huge_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _gif() -> bytes:
    img = Image.open(lfw("Colin_Powell", 1))
    buf = io.BytesIO()
    img.save(buf, format="GIF", save_all=True, append_images=[img.rotate(5)])
    return buf.getvalue()


BAD_UPLOADS = {
    "text": (b"just some text\n", "invalid_image"),
    "truncated_jpeg": (read(lfw("Colin_Powell", 1))[:3000], "invalid_image"),
    "one_pixel_png": (png_bytes(np.zeros((1, 1, 3), np.uint8)), "unsupported_image"),
    "huge_png": (_huge_png(), "image_too_large"),
    "multi_frame_gif": (_gif(), "unsupported_image"),
    "no_face": (png_bytes(np.full((200, 200, 3), 127, np.uint8)), "no_face"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_get_4xx_and_leave_gallery_unchanged(client: TestClient, case: str) -> None:
    data, code = BAD_UPLOADS[case]
    client.post("/v1/subjects", json={"id": "p", "name": "P"})
    enroll(client, "p", lfw("Colin_Powell", 1))
    before = snapshot(client)
    r = client.post("/v1/subjects/p/faces", files=[("files", ("x.jpg", data, JPEG))])
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"] == code
    # all or nothing: a good photo next to a bad one is not enrolled either
    r = client.post(
        "/v1/subjects/p/faces",
        files=[("files", upload(lfw("Colin_Powell", 2))), ("files", ("x.jpg", data, JPEG))],
    )
    assert r.json()["error"]["code"] == code
    for route, field in (
        ("/v1/identify", "image"),
        ("/v1/detect", "image"),
        ("/v1/embed", "image"),
    ):
        r = client.post(route, files={field: ("x.jpg", data, JPEG)})
        if (case == "no_face" and route != "/v1/identify") or case == "no_face":
            assert r.status_code == 200 and r.json()["faces"] == []
        else:
            assert 400 <= r.status_code < 500 and r.json()["error"]["code"] == code
    assert snapshot(client) == before


def test_request_level_errors(client: TestClient) -> None:
    before = snapshot(client)
    cases = [
        (client.post("/v1/identify", content=b""), "validation_error"),
        (client.post("/v1/identify", files={"image": ("x.jpg", b"", JPEG)}), "invalid_image"),
        (
            client.post(
                "/v1/subjects/nobody/faces", files=[("files", upload(lfw("Colin_Powell", 1)))]
            ),
            "subject_not_found",
        ),
        (client.get("/v1/subjects/nobody"), "subject_not_found"),
        (
            client.post(
                "/v1/verify",
                files={"image_a": upload(lfw("Colin_Powell", 1))},
                data={"subject_id": "nobody"},
            ),
            "subject_not_found",
        ),
        (
            client.post("/v1/verify", files={"image_a": upload(lfw("Colin_Powell", 1))}),
            "invalid_request",
        ),
        (
            client.post(
                "/v1/identify",
                files={"image": upload(lfw("Colin_Powell", 1))},
                data={"threshold": "1.5"},
            ),
            "validation_error",
        ),
        (
            client.post(
                "/v1/identify",
                files={"image": upload(lfw("Colin_Powell", 1))},
                data={"top_k": "100000"},
            ),
            "invalid_request",
        ),
        (
            client.post(
                "/v1/subjects", content=b"{not json", headers={"content-type": "application/json"}
            ),
            "validation_error",
        ),
        (client.post("/v1/subjects", json={"name": "x", "unknown": 1}), "validation_error"),
        (client.post("/v1/subjects", json={"id": "bad id/..", "name": "x"}), "invalid_subject_id"),
        (client.get("/v1/nothing-here"), "not_found"),
        (client.get("/v1/subjects", headers={"X-API-Key": "wrong"}), "unauthorized"),
        (client.get("/v1/subjects", headers={"X-API-Key": ""}), "unauthorized"),
    ]
    for response, code in cases:
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["code"] == code, response.text
    assert snapshot(client) == before


def test_upload_limits(tmp_path: Path, pipeline: FacePipeline) -> None:
    settings = make_settings(tmp_path, limits={"max_upload_bytes": 2048, "max_request_bytes": 4096})
    with TestClient(create_app(settings, pipeline=pipeline), headers={"X-API-Key": API_KEY}) as c:
        big = read(lfw("Colin_Powell", 1))
        assert len(big) > 4096
        r = c.post("/v1/detect", files={"image": ("x.jpg", big, JPEG)})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = c.post("/v1/detect", files={"image": ("x.jpg", big[:3000], JPEG)})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_health_is_open_and_readyz_reports_providers(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-API-Key": ""}).json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["recognizer"]["providers"] == ["CPUExecutionProvider"]
    assert ready["detector"]["providers"] == ["CPUExecutionProvider"]


def test_refuses_to_start_without_keys_unless_auth_disabled(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    nothing = {"keys_file": tmp_path / "no-keys.json"}
    with pytest.raises(ConfigError, match="API keys"):
        create_app(Settings(gallery={"path": tmp_path}, auth=nothing), pipeline=pipeline)
    open_app = create_app(make_settings(tmp_path, auth={"disabled": True}), pipeline=pipeline)
    with TestClient(open_app) as c:
        assert c.get("/v1/subjects").status_code == 200


def test_model_mismatch_is_refused(tmp_path: Path, pipeline: FacePipeline) -> None:
    from service.gallery.embedded import embedded_gallery

    other = embedded_gallery(tmp_path / "gallery", model_id="someone-else@abc", embedding_dim=128)
    other.create_subject("p", "P", {})
    other.close()
    with TestClient(
        create_app(make_settings(tmp_path), pipeline=pipeline), headers={"X-API-Key": API_KEY}
    ) as c:
        r = c.post("/v1/subjects/p/faces", files=[("files", upload(lfw("Colin_Powell", 1)))])
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_mismatch"
        r = c.post("/v1/identify", files={"image": upload(lfw("Colin_Powell", 1))})
        assert r.json()["error"]["code"] == "model_mismatch"


def test_json_answers_end_with_a_newline(client: TestClient) -> None:
    """`curl` printed the README's Try-it answers and the next prompt on one line."""
    ok = client.get("/v1/subjects")
    missing = client.get("/v1/subjects/nobody")
    for r in (ok, missing, client.get("/readyz")):
        assert r.headers["content-type"].startswith("application/json")
        assert r.content.endswith(b"}\n"), r.content[-20:]
        r.json()  # still one JSON document
