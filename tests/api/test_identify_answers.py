"""Identify answers per subject, and refuses to name one of two people who fit about as well
(real photos, real models, through the API)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.test_api import enroll, upload
from tests.conftest import lfw


def test_candidates_are_subjects_with_their_agreeing_faces(client: TestClient) -> None:
    client.post("/v1/subjects", json={"id": "powell", "name": "Colin Powell"})
    client.post("/v1/subjects", json={"id": "blair", "name": "Tony Blair"})
    enroll(client, "powell", *(lfw("Colin_Powell", n) for n in (1, 2, 3, 4)))
    enroll(client, "blair", lfw("Tony_Blair", 1))
    r = client.post(
        "/v1/identify", files={"image": upload(lfw("Colin_Powell", 6))}, data={"top_k": "5"}
    )
    assert r.status_code == 200, r.text
    face = r.json()["faces"][0]
    assert face["decision"] == "match" and face["match"]["subject_id"] == "powell"
    ids = [c["subject_id"] for c in face["candidates"]]
    assert ids == ["powell", "blair"]  # one row per subject, never one per face
    powell = face["candidates"][0]
    assert 1 <= powell["agreeing"] <= 4 and powell["agreeing"] == face["match"]["agreeing"]
    assert face["candidates"][1]["agreeing"] == 0  # below the threshold: no face agrees
    assert face["ambiguous"] == []


def test_two_subjects_within_the_margin_answer_ambiguous_with_both(client: TestClient) -> None:
    """The same person enrolled twice (a duplicate subject): the two fit equally well, so with
    a margin neither is named; without one (the default 0) the better is."""
    for sid in ("powell", "powell-again"):
        client.post("/v1/subjects", json={"id": sid, "name": "Colin Powell"})
    enroll(client, "powell", lfw("Colin_Powell", 1))
    enroll(client, "powell-again", lfw("Colin_Powell", 2))
    probe = {"image": upload(lfw("Colin_Powell", 6))}
    r = client.post("/v1/identify", files=probe, data={"margin": "0.5", "top_k": "1"})
    assert r.status_code == 200, r.text
    body = r.json()
    face = body["faces"][0]
    assert body["margin"] == 0.5
    assert face["decision"] == "ambiguous" and face["match"] is None
    assert {c["subject_id"] for c in face["ambiguous"]} == {"powell", "powell-again"}
    assert len(face["candidates"]) == 1  # top_k is kept; the runner-up is still weighed
    plain = client.post("/v1/identify", files={"image": upload(lfw("Colin_Powell", 6))})
    assert plain.json()["faces"][0]["decision"] == "match"
    bad = client.post(
        "/v1/identify", files={"image": upload(lfw("Colin_Powell", 6))}, data={"margin": "-1"}
    )
    assert bad.status_code == 422
