"""CompreFace's REST API on MarginFace (in-process, real pipeline): its shapes, its error body on
its routes only, its plugins, and the same answers as our own routes."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.compreface.similarity import SimilarityScale
from service.app import create_app
from service.vision.pipeline import FacePipeline
from tests.conftest import API_KEY, DATA, lfw, make_settings, read

RECOGNITION = "/api/v1/recognition"
PEOPLE = ["Colin_Powell", "George_W_Bush", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder"]
GROUP = DATA / "detection" / "insightface" / "t1.jpg"


@pytest.fixture
def cf(tmp_path: Path, pipeline: FacePipeline) -> Iterator[TestClient]:
    """The app with kept photos (CompreFace keeps example images by default), authenticated
    with CompreFace's lower-case header name."""
    settings = make_settings(
        tmp_path, privacy={"keep_images": True, "images_dir": tmp_path / "images"}
    )
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"x-api-key": API_KEY}, raise_server_exceptions=False) as c:
        yield c


def jpeg(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (path.name, read(path), "image/jpeg")}


def b64(path: Path) -> str:
    return base64.b64encode(read(path)).decode()


def add(c: TestClient, subject: str, path: Path) -> str:
    r = c.post(f"{RECOGNITION}/faces", params={"subject": subject}, files=jpeg(path))
    assert r.status_code == 201, r.text
    assert r.json()["subject"] == subject
    return str(r.json()["image_id"])


def test_subjects_and_examples_as_compreface_documents_them(cf: TestClient) -> None:
    r = cf.post(f"{RECOGNITION}/subjects", json={"subject": "Colin Powell"})
    assert (r.status_code, r.json()) == (201, {"subject": "Colin Powell"})
    r = cf.post(f"{RECOGNITION}/subjects", json={"subject": "Colin Powell"})
    assert (r.status_code, r.json()["code"]) == (400, 43)  # SUBJECT_ALREADY_EXISTS
    powell = add(cf, "Colin Powell", lfw("Colin_Powell", 1))
    # an example for a subject that does not exist creates it (base64 JSON this time)
    r = cf.post(
        f"{RECOGNITION}/faces",
        params={"subject": "Tony Blair", "det_prob_threshold": 0.8},
        json={"file": b64(lfw("Tony_Blair", 2))},
    )
    assert r.status_code == 201, r.text
    blair = r.json()["image_id"]
    assert cf.get(f"{RECOGNITION}/subjects").json() == {"subjects": ["Colin Powell", "Tony Blair"]}
    page = cf.get(f"{RECOGNITION}/faces", params={"page": 0, "size": 1}).json()
    assert page == {
        "faces": [{"image_id": powell, "subject": "Colin Powell"}],
        "page_number": 0,
        "page_size": 1,
        "total_pages": 2,
        "total_elements": 2,
    }
    only = cf.get(f"{RECOGNITION}/faces", params={"subject": "Tony Blair"}).json()
    assert [f["image_id"] for f in only["faces"]] == [blair]
    # the example's image, by the keyed route and by the direct link
    assert cf.get(f"{RECOGNITION}/faces/{powell}/img").content == read(lfw("Colin_Powell", 1))
    link = f"/api/v1/static/{API_KEY}/images/{blair}"
    assert cf.get(link, headers={"x-api-key": ""}).content == read(lfw("Tony_Blair", 2))
    assert cf.get(f"/api/v1/static/wrong-key/images/{blair}").status_code == 401
    assert cf.get(f"{RECOGNITION}/faces/00000000-0000-0000-0000-0000000000ff/img").content == b""
    # rename; a rename onto an existing subject (CompreFace merges) is refused, nothing changes
    r = cf.put(f"{RECOGNITION}/subjects/Colin Powell", json={"subject": "General Powell"})
    assert r.json() == {"updated": True}
    r = cf.put(f"{RECOGNITION}/subjects/General Powell", json={"subject": "Tony Blair"})
    assert (r.status_code, r.json()["code"]) == (400, 43)
    assert cf.get(f"{RECOGNITION}/subjects").json()["subjects"] == ["General Powell", "Tony Blair"]
    # a new subject may take the old name (its id is then not its name)
    add(cf, "Colin Powell", lfw("Colin_Powell", 2))
    r = cf.post(f"{RECOGNITION}/faces/delete", json=[powell, "not-a-uuid"])
    assert r.json() == [{"image_id": powell, "subject": "General Powell"}]
    r = cf.delete(f"{RECOGNITION}/faces/{powell}")
    assert (r.status_code, r.json()["code"]) == (404, 11)
    assert cf.delete(f"{RECOGNITION}/faces", params={"subject": "Tony Blair"}).json() == {
        "deleted": 1
    }
    assert cf.delete(f"{RECOGNITION}/subjects/Tony Blair").json() == {"subject": "Tony Blair"}
    r = cf.delete(f"{RECOGNITION}/subjects/Tony Blair")
    assert r.status_code == 404
    assert r.json() == {"message": "Subject Tony Blair not found", "code": 42}
    assert cf.delete(f"{RECOGNITION}/subjects").json() == {"deleted": 2}
    assert cf.get(f"{RECOGNITION}/faces").json()["total_elements"] == 0
    assert cf.get("/v1/subjects").json()["total"] == 0  # the same gallery as our own API


def test_an_example_with_two_faces_or_none_is_refused(cf: TestClient) -> None:
    r = cf.post(f"{RECOGNITION}/faces", params={"subject": "group"}, files=jpeg(GROUP))
    assert (r.status_code, r.json()["code"]) == (400, 31)  # TOO_MANY_FACES
    dogs = DATA / "detection" / "dlib_faces" / "dogs.jpg"
    r = cf.post(f"{RECOGNITION}/recognize", files=jpeg(dogs))
    assert r.json() == {"message": "No face is found in the given image", "code": 28}
    assert r.status_code == 400


def test_recognize_gives_the_subjects_and_scores_of_v1_identify(
    cf: TestClient, pipeline: FacePipeline
) -> None:
    """On 18 photos (15 of enrolled people, 3 of strangers): the same subjects, in the same
    order, and similarity = the documented map of identify's cosine."""
    for name in PEOPLE:
        add(cf, name, lfw(name, 2))
    probes = [lfw(n, k) for n in PEOPLE for k in (3, 4, 5)]
    probes += [lfw("Hugo_Chavez", 1), lfw("Jean_Chretien", 1), lfw("Ariel_Sharon", 2)]
    scale = SimilarityScale.for_manifest(pipeline.embedder.manifest)
    for probe in probes:
        ours = cf.post(
            "/v1/identify", files={"image": ("p.jpg", read(probe), "image/jpeg")}, data={"top_k": 3}
        ).json()["faces"]
        theirs = cf.post(
            f"{RECOGNITION}/recognize", params={"prediction_count": 3}, files=jpeg(probe)
        ).json()["result"]
        assert len(theirs) == len(ours)
        for face in theirs:
            b = face["box"]
            corners = np.array([b["x_min"], b["y_min"], b["x_max"], b["y_max"]])
            mine = min(ours, key=lambda f: np.abs(np.array(f["detection"]["box"]) - corners).sum())
            assert np.abs(np.array(mine["detection"]["box"]) - corners).max() <= 1
            assert [s["subject"] for s in face["subjects"]] == [
                c["name"] for c in mine["candidates"]
            ]
            for s, c in zip(face["subjects"], mine["candidates"], strict=True):
                assert s["similarity"] == pytest.approx(scale.similarity(c["score"]), abs=2e-5)
        if probe.parent.name in PEOPLE:  # and the right person, above Double Take's 60%
            best = max(theirs, key=lambda f: f["box"]["x_max"] - f["box"]["x_min"])
            assert best["subjects"][0]["subject"] == probe.parent.name
            assert best["subjects"][0]["similarity"] >= 0.6


def test_errors_take_compreface_body_on_its_routes_only(cf: TestClient) -> None:
    r = cf.post("/api/v1/detection/detect", files=jpeg(lfw("Colin_Powell", 1)), headers={
        "x-api-key": ""
    })  # fmt: skip
    assert (r.status_code, r.json()["code"]) == (401, 20)  # MISSING_REQUEST_HEADER
    assert set(r.json()) == {"message", "code"}
    r = cf.post("/api/v1/detection/detect", files=jpeg(lfw("Colin_Powell", 1)), headers={
        "x-api-key": "not-a-key"
    })  # fmt: skip
    assert (r.status_code, r.json()["code"]) == (401, 10)
    r = cf.post("/api/v1/detection/detect", files={"file": ("a.png", b"not an image", "image/png")})
    assert (r.status_code, r.json()["code"]) == (400, 21)
    r = cf.post("/api/v1/detection/detect", json={"file": "@@ not base64 @@"})
    assert (r.status_code, r.json()["code"]) == (400, 21)
    assert "not Base64" in r.json()["message"]
    r = cf.post("/api/v1/detection/detect", content=b"raw", headers={"content-type": "image/jpeg"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["message"]
    r = cf.post("/api/v1/detection/detect", params={"limit": -1}, files=jpeg(GROUP))
    assert (r.status_code, r.json()["code"]) == (400, 26)
    # our own routes keep our body
    r = cf.get("/v1/subjects/nobody")
    assert r.json()["error"]["code"] == "subject_not_found"


def test_face_plugins_that_exist_and_the_ones_refused(cf: TestClient) -> None:
    r = cf.post(
        "/api/v1/detection/detect",
        params={"face_plugins": "landmarks,calculator,pose", "status": "true", "limit": 2},
        files=jpeg(GROUP),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["result"]) == 2  # the 2 biggest of the 6 faces
    areas = [(f["box"]["x_max"] - f["box"]["x_min"]) * (f["box"]["y_max"] - f["box"]["y_min"])
             for f in body["result"]]  # fmt: skip
    assert areas == sorted(areas, reverse=True)
    face = body["result"][0]
    assert len(face["landmarks"]) == 5 and len(face["embedding"]) == 128
    assert set(face["pose"]) == {"pitch", "roll", "yaw"}
    assert {"detector", "calculator", "landmarks", "pose"} <= set(body["plugins_versions"])
    assert "execution_time" in face
    plain = cf.post("/api/v1/detection/detect", files=jpeg(GROUP)).json()
    assert len(plain["result"]) == 6
    assert set(plain["result"][0]) == {"box"} and "plugins_versions" not in plain
    for plugin in ("age", "gender", "mask", "age,gender"):
        r = cf.post("/api/v1/detection/detect", params={"face_plugins": plugin}, files=jpeg(GROUP))
        assert (r.status_code, r.json()["code"]) == (400, 36)
        assert (
            "not available" in r.json()["message"] and plugin.split(",")[0] in r.json()["message"]
        )


def test_embeddings_and_verification_routes(cf: TestClient) -> None:
    powell = add(cf, "Colin Powell", lfw("Colin_Powell", 2))
    add(cf, "George W Bush", lfw("George_W_Bush", 2))
    probe = cf.post(
        f"{RECOGNITION}/recognize", params={"face_plugins": "calculator"},
        files=jpeg(lfw("Colin_Powell", 3)),
    ).json()["result"][0]  # fmt: skip
    embedding = probe["embedding"]
    r = cf.post(
        f"{RECOGNITION}/embeddings/recognize",
        params={"prediction_count": 2},
        json={"embeddings": [embedding]},
    )
    similarities = r.json()["result"][0]["similarities"]
    assert similarities[0] == probe["subjects"][0]
    assert similarities[0]["subject"] == "Colin Powell" and len(similarities) == 2
    r = cf.post(f"{RECOGNITION}/embeddings/faces/{powell}/verify", json={"embeddings": [embedding]})
    assert r.json()["result"][0]["similarity"] == probe["subjects"][0]["similarity"]
    r = cf.post(f"{RECOGNITION}/faces/{powell}/verify", files=jpeg(lfw("Colin_Powell", 3)))
    assert r.json()["result"][0]["similarity"] == probe["subjects"][0]["similarity"]
    r = cf.post(
        "/api/v1/verification/embeddings/verify",
        json={"source": embedding, "targets": [embedding, [-v for v in embedding]]},
    )
    assert [x["similarity"] for x in r.json()["result"]] == [1.0, 0.0]
    r = cf.post(
        "/api/v1/verification/embeddings/verify", json={"source": [1.0], "targets": [[1.0]]}
    )
    assert (r.status_code, r.json()["code"]) == (400, 36)
    r = cf.post(
        "/api/v1/verification/verify",
        json={"source_image": b64(lfw("Colin_Powell", 2)), "target_image": b64(GROUP)},
    )
    matches = r.json()["result"][0]["face_matches"]
    assert len(matches) == 6 and all(m["similarity"] < 0.4 for m in matches)  # strangers
    r = cf.post(
        "/api/v1/verification/verify",
        files={"source_image": jpeg(GROUP)["file"], "target_image": jpeg(GROUP)["file"]},
    )
    assert (r.status_code, r.json()["code"]) == (400, 31)  # the source must hold one face


def test_similarity_scale_puts_double_takes_defaults_at_sensible_fars(
    pipeline: FacePipeline,
) -> None:
    """Double Take: a match at 60%, unknown below 40%; CompreFace's strict 0.85. On the running
    recognizer's calibration these are FAR 1e-3, 1e-2 and 1e-5 per comparison."""
    manifest = pipeline.embedder.manifest
    assert manifest.calibration is not None
    by_far = manifest.calibration.thresholds_by_far
    scale = SimilarityScale.for_manifest(manifest)
    assert scale.cosine(0.40) == pytest.approx(by_far["1e-02"])
    assert scale.cosine(0.60) == pytest.approx(by_far["1e-03"])
    assert scale.cosine(0.85) == pytest.approx(by_far["1e-05"])
    grid = np.linspace(-1, 1, 401)
    mapped = [scale.similarity(c) for c in grid]
    assert mapped == sorted(mapped) and mapped[0] == 0.0 and mapped[-1] == 1.0


def test_double_take_defaults_on_real_lfw_pairs(pipeline: FacePipeline) -> None:
    """The first 40 genuine and 40 impostor pairs of LFW's pairs.txt, through the pipeline: every
    stranger below 40% (unknown), nearly every genuine pair above 60% (a match)."""
    from service.vision.image import decode_image

    lines = (DATA / "lfw" / "pairs.txt").read_text().splitlines()[1:]
    genuine = [ln.split() for ln in lines[:40]]
    impostor = [ln.split() for ln in lines[300:340]]
    scale = SimilarityScale.for_manifest(pipeline.embedder.manifest)

    def embedding(name: str, number: str) -> np.ndarray:
        image = decode_image(read(lfw(name, int(number))))
        return pipeline.choose_face(image, policy="largest").face.embedding

    same = [scale.similarity(float(embedding(n, a) @ embedding(n, b))) for n, a, b in genuine]
    other = [
        scale.similarity(float(embedding(n1, a) @ embedding(n2, b))) for n1, a, n2, b in impostor
    ]
    assert max(other) < 0.40, sorted(other)[-3:]
    assert np.mean(np.array(same) >= 0.60) >= 0.9, sorted(same)[:5]


def test_a_compreface_key_becomes_a_marginface_key(tmp_path: Path, pipeline: FacePipeline) -> None:
    """`marginface keys create --key-stdin` keeps the key an integration already holds."""
    import subprocess
    import sys

    keys_file = tmp_path / "keys.json"
    old_key = "00000000-0000-0000-0000-000000000002"  # CompreFace's demo recognition key
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "--id", "double-take",
         "--scopes", "read,write", "--key-stdin", "--file", str(keys_file)],
        input=old_key + "\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert old_key not in keys_file.read_text()  # stored as its sha256 only
    settings = make_settings(tmp_path, auth={"keys_file": str(keys_file)})
    with TestClient(create_app(settings, pipeline=pipeline)) as c:
        r = c.get(f"{RECOGNITION}/subjects", headers={"x-api-key": old_key})
        assert r.json() == {"subjects": []}
        r = c.get(f"{RECOGNITION}/subjects", headers={"x-api-key": old_key[:-1] + "3"})
        assert r.status_code == 401
    again = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "--id", "other",
         "--key-stdin", "--file", str(keys_file)],
        input="short\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 2 and "at least 16" in again.stderr


def test_the_documented_trailing_slash_lists_subjects(cf: TestClient) -> None:
    """CompreFace's own curl example lists subjects at `/subjects/`."""
    r = cf.get(f"{RECOGNITION}/subjects/", follow_redirects=False)
    assert (r.status_code, r.json()) == (200, {"subjects": []})
    assert cf.get(f"{RECOGNITION}/subjects/", headers={"x-api-key": ""}).status_code == 401
