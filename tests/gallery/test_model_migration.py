"""Issue 26, items 3 and 5 / acceptance 2: ``marginface gallery migrate-model`` moves a gallery
enrolled with one recognizer to another (different embedding spaces) without re-enrolling
anyone: every subject and face is kept, held-back photos of the same people are identified
after the switch, a rollback returns, a SIGKILL while re-embedding resumes without duplicates,
and the gallery never compares vectors of two models (the old service model is refused)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import MarginFaceError, ModelMismatch
from service.gallery import NewFace, backends
from service.gallery.staging import ModelPin
from service.settings import GallerySettings, Settings
from service.vision.pipeline import FacePipeline
from tests.backends import Distributed, backend_env, open_backend_gallery
from tests.conftest import API_KEY, ROOT, lfw, make_settings, read
from tests.gallery.test_gallery import DIM, MODEL, face, unit

PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder",
          "Ariel_Sharon"]  # fmt: skip
ENROLLED = (1, 2)
HELD_BACK = 3
TARGET = "sface-2021dec-int8"


@pytest.fixture(autouse=True)
def _needs_int8(int8_recognizer: str) -> None:
    """The migration target: derived on a fresh checkout (tests.conftest.int8_recognizer)."""


def gallery_settings(
    tmp_path: Path, model: str = "sface-2021dec", backend: Distributed | None = None
) -> Settings:
    gallery: dict[str, object] = {"path": tmp_path / "gallery", "flush_interval_s": 3600}
    return make_settings(
        tmp_path,
        embedder={"model": model},
        gallery={**gallery, **(backend.settings() if backend else {})},
        privacy={"keep_images": True, "images_dir": tmp_path / "images"},
    )


def environment(tmp_path: Path, backend: Distributed | None = None) -> dict[str, str]:
    env = {**os.environ, **backend_env(backend)}
    env.update(
        PYTHONPATH=str(ROOT),
        MARGINFACE_MODELS_DIR=str(ROOT / "models"),
        MARGINFACE_DEVICE="cpu",
        MARGINFACE_GALLERY__PATH=str(tmp_path / "gallery"),
        MARGINFACE_PRIVACY__KEEP_IMAGES="true",
        MARGINFACE_PRIVACY__IMAGES_DIR=str(tmp_path / "images"),
    )
    return env


def cli(tmp_path: Path, *args: str, backend: Distributed | None = None) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-m", "service.cli", "gallery", "migrate-model", *args, "--json"],
        cwd=ROOT,
        env=environment(tmp_path, backend),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, object] = json.loads(r.stdout)
    return out


def enroll(
    tmp_path: Path, pipeline: FacePipeline, backend: Distributed | None = None
) -> dict[str, list[int]]:
    """Six people, two photos each, enrolled with SFace (photos kept)."""
    faces: dict[str, list[int]] = {}
    settings = gallery_settings(tmp_path, backend=backend)
    with TestClient(create_app(settings, pipeline=pipeline), headers={"X-API-Key": API_KEY}) as c:
        for person in PEOPLE:
            files = [("files", (f"{n}.jpg", read(lfw(person, n)), "image/jpeg")) for n in ENROLLED]
            assert c.post("/v1/subjects", json={"id": person, "name": person}).status_code == 201
            r = c.post(f"/v1/subjects/{person}/faces", files=files)
            assert r.status_code == 201, r.text
            faces[person] = sorted(f["face_id"] for f in r.json()["faces"])
    return faces


@pytest.fixture
def enrolled(tmp_path: Path, pipeline: FacePipeline) -> dict[str, list[int]]:
    """The embedded gallery, enrolled."""
    return enroll(tmp_path, pipeline)


def identify_all(
    tmp_path: Path, model: str, backend: Distributed | None = None
) -> tuple[str, dict[str, str | None]]:
    """(the model the service runs, who each held-back photo is identified as)."""
    found: dict[str, str | None] = {}
    settings = gallery_settings(tmp_path, model, backend)
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as c:
        for person in PEOPLE:
            data = read(lfw(person, HELD_BACK))
            r = c.post("/v1/identify", files={"image": ("p.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            match = r.json()["faces"][0]["match"]
            found[person] = match["subject_id"] if match else None
        model_id = r.json()["model_id"]
        subjects = c.get("/v1/subjects", params={"limit": 100}).json()
    assert sorted(s["id"] for s in subjects["items"]) == sorted(PEOPLE)
    return model_id, found


def query(tmp_path: Path, backend: Distributed | None, sql: str) -> list[tuple[object, ...]]:
    """Rows of the gallery's store, read directly (SQLite file or PostgreSQL database)."""
    if backend is None:
        with sqlite3.connect(tmp_path / "gallery" / "gallery.sqlite3") as conn:
            return list(conn.execute(sql).fetchall())
    with psycopg.connect(backend.dsn) as pg:
        return list(pg.execute(sql).fetchall())


def face_models(tmp_path: Path, backend: Distributed | None = None) -> dict[int, str]:
    return {
        int(str(i)): str(m) for i, m in query(tmp_path, backend, "SELECT id, model_id FROM faces")
    }


def test_a_gallery_moves_to_another_model_and_back(
    tmp_path: Path, pipeline: FacePipeline, gallery_backend: Distributed | None
) -> None:
    backend = gallery_backend
    enroll(tmp_path, pipeline, backend)
    before = face_models(tmp_path, backend)
    assert len(before) == 2 * len(PEOPLE)

    dry = cli(tmp_path, "--to", TARGET, "--dry-run", backend=backend)
    assert dry["to_embed"] == len(before) and dry["cannot_migrate"] == 0
    assert face_models(tmp_path, backend) == before  # a dry run changes nothing

    moved = cli(tmp_path, "--to", TARGET, backend=backend)
    assert moved["switched"] == len(before) and moved["failed"] == 0
    after = face_models(tmp_path, backend)
    assert sorted(after) == sorted(before)  # every face kept, same ids
    assert len(set(after.values())) == 1 and TARGET in next(iter(after.values()))

    # the service follows the gallery's model, and held-back photos match the same people
    model_id, found = identify_all(tmp_path, "sface-2021dec", backend)
    assert TARGET in model_id
    assert found == {p: p for p in PEOPLE}

    back = cli(tmp_path, "--rollback", backend=backend)
    assert back["switched"] == len(before) and back["embedded"] == 0  # nothing re-embedded
    assert face_models(tmp_path, backend) == before
    model_id, found = identify_all(tmp_path, "sface-2021dec", backend)
    assert model_id.startswith("sface-2021dec@") and found == {p: p for p in PEOPLE}

    purged = cli(tmp_path, "--purge", backend=backend)
    assert purged["purged"] == len(before)
    assert query(tmp_path, backend, "SELECT COUNT(*) FROM staged_embeddings") == [(0,)]


def test_a_killed_migration_resumes_without_duplicates(
    tmp_path: Path, enrolled: dict[str, list[int]]
) -> None:
    store = tmp_path / "gallery" / "gallery.sqlite3"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "gallery",
            "migrate-model",
            "--to",
            TARGET,
            "--no-switch",
            "--batch",
            "1",
            "--json",
        ],
        cwd=ROOT,
        env=environment(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    staged = 0
    while time.monotonic() < deadline and proc.poll() is None:
        with sqlite3.connect(store) as conn:
            staged = conn.execute("SELECT COUNT(*) FROM staged_embeddings").fetchone()[0]
        if staged >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= staged < 2 * len(PEOPLE), "the kill did not land halfway"

    moved = cli(tmp_path, "--to", TARGET)
    assert moved["switched"] == 2 * len(PEOPLE)
    assert int(str(moved["embedded"])) <= 2 * len(PEOPLE) - staged  # only what was left
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 2 * len(PEOPLE)
        rows = conn.execute("SELECT face_id, model_id FROM staged_embeddings").fetchall()
    assert len(rows) == len(set(rows)) == 2 * len(PEOPLE)  # the old model's, once each


def test_the_old_model_is_refused_after_the_switch(
    tmp_path: Path, enrolled: dict[str, list[int]], pipeline: FacePipeline
) -> None:
    cli(tmp_path, "--to", TARGET)
    # a service handed the old model's pipeline (nothing to follow) never compares its vectors
    with TestClient(
        create_app(gallery_settings(tmp_path), pipeline=pipeline), headers={"X-API-Key": API_KEY}
    ) as c:
        data = read(lfw("Colin_Powell", HELD_BACK))
        r = c.post("/v1/identify", files={"image": ("p.jpg", data, "image/jpeg")})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_mismatch"


def test_erasing_a_face_erases_its_staged_embeddings(
    tmp_path: Path, pipeline: FacePipeline, gallery_backend: Distributed | None
) -> None:
    """Staged embeddings are embeddings too: erasure takes them with their face and subject."""
    backend = gallery_backend
    faces = enroll(tmp_path, pipeline, backend)
    staged = cli(tmp_path, "--to", TARGET, "--no-switch", backend=backend)
    assert staged["staged"] == 2 * len(PEOPLE)
    settings = gallery_settings(tmp_path, backend=backend)
    with TestClient(create_app(settings, pipeline=pipeline), headers={"X-API-Key": API_KEY}) as c:
        assert c.delete(f"/v1/faces/{faces['Tony_Blair'][0]}").status_code in (200, 204)
        assert c.delete("/v1/subjects/Colin_Powell").status_code in (200, 204)
    gone = [faces["Tony_Blair"][0], *faces["Colin_Powell"]]
    left = {
        int(str(r[0])) for r in query(tmp_path, backend, "SELECT face_id FROM staged_embeddings")
    }
    assert left and not left & set(gone)
    assert len(left) == 2 * len(PEOPLE) - len(gone)


def test_another_replica_stops_writing_once_the_gallery_switched(distributed: Distributed) -> None:
    """Replicas share the distributed gallery; one switches it to another model. The others
    still run the old model: their writes are refused (409 model_mismatch: never an embedding
    of the old model stored as a face of the new one) and /readyz says not ready until they
    restart (and follow the gallery)."""
    rng = np.random.default_rng(5)

    def unit(dim: int) -> np.ndarray:
        v = rng.normal(size=dim).astype(np.float32)
        return v / np.linalg.norm(v)

    a = open_backend_gallery(distributed, Path("unused"))
    b = open_backend_gallery(distributed, Path("unused"))
    try:
        model = a.model_id
        a.create_subject("s", "S", {})
        [(fid, _)] = a.add_faces("s", [NewFace(unit(128), (0, 0, 9, 9), 0.9, "a" * 64)],
                                 model_id=model)  # fmt: skip
        target = ModelPin("other-model@0123456789ab", "0123456789ab" + "0" * 52, 64)
        assert a.models.staging().stage(target, [(fid, unit(64))]) == 1
        assert a.models.switch(target)["switched"] == 1
        assert a.stats()["model_id"] == target.model_id
        with pytest.raises(ModelMismatch):
            b.add_faces("s", [NewFace(unit(128), (0, 0, 9, 9), 0.9, "b" * 64)], model_id=model)
        with pytest.raises(ModelMismatch):
            b.stats()
        assert face_ids_of(distributed) == [fid]
    finally:
        a.close()
        b.close()


def face_ids_of(backend: Distributed) -> list[int]:
    with psycopg.connect(backend.dsn) as pg:
        return [int(r[0]) for r in pg.execute("SELECT id FROM faces ORDER BY id").fetchall()]


def test_a_gallery_moves_to_a_model_we_trained(tmp_path: Path, pipeline: FacePipeline) -> None:
    """Acceptance 2, the second target: the registry's CelebA-299 ArcFace model (trained here,
    another embedding space and alignment than SFace). Every face is kept and each enrolled
    photo is found as its own subject by the new model; how well it matches held-back photos is
    the model's quality (bench/migration_accuracy.py), not the migration's."""
    enroll(tmp_path, pipeline)
    moved = cli(tmp_path, "--to", "celeba299-iresnet18w16-arcface")
    assert moved["switched"] == 2 * len(PEOPLE) and moved["failed"] == 0
    settings = gallery_settings(tmp_path)
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as c:
        for person in PEOPLE:
            data = read(lfw(person, ENROLLED[0]))
            r = c.post("/v1/identify", files={"image": ("p.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            assert r.json()["model_id"].startswith("celeba299-iresnet18w16-arcface@")
            best = r.json()["faces"][0]["candidates"][0]
            assert best["subject_id"] == person and best["score"] > 0.95


def test_a_move_that_could_re_embed_no_face_is_refused_and_a_rerun_retries(
    tmp_path: Path, enrolled: dict[str, list[int]]
) -> None:
    """The command run without the service's privacy settings (its photos and chips are kept,
    but this environment names another images folder) found nothing to re-embed any face from,
    and still switched:
    exit 0, "switched 0 faces", every face left on the old model's embedding, never compared, so
    the gallery found no one. A switch that would leave no face comparable is refused."""
    before = face_models(tmp_path)
    env = {
        **environment(tmp_path),
        "MARGINFACE_PRIVACY__KEEP_IMAGES": "false",
        "MARGINFACE_PRIVACY__IMAGES_DIR": str(tmp_path / "elsewhere"),
    }
    r = subprocess.run(
        [sys.executable, "-m", "service.cli", "gallery", "migrate-model", "--to", TARGET, "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 2, r.stdout
    assert json.loads(r.stdout)["error"]["code"] == "no_face_migrated"
    assert face_models(tmp_path) == before
    model_id, found = identify_all(tmp_path, "sface-2021dec")
    assert model_id.startswith("sface-2021dec@") and found == {p: p for p in PEOPLE}

    # with the service's settings the same command tries the faces that failed again: they
    # were listed as failed, and were skipped for good (re-run: 0 re-embedded, refused again)
    dry = cli(tmp_path, "--to", TARGET, "--dry-run")
    assert dry["from_photo"] == len(before) and dry["cannot_migrate"] == 0, dry
    moved = cli(tmp_path, "--to", TARGET)
    assert moved["switched"] == len(before) and moved["failed"] == 0, moved


def test_a_model_that_cannot_tell_faces_apart_is_refused_as_such(tmp_path: Path) -> None:
    """A model trained for 3 steps gives every face the same embedding (cosine 1.0 between
    any two). The switch's check (sampled faces find themselves first) refused it, rightly, but
    as 503 gallery_corrupted, which says the stored gallery is damaged: it is the new model's
    embeddings, and nothing was changed (409 migration_unverified)."""
    settings = GallerySettings(path=tmp_path)
    g = backends.open_gallery(settings, model_id=MODEL, embedding_dim=DIM)
    g.create_subject("s", "S", {})
    vecs = unit(np.random.default_rng(33), 8)
    ids = [i for i, _ in g.add_faces("s", [face(v, f"f{n}") for n, v in enumerate(vecs)],
                                      model_id=MODEL)]  # fmt: skip
    g.close()
    collapsed = ModelPin("collapsed@0123456789ab", "ab" * 32, 64)
    same = np.full(64, 1 / 8, dtype=np.float32)  # a unit vector, the same for every face
    staging = backends.open_staging(settings, model_id=MODEL, embedding_dim=DIM)
    staging.stage(collapsed, [(i, same) for i in ids])
    staging.close()
    g = backends.open_gallery(settings, model_id=MODEL, embedding_dim=DIM)
    try:
        with pytest.raises(MarginFaceError) as refused:
            g.models.switch(collapsed)
        assert (refused.value.code, refused.value.status) == ("migration_unverified", 409)
        assert g.model_id == MODEL and g.counts() == (1, len(ids))
    finally:
        g.close()


def test_a_rollback_returns_to_a_model_that_was_never_calibrated(
    tmp_path: Path, enrolled: dict[str, list[int]]
) -> None:
    """The gallery's first model was served without a calibration (its manifest has only a
    threshold, as an exported model's placeholder). Moving to a model needs its calibration,
    but a rollback goes back to what the gallery was served with: refusing it (409
    model_not_calibrated until --allow-uncalibrated) made the rollback more than one command."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("retinaface-mnet025", "yunet-2023mar", TARGET):
        (models / name).symlink_to(ROOT / "models" / name, target_is_directory=True)
    first = models / "sface-2021dec"
    first.mkdir()
    shipped = ROOT / "models" / "sface-2021dec"
    manifest = json.loads((shipped / "manifest.json").read_text())
    del manifest["calibration"]
    (first / "manifest.json").write_text(json.dumps(manifest))
    (first / manifest["file"]).symlink_to(shipped / manifest["file"])
    before = face_models(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**environment(tmp_path), "MARGINFACE_MODELS_DIR": str(models)}
        return subprocess.run(
            [sys.executable, "-m", "service.cli", "gallery", "migrate-model", *args, "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    moved = run("--to", TARGET)
    assert moved.returncode == 0, moved.stdout + moved.stderr[-2000:]
    back = run("--rollback")
    assert back.returncode == 0, back.stdout
    assert json.loads(back.stdout)["switched"] == len(before)
    assert face_models(tmp_path) == before
