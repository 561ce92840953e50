"""Cluster jobs through the real API: photos in, people out, named into the gallery, and
nothing left on disk once the job is deleted or expires."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.vision.pipeline import FacePipeline
from tests.api.test_jobs import wait
from tests.backends import Distributed
from tests.conftest import API_KEY, DATA, make_settings
from tests.test_server import HEADERS, free_port, server

LFW = DATA / "lfw" / "images"
PEOPLE = ["Colin_Powell", "Tony_Blair", "Serena_Williams"]
PER_PERSON = 5


def pile() -> tuple[bytes, dict[str, str]]:
    """A zip of the three people's photos in one folder under meaningless names (nothing may
    be learnt from the layout), and who is on each file; each person's photo number
    PER_PERSON + 1 is held back."""
    buf, owner = io.BytesIO(), {}
    with zipfile.ZipFile(buf, "w") as zf:
        n = 0
        for k in range(PER_PERSON):
            for person in PEOPLE:
                name = f"pile/IMG_{n:04d}.jpg"
                zf.write(LFW / person / f"{person}_{k + 1:04d}.jpg", name)
                owner[name] = person
                n += 1
    return buf.getvalue(), owner


def held_back(person: str) -> bytes:
    return (LFW / person / f"{person}_{PER_PERSON + 1:04d}.jpg").read_bytes()


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


@pytest.fixture
def cluster_client(tmp_path: Path, work_dir: Path, pipeline: FacePipeline) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, jobs={"work_dir": work_dir})
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}, raise_server_exceptions=False) as c:
        yield c


def finished(client: TestClient, job_id: str) -> dict:
    return wait(client, job_id, timeout_s=180)


def submit(client: TestClient, data: bytes, **form: str) -> dict:
    r = client.post(
        "/v1/jobs/cluster", files={"archive": ("pile.zip", data, "application/zip")}, data=form
    )
    assert r.status_code == 202, r.text
    job = finished(client, r.json()["id"])
    assert job["status"] == "succeeded" and job["kind"] == "cluster", job
    return job


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name != ".owner"]


def test_three_people_cluster_into_three_subjects_that_identify_held_back_photos(
    cluster_client: TestClient,
) -> None:
    client = cluster_client
    data, owner = pile()
    job = submit(client, data)
    assert job["summary"]["photos"] == len(owner)
    view = client.get(f"/v1/jobs/{job['id']}/clusters").json()
    big = [c for c in view["clusters"] if c["size"] >= 3]
    assert len(big) == 3, [(c["size"], c["representative"]["file"]) for c in view["clusters"]]
    for cluster in big:
        people = {owner[m["file"]] for m in cluster["members"]}
        assert len(people) == 1, people  # each cluster is one person
        person = people.pop()
        assert cluster["size"] >= PER_PERSON - 1
        r = client.post(
            f"/v1/jobs/{job['id']}/clusters/{cluster['cluster']}/subject",
            json={"subject_id": person, "name": person.replace("_", " ")},
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["face_ids"]) == cluster["size"]
    assert client.get("/readyz").json()["gallery"]["subjects"] == 3
    for person in PEOPLE:
        r = client.post(
            "/v1/identify", files={"image": ("probe.jpg", held_back(person), "image/jpeg")}
        )
        assert r.status_code == 200, r.text
        best = r.json()["faces"][0]
        assert best["match"] is not None and best["match"]["subject_id"] == person, best
    named = client.get(f"/v1/jobs/{job['id']}/clusters").json()["clusters"]
    assert {c["subject_id"] for c in named if c["size"] >= 3} == set(PEOPLE)


def test_merge_and_remove_a_face_before_naming(cluster_client: TestClient) -> None:
    client = cluster_client
    data, _ = pile()
    job = submit(client, data)
    base = f"/v1/jobs/{job['id']}/clusters"
    first, second = client.get(base).json()["clusters"][:2]
    merged = client.post(
        f"{base}/merge", json={"into": first["cluster"], "other": second["cluster"]}
    )
    assert merged.status_code == 200 and merged.json()["size"] == first["size"] + second["size"]
    gone = client.post(f"{base}/merge", json={"into": first["cluster"], "other": second["cluster"]})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "cluster_not_found"
    wrong = second["members"][0]["face"]
    left = client.delete(f"{base}/{first['cluster']}/faces/{wrong}")
    assert left.status_code == 200 and left.json()["size"] == merged.json()["size"] - 1
    assert wrong in {f["face"] for f in client.get(base).json()["alone"]}
    named = client.post(f"{base}/{first['cluster']}/subject", json={"subject_id": "mixed"})
    assert named.status_code == 200 and len(named.json()["face_ids"]) == left.json()["size"]
    faces = client.get("/v1/subjects/mixed/faces").json()
    assert len(faces) == left.json()["size"]


def test_bad_cluster_requests_are_4xx_with_stable_codes(cluster_client: TestClient) -> None:
    client = cluster_client
    photo = (LFW / "Colin_Powell/Colin_Powell_0001.jpg").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.jpg", photo)
    too_strict = client.post(
        "/v1/jobs/cluster",
        files={"archive": ("a.zip", buf.getvalue(), "application/zip")},
        data={"far": "1e-12"},
    )
    assert too_strict.status_code == 422, too_strict.text
    neither = client.post("/v1/jobs/cluster")
    assert neither.status_code == 422
    assert client.get("/v1/jobs/nope/clusters").json()["error"]["code"] == "job_not_found"
    job = submit(client, buf.getvalue())
    base = f"/v1/jobs/{job['id']}/clusters"
    assert client.post(f"{base}/99/subject", json={"subject_id": "x"}).status_code == 404
    bad_id = client.post(f"{base}/0/subject", json={"subject_id": "../etc"})
    assert bad_id.status_code == 422
    assert client.get(f"/v1/jobs/{job['id']}/faces/999.jpg").status_code == 404
    index = client.post(
        "/v1/jobs/index", files={"archive": ("a.zip", buf.getvalue(), "application/zip")}
    ).json()
    finished(client, index["id"])
    not_cluster = client.get(f"/v1/jobs/{index['id']}/clusters")
    assert not_cluster.status_code == 409
    assert not_cluster.json()["error"]["code"] == "job_not_finished"


def test_deleting_a_cluster_job_leaves_no_photo_crop_or_embedding(
    cluster_client: TestClient, work_dir: Path
) -> None:
    client = cluster_client
    data, _ = pile()
    job = submit(client, data)
    kept = [p for p in files_under(work_dir) if p.name != "report.json"]  # names, counts
    assert kept and all(p.parent.name == "faces" and p.suffix == ".jpg" for p in kept), kept
    assert not any(p.name.startswith("IMG_") for p in kept)  # the photos went once read
    thumb = client.get(f"/v1/jobs/{job['id']}/faces/0.jpg")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert files_under(work_dir) == []
    assert client.get(f"/v1/jobs/{job['id']}/clusters").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/faces/0.jpg").status_code == 404
    assert client.get("/readyz").json()["gallery"]["faces"] == 0


def test_a_cluster_job_expires_with_its_thumbnails(tmp_path: Path, pipeline: FacePipeline) -> None:
    work_dir = tmp_path / "jobs"
    settings = make_settings(tmp_path, jobs={"work_dir": work_dir, "cluster_ttl_s": 1.0})
    with TestClient(
        create_app(settings, pipeline=pipeline), headers={"X-API-Key": API_KEY}
    ) as client:
        data, _ = pile()
        job = submit(client, data)
        assert files_under(work_dir)
        time.sleep(1.5)
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert files_under(work_dir) == []


def test_stopping_the_service_erases_its_cluster_jobs(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    work_dir = tmp_path / "jobs"
    settings = make_settings(tmp_path, jobs={"work_dir": work_dir})
    with TestClient(
        create_app(settings, pipeline=pipeline), headers={"X-API-Key": API_KEY}
    ) as client:
        data, _ = pile()
        submit(client, data)
        assert files_under(work_dir)
    assert files_under(work_dir) == []  # a restart forgets jobs: their thumbnails go at stop


def guard_pile() -> bytes:
    """Vladimir_Putin_0007 (Putin before three guardsmen of an honour guard: four faces) with
    two more photos of Putin and two of Colin Powell."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for person, n in [("Vladimir_Putin", 7), ("Vladimir_Putin", 1), ("Vladimir_Putin", 2)]:
            zf.write(LFW / person / f"{person}_{n:04d}.jpg", f"p/{person}_{n}.jpg")
        for n in (1, 2):
            zf.write(LFW / "Colin_Powell" / f"Colin_Powell_{n:04d}.jpg", f"p/Colin_Powell_{n}.jpg")
    return buf.getvalue()


def test_a_cluster_job_never_puts_two_faces_of_one_photo_in_one_cluster(
    cluster_client: TestClient,
) -> None:
    """Was: the three guardsmen of Vladimir_Putin_0007 came back as one cluster."""
    client = cluster_client
    job = submit(client, guard_pile())
    assert job["summary"]["faces"] >= 7  # the group photo gives four faces
    view = client.get(f"/v1/jobs/{job['id']}/clusters").json()
    for c in view["clusters"]:
        files = [m["file"] for m in c["members"]]
        assert len(files) == len(set(files)), files
    putin = [
        c for c in view["clusters"] if "p/Vladimir_Putin_1.jpg" in {m["file"] for m in c["members"]}
    ]
    assert len(putin) == 1 and putin[0]["size"] == 3  # Putin of the group photo joins him


def test_naming_a_cluster_again_moves_its_faces_and_the_name_follows_the_subject(
    cluster_client: TestClient,
) -> None:
    """Was: a second name copied the faces into a second subject (identify answered with
    either), and the cluster still showed a subject after it was deleted."""
    client = cluster_client
    data, owner = pile()
    job = submit(client, data)
    base = f"/v1/jobs/{job['id']}/clusters"
    cluster = client.get(base).json()["clusters"][0]
    person = owner[cluster["members"][0]["file"]]
    url = f"{base}/{cluster['cluster']}/subject"
    first = client.post(url, json={"subject_id": "person0"})
    assert first.status_code == 200 and len(first.json()["face_ids"]) == cluster["size"]
    again = client.post(url, json={"subject_id": "person0"})  # the same name: nothing new
    assert again.status_code == 200 and again.json()["face_ids"] == []
    second = client.post(url, json={"subject_id": "person0b"})
    assert second.status_code == 200, second.text
    assert len(second.json()["face_ids"]) == cluster["size"]
    assert client.get("/v1/subjects/person0").status_code == 404  # made by the naming, emptied
    assert len(client.get("/v1/subjects/person0b/faces").json()) == cluster["size"]
    assert client.get("/readyz").json()["gallery"]["faces"] == cluster["size"]
    probe = {"image": ("probe.jpg", held_back(person), "image/jpeg")}
    r = client.post("/v1/identify", files=probe, data={"top_k": "5"})
    assert r.json()["faces"][0]["match"]["subject_id"] == "person0b"
    assert {c["subject_id"] for c in r.json()["faces"][0]["candidates"]} == {"person0b"}
    assert client.get(base).json()["clusters"][0]["subject_id"] == "person0b"
    assert client.delete("/v1/subjects/person0b").status_code == 200
    assert client.get(base).json()["clusters"][0]["subject_id"] is None
    assert client.get(f"{base}/{cluster['cluster']}").json()["subject_id"] is None


def test_renaming_into_an_existing_subject_leaves_that_subjects_own_faces(
    cluster_client: TestClient,
) -> None:
    client = cluster_client
    data, owner = pile()
    job = submit(client, data)
    base = f"/v1/jobs/{job['id']}/clusters"
    cluster = client.get(base).json()["clusters"][0]
    person = owner[cluster["members"][0]["file"]]
    assert client.post("/v1/subjects", json={"id": "known", "name": "Known"}).status_code == 201
    r = client.post(
        "/v1/subjects/known/faces", files=[("files", ("k.jpg", held_back(person), "image/jpeg"))]
    )
    assert r.status_code == 201, r.text
    url = f"{base}/{cluster['cluster']}/subject"
    assert client.post(url, json={"subject_id": "known"}).status_code == 200
    assert client.post(url, json={"subject_id": "elsewhere"}).status_code == 200
    assert len(client.get("/v1/subjects/known/faces").json()) == 1  # its own face stays
    assert len(client.get("/v1/subjects/elsewhere/faces").json()) == cluster["size"]


def test_faces_alone_are_listed_and_can_be_named_and_representatives_have_a_similarity(
    cluster_client: TestClient,
) -> None:
    """Was: representative.similarity was null where the same face under members had one,
    and a face alone could not be named."""
    client = cluster_client
    job = submit(client, guard_pile())
    view = client.get(f"/v1/jobs/{job['id']}/clusters").json()
    for c in view["clusters"]:
        same = [m for m in c["members"] if m["face"] == c["representative"]["face"]]
        assert c["representative"]["similarity"] == same[0]["similarity"] is not None
    alone = view["alone"]
    assert len(alone) >= 3  # the guardsmen
    face = alone[0]["face"]
    r = client.post(f"/v1/jobs/{job['id']}/faces/{face}/subject", json={"subject_id": "guard"})
    assert r.status_code == 200, r.text
    assert len(r.json()["face_ids"]) == 1
    after = client.get(f"/v1/jobs/{job['id']}/clusters").json()
    assert face not in {f["face"] for f in after["alone"]}
    named = [c for c in after["clusters"] if c["subject_id"] == "guard"]
    assert len(named) == 1 and [m["face"] for m in named[0]["members"]] == [face]
    assert len(client.get("/v1/subjects/guard/faces").json()) == 1
    missing = client.post(f"/v1/jobs/{job['id']}/faces/{face}/subject", json={"subject_id": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "cluster_not_found"


@pytest.mark.slow
def test_cluster_review_works_through_either_replica(
    tmp_path: Path, distributed: Distributed
) -> None:
    """Two real API processes on one PostgreSQL job board (and one shared work_dir, as the
    replicas of a deployment share it): a cluster job run by one replica is reviewed, named
    and deleted through the other. Was: 404 job_not_found on the replica that did not run it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    data, owner = pile()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(photos)
    env = {
        **distributed.env(),
        "MARGINFACE_INTRA_OP_THREADS": "1",
        "MARGINFACE_JOBS__ALLOWED_ROOTS": json.dumps([str(photos)]),
        "MARGINFACE_JOBS__WORK_DIR": str(tmp_path / "jobs"),
    }
    ports = [free_port(), free_port()]
    with (
        server(tmp_path / "gallery-a", ports[0], env),
        server(tmp_path / "gallery-b", ports[1], env),
    ):
        a, b = (
            httpx.Client(base_url=f"http://127.0.0.1:{p}", headers=HEADERS, timeout=60)
            for p in ports
        )
        r = a.post("/v1/jobs/cluster", data={"path": str(photos)})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 180
        while (job := b.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "succeeded", job
        base = f"/v1/jobs/{job_id}/clusters"
        seen = b.get(base)
        assert seen.status_code == 200, seen.text
        assert seen.json() == a.get(base).json()
        clusters = seen.json()["clusters"]
        big = [c for c in clusters if c["size"] >= 3]
        assert len(big) == 3
        thumb = b.get(f"/v1/jobs/{job_id}/faces/{big[0]['members'][0]['face']}.jpg")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        # a merge through one replica is what the other shows
        merged = b.post(
            f"{base}/merge", json={"into": big[1]["cluster"], "other": big[2]["cluster"]}
        )
        assert merged.status_code == 200, merged.text
        assert a.get(f"{base}/{big[2]['cluster']}").status_code == 404
        assert a.get(f"{base}/{big[1]['cluster']}").json()["size"] == merged.json()["size"]
        # named through one, renamed through the other: a move, seen by both
        person = owner[big[0]["members"][0]["file"]]
        url = f"{base}/{big[0]['cluster']}/subject"
        assert b.post(url, json={"subject_id": "first"}).status_code == 200
        assert a.get(f"{base}/{big[0]['cluster']}").json()["subject_id"] == "first"
        moved = a.post(url, json={"subject_id": "second"})
        assert moved.status_code == 200 and len(moved.json()["face_ids"]) == big[0]["size"]
        assert b.get("/v1/subjects/first").status_code == 404
        assert b.get(f"{base}/{big[0]['cluster']}").json()["subject_id"] == "second"
        probe = {"image": ("p.jpg", held_back(person), "image/jpeg")}
        assert b.post("/v1/identify", files=probe).json()["faces"][0]["match"]["subject_id"] == (
            "second"
        )
        # a suggestion read through either replica; refused through one, gone on the other
        mixed = big[1]["cluster"]
        other = owner[a.get(f"{base}/{mixed}").json()["representative"]["file"]]
        assert b.post("/v1/subjects", json={"id": "known", "name": "Known"}).status_code == 201
        again = {"files": ("k.jpg", (LFW / other / f"{other}_0007.jpg").read_bytes(), "image/jpeg")}
        assert b.post("/v1/subjects/known/faces", files=again).status_code == 201
        seen_a, seen_b = (c.get(f"{base}/{mixed}").json() for c in (a, b))
        assert seen_a["looks_like"]["subject_id"] == "known", seen_a
        assert seen_a == seen_b
        member = next(m["face"] for m in seen_a["members"] if owner[m["file"]] == other)
        r = a.post(f"{base}/{mixed}/faces/{member}/not-subject", json={"subject_id": "known"})
        assert r.status_code == 200, r.text
        assert b.get(f"{base}/{mixed}").json()["looks_like"] is None
        # deleted through the replica that did not run it: gone on both, thumbnails too
        assert b.delete(f"/v1/jobs/{job_id}").status_code == 204
        for c in (a, b):
            gone = c.get(base)
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found"
        assert not [p for p in (tmp_path / "jobs").rglob("*.jpg")]
        a.close()
        b.close()


def test_a_member_marked_not_this_person_leaves_the_subject_and_is_never_named_so_again(
    cluster_client: TestClient,
) -> None:
    """Two people's clusters merged by mistake and named as one: saying "not this person" of
    the wrong members erases them from the subject, keeps them as its negatives (the held-back
    photo of the wrong man is vetoed, not named), and no later naming puts them back."""
    client = cluster_client
    data, owner = pile()
    job = submit(client, data)
    base = f"/v1/jobs/{job['id']}/clusters"
    first, second = client.get(base).json()["clusters"][:2]
    right = owner[first["members"][0]["file"]]
    wrong = owner[second["members"][0]["file"]]
    unnamed = client.post(f"{base}/{first['cluster']}/faces/{first['members'][0]['face']}"
                          "/not-subject", json={})  # fmt: skip
    assert unnamed.status_code == 422 and unnamed.json()["error"]["code"] == "invalid_request"
    client.post(f"{base}/merge", json={"into": first["cluster"], "other": second["cluster"]})
    r = client.post(f"{base}/{first['cluster']}/subject", json={"subject_id": "one"})
    assert r.status_code == 200 and len(r.json()["face_ids"]) == first["size"] + second["size"]
    probe = {"image": ("probe.jpg", held_back(wrong), "image/jpeg")}
    named = client.post("/v1/identify", files=probe).json()["faces"][0]["match"]
    assert named["subject_id"] == "one"  # the wrong man is named as the subject, so far

    for member in second["members"]:
        r = client.post(f"{base}/{first['cluster']}/faces/{member['face']}/not-subject", json={})
        assert r.status_code == 200, r.text
        assert r.json()["subject_id"] == "one" and r.json()["erased_face_id"] is not None
    left = client.get(f"{base}/{first['cluster']}").json()
    assert {owner[m["file"]] for m in left["members"]} == {right}
    faces = client.get("/v1/subjects/one/faces").json()
    assert len(faces) == first["size"]
    negatives = client.get("/v1/subjects/one/negatives").json()["negatives"]
    assert len(negatives) == second["size"] and {n["source"] for n in negatives} == {"face"}
    face = client.post("/v1/identify", files=probe).json()["faces"][0]
    assert face["match"] is None or face["match"]["subject_id"] != "one"
    assert "one" in [v["subject_id"] for v in face["vetoed"]]
    own = {"image": ("probe.jpg", held_back(right), "image/jpeg")}
    assert client.post("/v1/identify", files=own).json()["faces"][0]["match"]["subject_id"] == "one"
    # cannot-link: naming a marked face as that subject again is refused
    marked = second["members"][0]["face"]
    assert marked in {f["face"] for f in client.get(base).json()["alone"]}
    again = client.post(f"/v1/jobs/{job['id']}/faces/{marked}/subject", json={"subject_id": "one"})
    assert again.status_code == 422 and again.json()["error"]["code"] == "invalid_request"
    assert len(client.get("/v1/subjects/one/faces").json()) == first["size"]


def test_a_cluster_of_an_enrolled_person_looks_like_them_until_a_member_is_said_not_to_be(
    cluster_client: TestClient,
) -> None:
    """A person enrolled from one photo: the cluster of their other photos is suggested as
    that subject (with the calibrated FAR of the suggestion), the strangers' clusters are
    not; once one member is said not to be the subject, the cluster is no longer suggested
    as it, and a named cluster suggests nothing."""
    client = cluster_client
    person = PEOPLE[0]
    r = client.post("/v1/subjects", json={"id": "known", "name": "Known Person"})
    assert r.status_code == 201, r.text
    r = client.post("/v1/subjects/known/faces",
                    files=[("files", ("known.jpg", held_back(person), "image/jpeg"))])  # fmt: skip
    assert r.status_code == 201, r.text
    data, owner = pile()
    job = submit(client, data)
    base = f"/v1/jobs/{job['id']}/clusters"
    clusters = client.get(base).json()["clusters"]
    theirs = [c for c in clusters if {owner[m["file"]] for m in c["members"]} == {person}]
    strangers = [c for c in clusters if person not in {owner[m["file"]] for m in c["members"]}]
    assert theirs and strangers, clusters
    mine = max(theirs, key=lambda c: c["size"])
    suggestion = mine["looks_like"]
    assert suggestion is not None, mine
    assert suggestion["subject_id"] == "known" and suggestion["name"] == "Known Person"
    assert 1 <= suggestion["agreeing"] <= suggestion["checked"] <= min(5, mine["size"])
    assert suggestion["far"] is not None and suggestion["far"] <= 1e-4  # identify's default
    assert suggestion["similarity"] >= suggestion["threshold"]["value"]
    assert "identify" in suggestion["threshold"]["source"]
    assert all(c["looks_like"] is None for c in strangers), strangers
    one = client.get(f"{base}/{mine['cluster']}").json()
    assert one["looks_like"] is not None and one["looks_like"]["subject_id"] == "known"

    member = mine["members"][-1]["face"]
    r = client.post(f"{base}/{mine['cluster']}/faces/{member}/not-subject",
                    json={"subject_id": "known"})  # fmt: skip
    assert r.status_code == 200, r.text
    after = client.get(f"{base}/{mine['cluster']}").json()
    assert after["size"] == mine["size"] - 1
    assert after["looks_like"] is None or after["looks_like"]["subject_id"] != "known", after
    listed = {c["cluster"]: c for c in client.get(base).json()["clusters"]}
    assert listed[mine["cluster"]]["looks_like"] is None

    stranger = strangers[0]
    r = client.post(f"{base}/{stranger['cluster']}/subject", json={"subject_id": "stranger"})
    assert r.status_code == 200, r.text
    named = client.get(f"{base}/{stranger['cluster']}").json()
    assert named["subject_id"] == "stranger" and named["looks_like"] is None
    schemas = client.app.openapi()["components"]["schemas"]  # type: ignore[attr-defined]
    assert "looks_like" in schemas["ClusterOut"]["properties"]
    assert {"subject_id", "similarity", "agreeing", "checked", "far", "threshold"} <= set(
        schemas["LooksLikeOut"]["properties"]
    )
