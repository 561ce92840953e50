"""The gallery's promises under the failures that broke them (issue 12's findings): a failed
index write, corrupted index and store bytes, a subject with many faces crowding top-k, heavy
index work under the lock, a GPU copy re-uploaded on every write, a schema nobody reads."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import SchemaOutdated
from service.gallery import Gallery, NewFace
from service.gallery import index as index_module
from service.gallery.embedded import embedded_gallery
from service.gallery.index import FaissIndex, min_train_size
from service.vision.pipeline import FacePipeline
from tests.conftest import API_KEY, DATA, make_settings
from tests.gallery.test_gallery import DIM, MODEL, Opener, face, opener, unit  # noqa: F401

STORE_FILE = "gallery.sqlite3"
INDEX_FILE = "index.faiss"


def open_embedded(path: Path, factory: str = "Flat") -> Gallery:
    return embedded_gallery(path, model_id=MODEL, embedding_dim=DIM, index_factory=factory)


def search_ids(g: Gallery, vector: np.ndarray, k: int = 1) -> list[int]:
    (found,) = g.search(vector[None], top_k=k, model_id=MODEL)
    return [c.face_id for c in found]


def test_a_failed_index_write_loses_no_face(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 1: the store commits, the in-process index write raises. Main answered 500,
    then stamped the store's generation on the index at the next flush, so after a restart
    the stale index loaded as current and the committed face was never found again."""
    rng = np.random.default_rng(10)
    vecs = unit(rng, 2)
    g = open_embedded(tmp_path)
    g.create_subject("s", "S", {})
    g.add_faces("s", [face(vecs[0], "a")], model_id=MODEL)
    real_add = FaissIndex.add
    calls = {"n": 0}

    def failing_add(self: FaissIndex, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated FAISS failure (out of memory)")
        real_add(self, *args, **kwargs)

    monkeypatch.setattr(FaissIndex, "add", failing_add)
    try:
        results = g.add_faces("s", [face(vecs[1], "b")], model_id=MODEL)
    except RuntimeError:  # main: a 500 for a face the store had committed
        results = None
    monkeypatch.setattr(FaissIndex, "add", real_add)
    if results is not None:  # acknowledged: it must be found, now and after a restart
        g.wait_until_indexed(timeout_s=30)
        assert search_ids(g, vecs[1]) == [results[0][0]]
    g.flush()
    g.close()
    reopened = open_embedded(tmp_path)
    stats = reopened.stats()
    assert stats["faces"] == stats["indexed"] == 2
    (top,) = reopened.search(vecs[1][None], top_k=1, model_id=MODEL)
    assert top and top[0].score == pytest.approx(1.0, abs=1e-5)
    reopened.close()


def _flip_middle_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0x7F
    path.write_bytes(bytes(data))  # same size: no length check can see it


def test_flipped_bytes_in_the_index_file_are_rebuilt_not_served(tmp_path: Path) -> None:
    """Finding 3: an index.faiss with bytes flipped (size kept) loaded and returned scores like
    2.4e28, so strangers matched."""
    rng = np.random.default_rng(11)
    vecs = unit(rng, 50)
    g = open_embedded(tmp_path)
    g.create_subject("s", "S", {})
    g.add_faces("s", [face(v, f"f{i}") for i, v in enumerate(vecs)], model_id=MODEL)
    g.close()
    _flip_middle_bytes(tmp_path / INDEX_FILE)
    reopened = open_embedded(tmp_path)
    strangers = unit(rng, 20)
    for results in reopened.search(strangers, top_k=5, model_id=MODEL):
        assert all(-1.0 <= c.score <= 1.0 for c in results)
        assert all(c.score < 0.9 for c in results)  # random 128-d vectors are near orthogonal
    (own,) = reopened.search(vecs[7][None], top_k=1, model_id=MODEL)
    assert own[0].score == pytest.approx(1.0, abs=1e-5)
    reopened.close()


def _flip_embedding_on_disk(store: Path, vector: np.ndarray) -> None:
    """Flip bytes of one stored embedding in the SQLite file itself (quick_check cannot see it:
    the page structure is intact)."""
    data = bytearray(store.read_bytes())
    blob = vector.astype(np.float32).tobytes()
    at = data.find(blob)
    assert at >= 0, "the embedding is not in the store file"
    for i in range(3, 128, 4):  # the exponent byte of every other float: huge values
        data[at + i] ^= 0x40
    store.write_bytes(bytes(data))


def test_a_corrupted_stored_embedding_is_quarantined_never_matched(tmp_path: Path) -> None:
    """Finding 3: one stored embedding with flipped bytes passed quick_check and made its
    subject match anyone on verify; nothing checked unit norm or a checksum."""
    rng = np.random.default_rng(12)
    vecs = unit(rng, 3)
    g = open_embedded(tmp_path)
    g.create_subject("victim", "V", {})
    g.create_subject("other", "O", {})
    ids = g.add_faces("victim", [face(vecs[0], "v0"), face(vecs[1], "v1")], model_id=MODEL)
    g.add_faces("other", [face(vecs[2], "o0")], model_id=MODEL)
    g.close()
    (tmp_path / INDEX_FILE).unlink()  # so the start-up rebuild reads the store
    _flip_embedding_on_disk(tmp_path / STORE_FILE, vecs[0])
    reopened = open_embedded(tmp_path)
    stranger = unit(rng)[0]
    face_ids, vectors = reopened.subject_embeddings("victim", model_id=MODEL)
    assert ids[0][0] not in face_ids.tolist()  # quarantined: never compared
    assert np.all(np.abs(vectors @ stranger) <= 1.0)
    for results in reopened.search(np.stack([stranger, vecs[0]]), top_k=5, model_id=MODEL):
        assert ids[0][0] not in [c.face_id for c in results]
        assert all(-1.0 <= c.score <= 1.0 for c in results)
    report = reopened.integrity()
    assert report["quarantined"] == [ids[0][0]]
    reopened.close()


def test_identify_returns_top_k_distinct_subjects(opener: Opener) -> None:  # noqa: F811
    """Finding 4: the search asked the index for top_k*4+8 faces, so a subject with many similar
    faces crowded the others out (top_k=2 returned one candidate while another subject scored
    about 0.9)."""
    rng = np.random.default_rng(13)
    probe = unit(rng)[0]
    g = opener()
    g.create_subject("crowd", "C", {})
    near = probe + rng.normal(0, 0.01, (40, DIM)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    g.add_faces("crowd", [face(v, f"c{i}") for i, v in enumerate(near)], model_id=MODEL)
    g.create_subject("second", "S", {})
    second = probe + 0.5 * unit(rng)[0]
    second /= np.linalg.norm(second)
    g.add_faces("second", [face(second, "s0")], model_id=MODEL)
    (found,) = g.search(probe[None], top_k=2, model_id=MODEL)
    assert [c.subject_id for c in found] == ["crowd", "second"]
    assert found[1].score == pytest.approx(float(second @ probe), abs=1e-4)


def test_index_training_runs_beside_the_live_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 6: the enrollment that crossed an IVF training threshold trained inside the
    gallery lock, so every search stalled until the training ended. Here the training waits
    until a search has completed: it deadlocked on main."""
    rng = np.random.default_rng(14)
    g = open_embedded(tmp_path, factory="IVF4,Flat")  # trains at 4 * 39 = 156 faces
    g.create_subject("s", "S", {})
    vecs = unit(rng, 160)
    g.add_faces("s", [face(v, f"x{i}") for i, v in enumerate(vecs[:150])], model_id=MODEL)
    training, searched = threading.Event(), threading.Event()
    real_rebuild = FaissIndex.rebuild

    def slow_rebuild(self: FaissIndex, *args: Any, **kwargs: Any) -> None:
        training.set()
        searched.wait(timeout=10)
        real_rebuild(self, *args, **kwargs)

    monkeypatch.setattr(FaissIndex, "rebuild", slow_rebuild)
    writer = threading.Thread(
        target=g.add_faces,
        args=("s", [face(v, f"y{i}") for i, v in enumerate(vecs[150:])]),
        kwargs={"model_id": MODEL},
    )
    writer.start()
    assert training.wait(timeout=10), "the gallery never trained its IVF index"
    found: list[list[int]] = []
    reader = threading.Thread(target=lambda: found.append(search_ids(g, vecs[3])))
    reader.start()
    reader.join(timeout=5)
    completed = not reader.is_alive()
    searched.set()
    reader.join()
    writer.join()
    assert completed, "a search waited for the index training"
    assert found == [search_ids(g, vecs[3])]
    g.wait_until_indexed(timeout_s=30)
    assert "IVF4" in g.stats()["index_factory"] and g.stats()["indexed"] == 160
    g.close()


def test_one_gpu_copy_is_kept_and_updated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 6: the GPU copy of the index was dropped on every write and uploaded again with
    a new StandardGpuResources at the next search. A CPU clone stands in for the device here
    (no GPU on the test machines); what is counted is how often the index is uploaded."""
    uploads = {"n": 0}

    def to_device(self: FaissIndex, inner: Any) -> Any:
        uploads["n"] += 1
        return faiss.clone_index(inner)

    monkeypatch.setattr(index_module, "gpu_available", lambda: True)
    monkeypatch.setattr(FaissIndex, "_to_device", to_device)
    rng = np.random.default_rng(15)
    g = embedded_gallery(tmp_path, model_id=MODEL, embedding_dim=DIM, use_gpu=True)
    g.create_subject("s", "S", {})
    vecs = unit(rng, 30)
    ids = []
    for i in range(0, 30, 10):
        ids += [fid for fid, _ in g.add_faces(
            "s", [face(v, f"g{i + j}") for j, v in enumerate(vecs[i : i + 10])], model_id=MODEL
        )]  # fmt: skip
        assert search_ids(g, vecs[i]) == [ids[i]]
    g.delete_face(ids[0])
    assert ids[0] not in search_ids(g, vecs[0], k=3)
    assert search_ids(g, vecs[25]) == [ids[25]]
    assert uploads["n"] == 1
    g.close()


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE subjects (id TEXT PRIMARY KEY, name TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL);
CREATE TABLE faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL, model_id TEXT NOT NULL, box TEXT NOT NULL,
    det_score REAL NOT NULL, image_sha256 TEXT NOT NULL, created_at REAL NOT NULL,
    UNIQUE (subject_id, image_sha256));
CREATE INDEX faces_subject ON faces(subject_id);
"""


def write_v1_gallery(path: Path, vecs: np.ndarray, *, schema_version: str = "1") -> None:
    """A gallery as the release before versioned SQLite migrations wrote it (schema 1)."""
    path.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path / STORE_FILE) as conn:
        conn.executescript(V1_SCHEMA)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("model_id", MODEL), ("embedding_dim", str(DIM)),
             ("schema_version", schema_version), ("generation", "3")],
        )  # fmt: skip
        conn.execute("INSERT INTO subjects VALUES ('old', 'Old One', '{\"a\": 1}', 1.5)")
        conn.executemany(
            "INSERT INTO faces(subject_id, embedding, model_id, box, det_score, image_sha256, "
            "created_at) VALUES ('old', ?, ?, '[1, 2, 3, 4]', 0.9, ?, 2.5)",
            [(v.astype(np.float32).tobytes(), MODEL, f"sha{i}") for i, v in enumerate(vecs)],
        )


def test_an_embedded_gallery_of_schema_1_upgrades_in_place(tmp_path: Path) -> None:
    """Finding 9: the SQLite store wrote schema_version but never read it, so embedded
    galleries had no upgrade path (PostgreSQL has versioned migrations)."""
    rng = np.random.default_rng(16)
    vecs = unit(rng, 5)
    write_v1_gallery(tmp_path, vecs)
    g = open_embedded(tmp_path)
    subject = g.get_subject("old")
    assert (subject.name, subject.metadata, subject.face_count) == ("Old One", {"a": 1}, 5)
    ids, stored = g.subject_embeddings("old", model_id=MODEL)
    np.testing.assert_array_equal(stored, vecs)
    assert [f.image_sha256 for f in g.list_faces("old")] == [f"sha{i}" for i in range(5)]
    assert search_ids(g, vecs[2]) == [int(ids[2])]
    g.close()
    with sqlite3.connect(tmp_path / STORE_FILE) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) > 1  # main: still 1, with no checksums to check embeddings against
    from service.gallery.sqlite import latest_version

    assert int(version) == latest_version()
    again = open_embedded(tmp_path)
    assert again.integrity()["quarantined"] == []
    again.close()


def test_a_newer_embedded_schema_is_refused_clearly(tmp_path: Path) -> None:
    write_v1_gallery(tmp_path, unit(np.random.default_rng(17), 1), schema_version="99")
    with pytest.raises(SchemaOutdated, match=r"schema version 99.*newer"):
        open_embedded(tmp_path)
    with sqlite3.connect(tmp_path / STORE_FILE) as conn:  # left as it was
        assert conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 1


def test_new_faces_are_unit_vectors_or_refused(tmp_path: Path) -> None:
    g = open_embedded(tmp_path)
    g.create_subject("s", "S", {})
    bad = np.full(DIM, 3.0, dtype=np.float32)
    with pytest.raises(ValueError, match="unit"):
        g.add_faces("s", [NewFace(bad, (0, 0, 1, 1), 0.9, "x")], model_id=MODEL)
    assert g.stats()["faces"] == 0
    g.close()


def test_a_quarantined_face_is_reported_and_never_matched_through_the_api(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    """Acceptance: flipped bytes in one stored embedding are quarantined at start-up, reported
    (/readyz, a metric, the log) and never returned by verify or identify."""
    glint = DATA / "glint24_aligned"
    people = sorted(d.name for d in glint.iterdir())[:2]
    photos = {n: sorted((glint / n).glob("*.jpg"), key=lambda p: int(p.stem)) for n in people}
    settings = make_settings(tmp_path)
    headers = {"X-API-Key": API_KEY}

    def aligned(path: Path) -> tuple[str, bytes, str]:
        return (path.name, path.read_bytes(), "image/jpeg")

    with TestClient(create_app(settings, pipeline=pipeline), headers=headers) as c:
        for name in people:
            assert c.post("/v1/subjects", json={"id": name, "name": name}).status_code == 201
            files = [("files", aligned(p)) for p in photos[name][:2]]
            r = c.post(f"/v1/subjects/{name}/faces", files=files, params={"aligned": "true"})
            assert r.status_code == 201
        victim_face = r.json()["faces"][0]["face_id"]
    gallery = tmp_path / "gallery"
    with sqlite3.connect(gallery / STORE_FILE) as conn:
        (blob,) = conn.execute("SELECT embedding FROM faces WHERE id=?", (victim_face,)).fetchone()
    _flip_embedding_on_disk(gallery / STORE_FILE, np.frombuffer(blob, dtype=np.float32))
    with TestClient(create_app(settings, pipeline=pipeline), headers=headers) as c:
        ready = c.get("/readyz").json()["gallery"]
        assert ready["quarantined"] == 1 and ready["faces"] == 4 and ready["indexed"] == 3
        assert "marginface_gallery_quarantined_faces 1.0" in c.get("/metrics").text
        for probe in (photos[people[1]][5], photos[people[0]][5]):
            r = c.post(
                "/v1/verify",
                files={"image_a": aligned(probe)},
                data={"subject_id": people[1], "aligned": "true"},
            )
            assert r.status_code == 200 and -1 <= r.json()["score"] <= 1
            assert r.json()["matched_face_id"] != victim_face
            r = c.post("/v1/identify", files={"image": aligned(probe)}, data={"aligned": "true"})
            candidates = r.json()["faces"][0]["candidates"]
            assert victim_face not in [cand["face_id"] for cand in candidates]


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW16", "IVF4,PQ32x4fs,RFlat"])
def test_deletes_keep_every_other_face_findable_and_leave_no_vector_on_disk(
    tmp_path: Path, factory: str
) -> None:
    """Found while fixing finding 6: FAISS's IndexIDMap2 over an IVF index renumbers ids wrongly
    after a second delete (main: 995 of 997 faces no longer found as themselves after two
    deletes), and HNSW cannot delete at all (main: the delete raised after the store had
    committed it, and the saved index kept the erased vector). A re-ranked fast-scan index
    (",RFlat", the 1M default) cannot delete either, and keeps exact vectors for its re-rank."""
    rng = np.random.default_rng(18)
    n = max(300, min_train_size(factory))
    vecs = unit(rng, n)
    g = open_embedded(tmp_path, factory=factory)
    g.create_subject("s", "S", {})
    ids = [
        fid
        for fid, _ in g.add_faces(
            "s", [face(v, f"d{i}") for i, v in enumerate(vecs)], model_id=MODEL
        )
    ]
    assert g.wait_until_indexed(timeout_s=60)
    assert factory.split(",")[0] in g.stats()["index_factory"]
    erased = {ids[7], ids[9], ids[150]}
    g.delete_face(ids[7])
    g.delete_face(ids[9])
    g.delete_face(ids[150])
    g.flush()
    assert g.wait_until_indexed(timeout_s=60)
    g.flush()
    for i, fid in enumerate(ids):
        found = search_ids(g, vecs[i], k=3)
        if fid in erased:
            assert fid not in found
        else:
            assert found[0] == fid, (i, fid, found)
    on_disk = (tmp_path / INDEX_FILE).read_bytes() if (tmp_path / INDEX_FILE).exists() else b""
    assert all(vecs[ids.index(f)].astype(np.float32).tobytes() not in on_disk for f in erased)
    g.close()
    reopened = open_embedded(tmp_path, factory=factory)
    assert reopened.stats()["indexed"] == n - 3
    assert search_ids(reopened, vecs[200]) == [ids[200]]
    reopened.close()
