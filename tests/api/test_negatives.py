""""Not this person", remembered: a real server over real HTTP, real LFW photos.

Jan Bjoerklund is enrolled nowhere; at FAR 1e-2 his photo is taken for Colin Prescot (cosine
about 0.46) and, after him, for Colin Powell (about 0.39). Each "not this person" makes the
same photo fall to the next subject, then to unknown, while each man's own photos still match
him; deleting a negative brings the answer back, erasing the subject erases its negatives."""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from service.gallery.postgres import upgrade
from service.identification import is_vetoed, veto
from service.vision.pipeline import FacePipeline
from tests.backends import Distributed, free_port
from tests.conftest import API_KEY, lfw
from tests.test_server import server

JAN = lfw("Jan_Bjoerklund", 1)
HEADERS = {"X-API-Key": API_KEY}


@dataclass
class Served:
    """A real server (`marginface serve`) on one gallery backend, and a read of its store."""

    url: str
    sql: Callable[[str], list[Any]]  # rows of one SELECT on the server's store


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One real server for this module's tests, on either backend (the distributed one on the
    session's PostgreSQL and milvus-lite servers)."""
    root = tmp_path_factory.mktemp("negatives")
    port = free_port()
    env: dict[str, str] = {}
    if request.param == "distributed":
        dsn = request.getfixturevalue("postgres").new_database()
        upgrade(dsn)
        env = Distributed(dsn, request.getfixturevalue("milvus_uri"),
                          "neg" + uuid.uuid4().hex[:8]).env()  # fmt: skip

        def sql(query: str) -> list[Any]:
            with psycopg.connect(dsn) as conn:
                return list(conn.execute(query).fetchall())
    else:

        def sql(query: str) -> list[Any]:
            store = root / "gallery" / "gallery.sqlite3"
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
                return list(conn.execute(query).fetchall())

    with server(root / "gallery", port, env):
        yield Served(f"http://127.0.0.1:{port}", sql)


def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url, headers=HEADERS, timeout=120, **kwargs)


def photo(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


def enroll(base_url: str, sid: str, name: str, path: Path) -> None:
    r = call("POST", f"{base_url}/v1/subjects", json={"id": sid, "name": name})
    assert r.status_code == 201, r.text
    r = call("POST", f"{base_url}/v1/subjects/{sid}/faces",
             files=[("files", (path.name, path.read_bytes(), "image/jpeg"))])  # fmt: skip
    assert r.status_code == 201, r.text


def identify(base_url: str, path: Path) -> dict[str, Any]:
    r = call("POST", f"{base_url}/v1/identify", files=photo(path),
             data={"far": "0.01", "top_k": "3"})  # fmt: skip
    assert r.status_code == 200, r.text
    (face,) = r.json()["faces"]
    return dict(face)


def answer(face: dict[str, Any]) -> str | None:
    return face["match"]["subject_id"] if face["match"] else None


def test_not_this_person_vetoes_the_subject_for_that_face_and_no_other(served: Served) -> None:
    base_url = served.url
    enroll(base_url, "prescot", "Colin Prescot", lfw("Colin_Prescot", 1))
    enroll(base_url, "powell", "Colin Powell", lfw("Colin_Powell", 1))
    before = identify(base_url, JAN)
    assert answer(before) == "prescot" and before["vetoed"] == []
    assert [c["subject_id"] for c in before["candidates"]][:2] == ["prescot", "powell"]
    box = ",".join(str(v) for v in before["detection"]["box"])

    # not Prescot: the identify photo sent again (multipart), its face chosen by its box
    r = call("POST", f"{base_url}/v1/subjects/prescot/negatives", files=photo(JAN),
             data={"box": box})  # fmt: skip
    assert r.status_code == 201, r.text
    not_prescot = r.json()
    assert not_prescot["source"] == "probe" and not_prescot["created"] is True
    assert not_prescot["detection"]["box"] == before["detection"]["box"]
    after = identify(base_url, JAN)
    assert answer(after) == "powell"  # falls to the next subject
    assert "prescot" not in [c["subject_id"] for c in after["candidates"]]
    (vetoed,) = after["vetoed"]
    assert vetoed["subject_id"] == "prescot" and vetoed["negative"] >= vetoed["score"]
    assert vetoed["negative"] > 0.99  # the same photo: the negative is its own embedding

    # not Powell either: base64 JSON, the main face of the photo; now nobody is named
    encoded = base64.b64encode(JAN.read_bytes()).decode()
    r = call("POST", f"{base_url}/v1/subjects/powell/negatives", json={"image": encoded})
    assert r.status_code == 201, r.text
    gone = identify(base_url, JAN)
    assert gone["decision"] == "unknown" and gone["candidates"] == []
    assert {v["subject_id"] for v in gone["vetoed"]} == {"prescot", "powell"}

    # each man's own photos still match him (Powell's other photo; Prescot's enrolled one)
    assert answer(identify(base_url, lfw("Colin_Powell", 2))) == "powell"
    assert answer(identify(base_url, lfw("Colin_Prescot", 1))) == "prescot"

    # CompreFace's recognize goes through the same rule
    r = httpx.post(f"{base_url}/api/v1/recognition/recognize",
                   headers={"x-api-key": API_KEY}, params={"prediction_count": 3},
                   files={"file": (JAN.name, JAN.read_bytes(), "image/jpeg")},
                   timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    names = [s["subject"] for s in r.json()["result"][0]["subjects"]]
    assert "Colin Prescot" not in names and "Colin Powell" not in names
    embedding = call("POST", f"{base_url}/v1/embed", files=photo(JAN)).json()["faces"][0]
    r = httpx.post(f"{base_url}/api/v1/recognition/embeddings/recognize",
                   headers={"x-api-key": API_KEY}, params={"prediction_count": 3},
                   json={"embeddings": [embedding["embedding"]]}, timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    names = [s["subject"] for s in r.json()["result"][0]["similarities"]]
    assert "Colin Prescot" not in names and "Colin Powell" not in names

    # listed (never with embeddings), deleted: Prescot is Jan's answer again
    listed = call("GET", f"{base_url}/v1/subjects/prescot/negatives").json()
    assert [n["id"] for n in listed["negatives"]] == [not_prescot["id"]]
    assert listed["limit"] == 100 and "embedding" not in listed["negatives"][0]
    r = call("DELETE", f"{base_url}/v1/subjects/prescot/negatives/{not_prescot['id']}")
    assert r.status_code == 200 and r.json()["negatives_deleted"] == 1
    assert answer(identify(base_url, JAN)) == "prescot"
    r = call("DELETE", f"{base_url}/v1/subjects/prescot/negatives/{not_prescot['id']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "negative_not_found"


def test_a_gallery_face_marked_not_this_person_and_erasure(served: Served) -> None:
    """A gallery face (Jan, enrolled as his own subject) marked as not Prescot: photos like it
    are no longer Prescot; the copy goes when Jan's subject is erased, and Prescot's negatives
    when Prescot is."""
    base_url = served.url
    enroll(base_url, "jan", "Jan Bjoerklund", JAN)
    enroll(base_url, "prescot2", "Colin Prescot", lfw("Colin_Prescot", 1))
    jan_face = call("GET", f"{base_url}/v1/subjects/jan/faces").json()[0]["id"]
    r = call("POST", f"{base_url}/v1/subjects/prescot2/negatives", data={"face_id": jan_face})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "face" and r.json()["face_id"] == jan_face
    face = identify(base_url, JAN)
    assert answer(face) == "jan" and "prescot2" in [v["subject_id"] for v in face["vetoed"]]
    again = call("POST", f"{base_url}/v1/subjects/prescot2/negatives", json={"face_id": jan_face})
    assert again.status_code == 200 and again.json()["created"] is False
    # refused clearly: neither or both, a face of the subject itself, a box without a photo
    for body in ({}, {"face_id": jan_face, "image": base64.b64encode(JAN.read_bytes()).decode()}):
        r = call("POST", f"{base_url}/v1/subjects/prescot2/negatives", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    own = call("GET", f"{base_url}/v1/subjects/prescot2/faces").json()[0]["id"]
    r = call("POST", f"{base_url}/v1/subjects/prescot2/negatives", data={"face_id": own})
    assert r.status_code == 422 and "delete it" in r.json()["error"]["message"]
    r = call("POST", f"{base_url}/v1/subjects/nobody/negatives", data={"face_id": jan_face})
    assert r.status_code == 404 and r.json()["error"]["code"] == "subject_not_found"
    r = call("POST", f"{base_url}/v1/subjects/prescot2/negatives", files=photo(JAN),
             data={"box": "1,2,3"})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = call("POST", f"{base_url}/v1/subjects/prescot2/negatives", files=photo(JAN),
             data={"box": "0,0,20,20"})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_face"
    assert len(call("GET", f"{base_url}/v1/subjects/prescot2/negatives").json()["negatives"]) == 1

    r = call("POST", f"{base_url}/v1/subjects/prescot2/negatives", files=photo(JAN))
    assert r.status_code == 201
    # erasure: Jan's subject takes the copy of his face with it; Prescot takes the rest
    assert call("DELETE", f"{base_url}/v1/subjects/jan").status_code == 200
    left = call("GET", f"{base_url}/v1/subjects/prescot2/negatives").json()["negatives"]
    assert [n["source"] for n in left] == ["probe"]
    assert call("DELETE", f"{base_url}/v1/subjects/prescot2").status_code == 200
    r = call("GET", f"{base_url}/v1/subjects/prescot2/negatives")
    assert r.status_code == 404
    rows = served.sql("SELECT subject_id FROM negatives WHERE subject_id IN ('jan', 'prescot2')")
    assert rows == []


def test_the_rule_is_n_at_least_s() -> None:
    """The one rule, as the bench reads it: vetoed when the nearest negative is at least as
    close as the subject's best face (equal counts)."""
    assert is_vetoed(0.5, 0.5) and is_vetoed(0.4, 0.6) and not is_vetoed(0.6, 0.59)
    probe = np.array([1.0, 0.0], dtype=np.float32)

    class C:
        def __init__(self, sid: str, score: float) -> None:
            self.subject_id, self.name, self.score = sid, sid.upper(), score

    negatives = {"a": np.array([[0.6, 0.8], [0.0, 1.0]], dtype=np.float32)}
    kept, vetoed = veto(probe, [C("a", 0.6), C("b", 0.5)], negatives)
    assert [c.subject_id for c in kept] == ["b"]
    assert [(v.subject_id, v.score, round(v.negative, 6)) for v in vetoed] == [("a", 0.6, 0.6)]
    kept, vetoed = veto(probe, [C("a", 0.61)], negatives)
    assert [c.subject_id for c in kept] == ["a"] and vetoed == []


def test_the_cli_identify_says_which_subjects_were_vetoed(tmp_path: Path) -> None:
    """`marginface identify` goes through the same rule and prints the vetoed subject."""
    from service.gallery.embedded import embedded_gallery
    from tests.test_cli import make_people, run

    root, gallery = tmp_path / "people", tmp_path / "gallery"
    make_people(root, {"Colin_Prescot": [1], "Jan_Bjoerklund": [1]})
    proc = run("index", str(root), "--gallery", str(gallery), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    g = embedded_gallery(gallery, model_id="pinned-in-the-store@x", embedding_dim=128)
    jan = g.list_faces("Jan_Bjoerklund")[0].id
    g.add_negative("Colin_Prescot", model_id=g.model_id, source="face", face_id=jan)
    g.close()
    proc = run("identify", str(JAN), "--gallery", str(gallery), "--top-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    (face,) = json.loads(proc.stdout)["faces"]
    assert [c["subject_id"] for c in face["candidates"]] == ["Jan_Bjoerklund"]
    assert [v["subject_id"] for v in face["vetoed"]] == ["Colin_Prescot"]
    proc = run("identify", str(JAN), "--gallery", str(gallery), "--top-k", "3")
    assert proc.returncode == 0 and "vetoed" in proc.stdout, proc.stdout  # a row of its own


def test_vetoes_widen_the_search_until_top_k_subjects_stand(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    """Five subjects closest to the probe are all vetoed: the search widens (2, 4, 8 subjects)
    until two that stand are found, so the answer falls past all of them."""
    from service.gallery.embedded import embedded_gallery
    from service.gallery.records import NewFace
    from service.recognition import Recognition
    from tests.conftest import make_settings

    rng = np.random.default_rng(36)
    probe = rng.standard_normal(128).astype(np.float32)
    probe /= np.linalg.norm(probe)
    model = pipeline.model_id
    g = embedded_gallery(tmp_path / "g", model_id=model, embedding_dim=128)
    for i in range(8):  # s0 nearest the probe, s7 farthest
        away = rng.standard_normal(128).astype(np.float32)
        away -= (away @ probe) * probe  # orthogonal to the probe: cosine is cos(angle) exactly
        away /= np.linalg.norm(away)
        angle = 0.3 + 0.1 * i
        v = np.cos(angle) * probe + np.sin(angle) * away
        g.create_subject(f"s{i}", f"S{i}", {})
        g.add_faces(f"s{i}", [NewFace(v, (0, 0, 1, 1), 1.0, f"f{i}")], model_id=model)
        if i < 5:
            g.add_negative(f"s{i}", probe, model_id=model, source="probe")
    rec = Recognition(make_settings(tmp_path), pipeline, g)
    ((kept, vetoed),) = rec.rank(probe[None], 2)
    assert [c.subject_id for c in kept] == ["s5", "s6"]
    assert [v.subject_id for v in vetoed] == [f"s{i}" for i in range(5)]
    assert all(v.negative > 0.999 and v.negative >= v.score for v in vetoed)
    g.close()
