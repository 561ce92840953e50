"""Issue 26, item 4: a face chip per face is kept by default (what re-embedding with a new
model needs, and the example image of a face), encrypted at rest with a key, erased with its
face and its subject; opting out keeps none. Kept photos stay opt-in."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from service.app import create_app
from service.images import new_key
from service.vision.chip import CHIP_MAX_SIDE
from service.vision.image import decode_image
from service.vision.pipeline import FacePipeline
from tests.conftest import API_KEY, kept_files, lfw, make_settings, read

POWELL = [lfw("Colin_Powell", 1), lfw("Colin_Powell", 2)]
JPEG = b"\xff\xd8\xff"


def enroll(c: TestClient, subject: str, photos: list[Path]) -> list[int]:
    assert c.post("/v1/subjects", json={"id": subject, "name": subject}).status_code == 201
    files = [("files", (p.name, read(p), "image/jpeg")) for p in photos]
    r = c.post(f"/v1/subjects/{subject}/faces", files=files)
    assert r.status_code == 201, r.text
    return [f["face_id"] for f in r.json()["faces"]]


def app_client(tmp_path: Path, pipeline: FacePipeline, **privacy: object) -> TestClient:
    settings = make_settings(tmp_path, privacy={"images_dir": tmp_path / "images", **privacy})
    return TestClient(create_app(settings, pipeline=pipeline), headers={"X-API-Key": API_KEY})


def test_a_rest_enrollment_keeps_a_chip_per_face_by_default_and_erases_it_with_the_face(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    images = tmp_path / "images"
    with app_client(tmp_path, pipeline) as c:
        face_ids = enroll(c, "powell", POWELL)
        for face_id in face_ids:
            r = c.get(f"/v1/faces/{face_id}/chip")
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            assert r.content.startswith(JPEG)
            chip = decode_image(r.content)
            assert chip.shape[0] == chip.shape[1] <= CHIP_MAX_SIDE
            assert (images / f"{face_id}.chip.img").read_bytes() == r.content  # no key: plain
            photo = c.get(f"/v1/faces/{face_id}/image")  # photos stay opt-in
            assert photo.status_code == 404 and "keep_images is off" in photo.text
        assert sorted(p.name for p in kept_files(images)) == sorted(
            f"{f}.chip.img" for f in face_ids
        )  # chips only: no photo is kept
        assert c.delete(f"/v1/faces/{face_ids[0]}").status_code == 200
        assert not (images / f"{face_ids[0]}.chip.img").exists()
        gone = c.get(f"/v1/faces/{face_ids[0]}/chip")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "face_not_found"
        assert c.delete("/v1/subjects/powell").status_code == 200
        assert list(kept_files(images)) == []
        assert c.get(f"/v1/faces/{face_ids[1]}/chip").status_code == 404


def test_chips_are_encrypted_at_rest_with_a_key(tmp_path: Path, pipeline: FacePipeline) -> None:
    key = new_key()
    images = tmp_path / "images"
    with app_client(tmp_path, pipeline, images_key=key) as c:
        (face_id,) = enroll(c, "powell", POWELL[:1])
        served = c.get(f"/v1/faces/{face_id}/chip")
        assert served.status_code == 200 and served.content.startswith(JPEG)
        stored = (images / f"{face_id}.chip.enc").read_bytes()
        assert not stored.startswith(JPEG) and served.content[100:140] not in stored
        assert Fernet(key.encode()).decrypt(stored) == served.content
        assert not (images / f"{face_id}.chip.img").exists()
        assert c.delete("/v1/subjects/powell").status_code == 200
        assert list(kept_files(images)) == []


def test_opting_out_keeps_no_chip(tmp_path: Path, pipeline: FacePipeline) -> None:
    with app_client(tmp_path, pipeline, keep_face_chips=False) as c:
        (face_id,) = enroll(c, "powell", POWELL[:1])
        r = c.get(f"/v1/faces/{face_id}/chip")
        assert r.status_code == 404 and r.json()["error"]["code"] == "face_not_found"
        assert "keep_face_chips is off" in r.json()["error"]["message"]
    assert not (tmp_path / "images").exists()


def test_photos_and_chips_are_kept_apart(tmp_path: Path, pipeline: FacePipeline) -> None:
    """With keep_images on as well, the photo is served as it was sent and the chip beside it."""
    images = tmp_path / "images"
    with app_client(tmp_path, pipeline, keep_images=True) as c:
        (face_id,) = enroll(c, "powell", POWELL[:1])
        assert c.get(f"/v1/faces/{face_id}/image").content == read(POWELL[0])
        chip = c.get(f"/v1/faces/{face_id}/chip").content
        assert chip.startswith(JPEG) and chip != read(POWELL[0])
        assert sorted(p.name for p in kept_files(images)) == [
            f"{face_id}.chip.img",
            f"{face_id}.img",
        ]
        assert c.delete(f"/v1/faces/{face_id}").status_code == 200
        assert list(kept_files(images)) == []


def test_compreface_example_image_falls_back_to_the_chip(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    with app_client(tmp_path, pipeline) as c:
        r = c.post(
            "/api/v1/recognition/faces",
            params={"subject": "powell"},
            files={"file": (POWELL[0].name, read(POWELL[0]), "image/jpeg")},
        )
        assert r.status_code == 201, r.text
        image_id = r.json()["image_id"]
        face_id = int(image_id.replace("-", ""), 16)
        img = c.get(f"/api/v1/recognition/faces/{image_id}/img")
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
        assert img.content == c.get(f"/v1/faces/{face_id}/chip").content
        assert (tmp_path / "images" / f"{face_id}.chip.img").exists()


def test_an_index_job_keeps_a_chip_per_face_by_default(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    """The batch path the API runs (POST /v1/jobs/index), not only the indexer in process."""
    from tests.api.test_jobs import people_zip, post_zip, wait

    with app_client(tmp_path, pipeline) as c:
        job = wait(c, post_zip(c, people_zip()).json()["id"])
        assert job["status"] == "succeeded" and job["summary"]["enrolled"] == 6, job
        face_ids = [
            f["id"]
            for s in c.get("/v1/subjects").json()["items"]
            for f in c.get(f"/v1/subjects/{s['id']}/faces").json()
        ]
        assert len(face_ids) == 6
        for face_id in face_ids:
            r = c.get(f"/v1/faces/{face_id}/chip")
            assert r.status_code == 200 and r.content.startswith(JPEG)
        kept = sorted(p.name for p in kept_files(tmp_path / "images"))
        assert kept == sorted(f"{f}.chip.img" for f in face_ids)


def test_naming_a_cluster_keeps_a_chip_per_face(tmp_path: Path, pipeline: FacePipeline) -> None:
    """A cluster job deletes its photos once their faces are found: the chips are cut then,
    kept with the job's thumbnails, and go into the gallery with the faces a naming enrolls."""
    from tests.api.test_clusters import pile, submit

    settings = make_settings(
        tmp_path, jobs={"work_dir": tmp_path / "jobs"}, privacy={"images_dir": tmp_path / "images"}
    )
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}) as c:
        data, _ = pile()
        job = submit(c, data)
        view = c.get(f"/v1/jobs/{job['id']}/clusters").json()
        cluster = max(view["clusters"], key=lambda k: k["size"])
        r = c.post(
            f"/v1/jobs/{job['id']}/clusters/{cluster['cluster']}/subject",
            json={"subject_id": "someone", "name": "Someone"},
        )
        assert r.status_code == 200, r.text
        face_ids = r.json()["face_ids"]
        assert len(face_ids) == cluster["size"] >= 3
        for face_id in face_ids:
            chip = c.get(f"/v1/faces/{face_id}/chip")
            assert chip.status_code == 200 and chip.content.startswith(JPEG)
            assert len(pipeline.analyze(decode_image(chip.content))) >= 1
        kept = sorted(p.name for p in kept_files(tmp_path / "images"))
        assert kept == sorted(f"{f}.chip.img" for f in face_ids)
        assert c.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert not [p for p in (tmp_path / "jobs").rglob("*.jpg")]  # the job's copies went
        assert c.get(f"/v1/faces/{face_ids[0]}/chip").status_code == 200  # the gallery's stay
