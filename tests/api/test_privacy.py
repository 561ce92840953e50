"""Privacy settings: photos are not kept by default (a face chip per face is:
test_face_chips.py), kept encrypted when asked, erased with their subject; every write or admin
request leaves an audit line with no biometric data; CORS is off unless origins are configured."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.keys import create_key
from service.vision.pipeline import FacePipeline
from tests.conftest import API_KEY, ROOT, kept_files, lfw, make_settings, read

POWELL = [lfw("Colin_Powell", 1), lfw("Colin_Powell", 2)]


def enroll(c: TestClient, subject: str, photos: list[Path], **meta: object) -> list[int]:
    r = c.post("/v1/subjects", json={"id": subject, "name": "Colin Powell", "metadata": meta})
    assert r.status_code == 201, r.text
    files = [("files", (p.name, read(p), "image/jpeg")) for p in photos]
    r = c.post(f"/v1/subjects/{subject}/faces", files=files)
    assert r.status_code == 201, r.text
    return [f["face_id"] for f in r.json()["faces"]]


def test_photos_are_not_kept_by_default(tmp_path: Path, pipeline: FacePipeline) -> None:
    """Only a face chip per face is kept by default (tests/api/test_face_chips.py): no photo,
    neither in the images folder nor in the gallery."""
    settings = make_settings(tmp_path, privacy={"images_dir": tmp_path / "images"})
    with TestClient(create_app(settings, pipeline=pipeline), headers={"X-API-Key": API_KEY}) as c:
        face_ids = enroll(c, "powell", POWELL)
        r = c.get(f"/v1/faces/{face_ids[0]}/image")
        assert r.status_code == 404 and r.json()["error"]["code"] == "face_not_found"
        assert "keep_images is off" in r.json()["error"]["message"]
    kept = sorted(p.name for p in kept_files(tmp_path / "images"))
    assert kept == sorted(f"{f}.chip.img" for f in face_ids)  # chips only, never a photo
    for photo in POWELL:
        for path in kept_files(tmp_path / "images"):
            assert read(photo)[1000:1064] not in path.read_bytes()
    gallery_files = b"".join(p.read_bytes() for p in (tmp_path / "gallery").iterdir())
    assert read(POWELL[0])[1000:1064] not in gallery_files  # no photo bytes in the gallery


def test_kept_photos_are_encrypted_at_rest_and_erased_with_the_subject(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    key = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "images-key", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    images = tmp_path / "images"
    settings = make_settings(
        tmp_path,
        privacy={
            "keep_images": True,
            "images_dir": images,
            "images_key": json.loads(key.stdout)["images_key"],
        },
    )
    with TestClient(create_app(settings, pipeline=pipeline), headers={"X-API-Key": API_KEY}) as c:
        face_ids = enroll(c, "powell", POWELL)
        for face_id, photo in zip(face_ids, POWELL, strict=True):
            r = c.get(f"/v1/faces/{face_id}/image")
            assert r.status_code == 200 and r.content == read(photo)
            assert r.headers["content-type"] == "image/jpeg"
            stored = (images / f"{face_id}.enc").read_bytes()
            assert b"\xff\xd8\xff" not in stored and read(photo)[2000:2032] not in stored
        assert c.delete(f"/v1/faces/{face_ids[0]}").status_code == 200
        assert not (images / f"{face_ids[0]}.enc").exists()
        assert c.delete("/v1/subjects/powell").status_code == 200
        assert list(kept_files(images)) == []
        assert c.get(f"/v1/faces/{face_ids[1]}/image").status_code == 404


def test_every_write_and_admin_request_is_audited_without_biometrics(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    keys_file = tmp_path / "keys.json"
    writer = create_key(keys_file, "hr-desk", ["read", "write"])
    reader = create_key(keys_file, "door-camera", ["read"])
    admin = create_key(keys_file, "ops", ["admin"])
    audit = tmp_path / "audit" / "audit.jsonl"
    settings = make_settings(
        tmp_path, auth={"keys_file": str(keys_file)}, privacy={"audit_log_path": audit}
    )
    with TestClient(create_app(settings, pipeline=pipeline)) as c:
        c.headers["X-API-Key"] = writer
        face_ids = enroll(c, "powell", POWELL, badge="B-1234")
        assert c.patch("/v1/subjects/powell", json={"name": "C. Powell"}).status_code == 200
        probe = {"image": ("p.jpg", read(lfw("Colin_Powell", 3)), "image/jpeg")}
        assert c.post("/v1/identify", files=probe).status_code == 200  # a read: not audited
        negative = c.post("/v1/subjects/powell/negatives", files=probe)  # "not this person"
        assert negative.status_code == 201, negative.text
        assert c.delete(f"/v1/faces/{face_ids[0]}").status_code == 200
        refused = c.delete("/v1/subjects/powell", headers={"X-API-Key": reader})
        assert refused.status_code == 403
        assert c.delete("/v1/subjects/powell", headers={"X-API-Key": "stolen"}).status_code == 401
        assert c.get("/v1/gallery/export", headers={"X-API-Key": admin}).status_code == 200
        assert c.delete("/v1/subjects/powell").status_code == 200
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["who"], e["action"], e["status"]) for e in entries] == [
        ("hr-desk", "POST /v1/subjects", 201),
        ("hr-desk", "POST /v1/subjects/{subject_id}/faces", 201),
        ("hr-desk", "PATCH /v1/subjects/{subject_id}", 200),
        ("hr-desk", "POST /v1/subjects/{subject_id}/negatives", 201),
        ("hr-desk", "DELETE /v1/faces/{face_id}", 200),
        ("door-camera", "DELETE /v1/subjects/{subject_id}", 403),
        ("unknown-key", "DELETE /v1/subjects/{subject_id}", 401),
        ("ops", "GET /v1/gallery/export", 200),
        ("hr-desk", "DELETE /v1/subjects/{subject_id}", 200),
    ]
    assert entries[3]["negative_ids"] == [negative.json()["id"]]
    assert entries[3]["subject_id"] == "powell" and "embedding" not in entries[3]
    assert entries[4]["face_id"] == str(face_ids[0]) and entries[5]["subject_id"] == "powell"
    assert entries[5]["outcome"] == "refused" and entries[0]["outcome"] == "ok"
    assert all(e["at"].endswith("+00:00") and len(e["request_id"]) >= 8 for e in entries)
    text = audit.read_text()
    for secret in ("Colin Powell", "C. Powell", "B-1234", writer, reader, admin, "stolen"):
        assert secret not in text  # names, metadata and keys stay out of the audit trail


def test_cors_is_off_by_default_and_allows_only_configured_origins(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    preflight = {
        "Origin": "https://console.example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-API-Key",
    }
    with TestClient(create_app(make_settings(tmp_path), pipeline=pipeline)) as c:
        r = c.options("/v1/identify", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/healthz", headers={"Origin": "https://console.example.org"})
        assert "access-control-allow-origin" not in r.headers
    settings = make_settings(tmp_path, cors_allow_origins=["https://console.example.org"])
    with TestClient(create_app(settings, pipeline=pipeline)) as c:
        r = c.options("/v1/identify", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://console.example.org"
        assert "x-api-key" in r.headers["access-control-allow-headers"].lower()
        other = c.options("/v1/identify", headers={**preflight, "Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in other.headers


def kept_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_settings(tmp_path, privacy={"keep_images": True, "images_dir": tmp_path / "images"})


def test_a_delete_racing_an_enrollment_leaves_no_kept_photo(
    tmp_path: Path, pipeline: FacePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12, finding 2: the photo was written after the commit and outside the gallery
    lock, so a delete that ran in between erased the face and then the photo appeared."""
    from service.images import ImageVault

    writing, release = threading.Event(), threading.Event()
    real_put = ImageVault.put

    def slow_put(self: ImageVault, face_id: int, data: bytes) -> None:
        writing.set()
        release.wait(timeout=10)  # a slow disk
        real_put(self, face_id, data)

    monkeypatch.setattr(ImageVault, "put", slow_put)
    images = tmp_path / "images"
    with TestClient(
        create_app(kept_settings(tmp_path), pipeline=pipeline), headers={"X-API-Key": API_KEY}
    ) as c:
        assert c.post("/v1/subjects", json={"id": "p", "name": "P"}).status_code == 201
        files = [("files", (POWELL[0].name, read(POWELL[0]), "image/jpeg"))]
        enrolled: list[int] = []
        deleted: list[int] = []
        enroll_thread = threading.Thread(
            target=lambda: enrolled.append(c.post("/v1/subjects/p/faces", files=files).status_code)
        )
        enroll_thread.start()
        assert writing.wait(timeout=30)
        delete_thread = threading.Thread(
            target=lambda: deleted.append(c.delete("/v1/subjects/p").status_code)
        )
        delete_thread.start()
        delete_thread.join(timeout=1)  # main: the delete finished while the photo was written
        release.set()
        enroll_thread.join(timeout=30)
        delete_thread.join(timeout=30)
        assert enrolled == [201] and deleted == [200]
        assert c.get("/v1/subjects/p").status_code == 404
        assert sorted(p.name for p in kept_files(images)) == []  # no photo outlives its face


def test_kept_photos_match_the_faces_under_concurrent_enroll_and_delete(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    """Photos on disk are exactly the photos of the faces the gallery holds, whatever order
    concurrent enrollments and deletes run in."""
    images = tmp_path / "images"
    photos = [lfw("Colin_Powell", n) for n in range(1, 7)]
    errors: list[str] = []
    with TestClient(
        create_app(kept_settings(tmp_path), pipeline=pipeline), headers={"X-API-Key": API_KEY}
    ) as c:

        def worker(t: int) -> None:
            for round_ in range(4):
                sid = f"w{t}-{round_}"
                c.post("/v1/subjects", json={"id": sid, "name": sid})
                files = [("files", (p.name, read(p), "image/jpeg")) for p in photos[t::3][:2]]
                r = c.post(f"/v1/subjects/{sid}/faces", files=files)
                if r.status_code not in (201, 404):
                    errors.append(r.text)
                if round_ % 2 == 0:
                    c.delete(f"/v1/subjects/{sid}")

        def deleter() -> None:
            for _ in range(20):
                for s in c.get("/v1/subjects", params={"limit": 500}).json()["items"]:
                    if s["id"].endswith("-1"):
                        c.delete(f"/v1/subjects/{s['id']}")

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)]
        threads.append(threading.Thread(target=deleter))
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        kept = set()
        for s in c.get("/v1/subjects", params={"limit": 500}).json()["items"]:
            kept |= {f["id"] for f in c.get(f"/v1/subjects/{s['id']}/faces").json()}
    on_disk = {int(p.name.split(".")[0]) for p in kept_files(images)}
    assert on_disk == kept
