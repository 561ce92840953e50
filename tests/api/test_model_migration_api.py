"""Issue 26, item 3: a running service moves its gallery to another recognizer
(``/v1/admin/model-migration``): identify keeps answering throughout, with the old model until
the switch and the new one after, never an error; held-back photos match after it; a rollback
returns; a cluster review made before the switch cannot enroll the old model's embeddings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.api.test_clusters import pile, submit
from tests.conftest import API_KEY, lfw, make_settings, read

PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld"]
TARGET = "sface-2021dec-int8"


@pytest.fixture(autouse=True)
def _needs_int8(int8_recognizer: str) -> None:
    """The migration target: derived on a fresh checkout (tests.conftest.int8_recognizer)."""


BASE = "/v1/admin/model-migration"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """A service that owns its pipeline (so it may switch it), photos kept, people enrolled."""
    settings = make_settings(
        tmp_path,
        privacy={"keep_images": True, "images_dir": tmp_path / "images"},
        jobs={"work_dir": tmp_path / "jobs"},
    )
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as c:
        for person in PEOPLE:
            assert c.post("/v1/subjects", json={"id": person, "name": person}).status_code == 201
            files = [("files", (f"{n}.jpg", read(lfw(person, n)), "image/jpeg")) for n in (1, 2)]
            assert c.post(f"/v1/subjects/{person}/faces", files=files).status_code == 201
        yield c


def identify(c: TestClient, person: str) -> tuple[int, str, str | None]:
    r = c.post("/v1/identify", files={"image": ("p.jpg", read(lfw(person, 3)), "image/jpeg")})
    if r.status_code != 200:
        return r.status_code, r.text, None
    match = r.json()["faces"][0]["match"]
    return 200, r.json()["model_id"], match["subject_id"] if match else None


def wait_for(c: TestClient, state: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = c.get(BASE).json()
        if status["state"] in (state, "failed"):
            assert status["state"] == state, status
            return status
        time.sleep(0.2)
    raise AssertionError(f"the migration did not reach {state}: {status}")


def test_the_service_switches_in_place_while_answering(client: TestClient) -> None:
    c = client
    job = submit(c, pile()[0])  # a cluster review made with the old model
    old_model = c.get("/v1/model").json()["model_id"]
    dry = c.post(BASE, json={"to": TARGET, "dry_run": True}).json()
    assert dry["to_embed"] == 2 * len(PEOPLE) and dry["cannot_migrate"] == 0

    seen: list[tuple[int, str, str | None]] = []
    stop = threading.Event()

    def keep_identifying() -> None:
        while not stop.is_set():
            seen.append(identify(c, "Colin_Powell"))

    worker = threading.Thread(target=keep_identifying)
    worker.start()
    try:
        started = c.post(BASE, json={"to": TARGET})
        assert started.status_code == 202, started.text
        assert c.post(BASE, json={"to": TARGET}).json()["error"]["code"] == "migration_running"
        done = wait_for(c, "switched")
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join()
    assert done["gallery_model"] == done["service_model"] and TARGET in done["gallery_model"]
    assert done["result"]["switched"] == 2 * len(PEOPLE)
    # every identify answered, the same person each time; the model changed once, never back
    assert seen and all(code == 200 and who == "Colin_Powell" for code, _, who in seen), seen
    models = [model for _, model, _ in seen]
    switch_at = next((i for i, m in enumerate(models) if m != old_model), len(models))
    assert 0 < switch_at < len(models), "identify ran on both sides of the switch"
    assert set(models[:switch_at]) == {old_model} and set(models[switch_at:]) <= {
        done["gallery_model"]
    }
    assert c.get("/v1/model").json()["model_id"] == done["gallery_model"]
    assert all(identify(c, p)[2] == p for p in PEOPLE)

    # the cluster review holds the old model's embeddings: naming it now is refused
    cluster = c.get(f"/v1/jobs/{job['id']}/clusters").json()["clusters"][0]["cluster"]
    named = c.post(f"/v1/jobs/{job['id']}/clusters/{cluster}/subject", json={"subject_id": "x"})
    assert named.status_code == 409, named.text
    assert named.json()["error"]["code"] == "model_mismatch"
    assert c.get("/v1/subjects/x").status_code == 404

    assert c.post(f"{BASE}/rollback").status_code == 202
    back = wait_for(c, "switched")
    assert back["gallery_model"] == old_model == back["service_model"]
    assert back["result"]["embedded"] == 0  # the old embeddings were kept
    assert all(identify(c, p) == (200, old_model, p) for p in PEOPLE)
    assert c.post(f"{BASE}/purge").json()["purged"] == 2 * len(PEOPLE)
    assert c.get(BASE).json()["staged_models"] == {}


def test_bad_migration_requests_are_4xx(client: TestClient) -> None:
    c = client
    unknown = c.post(BASE, json={"to": "no-such-model"})
    assert unknown.status_code in (404, 409, 422, 503) and unknown.json()["error"]["code"]
    assert c.post(BASE, json={"to": TARGET, "nope": 1}).status_code == 422
    assert c.post(f"{BASE}/rollback").status_code == 422  # never switched
    no_key = c.get(BASE, headers={"X-API-Key": ""})
    assert no_key.status_code == 401


def test_moving_to_the_gallerys_own_model_keeps_the_rollback(client: TestClient) -> None:
    """A move to the model the gallery is already on (to retry its failures, or by mistake)
    changes nothing it did not need to: the model to roll back to stays the one before the
    last real switch (the console offers every registered model, the current one included)."""
    c = client
    old_model = c.get("/v1/model").json()["model_id"]
    assert c.post(BASE, json={"to": "sface-2021dec"}).status_code == 202
    same = wait_for(c, "switched")
    assert same["gallery_model"] == old_model and same["previous_model"] is None
    assert c.post(f"{BASE}/rollback").status_code == 422  # still never switched

    assert c.post(BASE, json={"to": TARGET}).status_code == 202
    moved = wait_for(c, "switched")
    assert moved["previous_model"] == old_model
    assert c.post(BASE, json={"to": TARGET}).status_code == 202
    again = wait_for(c, "switched")
    assert again["gallery_model"] == moved["gallery_model"]
    assert again["previous_model"] == old_model  # not the model it is on
    assert c.post(f"{BASE}/rollback").status_code == 202
    back = wait_for(c, "switched")
    assert back["gallery_model"] == old_model == back["service_model"]
    assert all(identify(c, p) == (200, old_model, p) for p in PEOPLE)


def test_starts_at_the_same_moment_run_one_migration(client: TestClient) -> None:
    """Starts that arrive together (a double click in the console, two operators) run one
    migration: the others are refused with ``migration_running``, never a second thread moving
    the same gallery and pipeline beside the first."""
    c = client
    starts = 4
    barrier = threading.Barrier(starts)
    answers: list[tuple[int, str]] = []

    def start() -> None:
        barrier.wait()
        r = c.post(BASE, json={"to": TARGET})
        answers.append((r.status_code, (r.json().get("error") or {}).get("code", "")))

    threads = [threading.Thread(target=start) for _ in range(starts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [(202, "")] + [(409, "migration_running")] * (starts - 1), answers
    done = wait_for(c, "switched")
    assert done["result"]["switched"] == 2 * len(PEOPLE)
    assert all(identify(c, p)[1:] == (done["gallery_model"], p) for p in PEOPLE)
    assert done["previous_model"] != done["gallery_model"]
