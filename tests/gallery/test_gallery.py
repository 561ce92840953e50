"""The gallery: store as source of truth, FAISS index derived, durable, thread-safe."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import GalleryCorrupted, ModelMismatch, SubjectNotFound
from service.gallery import Gallery, NewFace, backends
from service.gallery.embedded import embedded_gallery
from service.gallery.index import INDEX_FILE
from service.gallery.sqlite import STORE_FILE
from service.settings import GallerySettings
from tests.backends import assert_index_equals_store

DIM = 128
MODEL = "test-model@000000000000"


def unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def face(vec: np.ndarray, sha: str) -> NewFace:
    return NewFace(embedding=vec, box=(0.0, 0.0, 10.0, 10.0), det_score=0.99, image_sha256=sha)


def open_gallery(path: Path, model: str = MODEL, factory: str = "Flat") -> Gallery:
    return embedded_gallery(path, model_id=model, embedding_dim=DIM, index_factory=factory)


Opener = Callable[..., Gallery]


@pytest.fixture(params=["embedded", "distributed"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the gallery of one test on either backend: SQLite + FAISS in a folder, or a real
    PostgreSQL database + a real Milvus (milvus-lite server) collection. Closes what it opened."""
    opened: list[Gallery] = []
    if request.param == "embedded":
        settings = GallerySettings(path=tmp_path)
    else:
        settings = GallerySettings(**request.getfixturevalue("distributed").settings())

    def open_(model: str = MODEL) -> Gallery:
        g = backends.open_gallery(settings, model_id=model, embedding_dim=DIM)
        opened.append(g)
        return g

    yield open_
    for g in opened:
        with contextlib.suppress(Exception):  # already closed by the test
            g.close()


def test_enroll_search_and_erase(opener: Opener) -> None:
    rng = np.random.default_rng(1)
    g = opener()
    vecs = unit(rng, 6)
    for i in range(3):
        g.create_subject(f"s{i}", f"Subject {i}", {})
        g.add_faces(
            f"s{i}", [face(vecs[2 * i], f"a{i}"), face(vecs[2 * i + 1], f"b{i}")], model_id=MODEL
        )
    (top,) = g.search(vecs[2:3], top_k=2, model_id=MODEL)
    assert top[0].subject_id == "s1" and top[0].score == pytest.approx(1.0, abs=1e-5)
    assert len({c.subject_id for c in top}) == len(top)  # one entry per subject
    assert g.delete_subject("s1") == 2
    (after,) = g.search(vecs[2:4], top_k=3, model_id=MODEL)[:1]
    assert all(c.subject_id != "s1" for c in after)
    with pytest.raises(SubjectNotFound):
        g.get_subject("s1")
    assert_index_equals_store(g)
    g.close()


def test_same_image_twice_is_a_noop(opener: Opener) -> None:
    rng = np.random.default_rng(2)
    g = opener()
    g.create_subject("s", "S", {})
    v = unit(rng)[0]
    [(fid, created)] = g.add_faces("s", [face(v, "same")], model_id=MODEL)
    [(fid2, created2)] = g.add_faces("s", [face(v, "same")], model_id=MODEL)
    assert created and not created2 and fid == fid2
    assert g.stats()["faces"] == 1 and g.stats()["indexed"] == 1


def test_persisted_index_is_reused_and_stale_or_corrupt_ones_rebuilt(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    g = open_gallery(tmp_path)
    g.create_subject("s", "S", {})
    g.add_faces("s", [face(v, f"x{i}") for i, v in enumerate(unit(rng, 5))], model_id=MODEL)
    g.close()
    reopened = open_gallery(tmp_path)
    assert reopened.stats()["indexed"] == 5
    assert_index_equals_store(reopened)
    # a write the saved index does not know about (as after SIGKILL before a flush)
    reopened.add_faces("s", [face(unit(rng)[0], "late")], model_id=MODEL)
    reopened._store.close()  # no flush: the file is stale
    stale = open_gallery(tmp_path)
    assert stale.stats()["indexed"] == 6
    assert_index_equals_store(stale)
    stale.close()
    (tmp_path / INDEX_FILE).write_bytes(b"garbage")
    corrupt = open_gallery(tmp_path)
    assert corrupt.stats()["indexed"] == 6
    assert_index_equals_store(corrupt)
    (tmp_path / INDEX_FILE).unlink()
    corrupt.add_faces("s", [face(unit(rng)[0], "later")], model_id=MODEL)
    corrupt.close()  # saves again
    assert open_gallery(tmp_path).stats()["indexed"] == 7


def test_gallery_is_pinned_to_its_model(opener: Opener) -> None:
    rng = np.random.default_rng(4)
    g = opener()
    g.create_subject("s", "S", {})
    g.add_faces("s", [face(unit(rng)[0], "a")], model_id=MODEL)
    g.close()
    other = opener(model="other@111111111111")
    assert other.model_id == MODEL  # the recorded model wins
    with pytest.raises(ModelMismatch):
        other.add_faces("s", [face(unit(rng)[0], "b")], model_id="other@111111111111")
    with pytest.raises(ModelMismatch):
        other.search(unit(rng), top_k=1, model_id="other@111111111111")


def test_corrupted_store_is_refused_not_emptied(tmp_path: Path) -> None:
    g = open_gallery(tmp_path)
    g.create_subject("s", "S", {})
    g.close()
    store = tmp_path / STORE_FILE
    data = bytearray(store.read_bytes())
    data[0:16] = b"not a database!!"
    store.write_bytes(bytes(data))
    with pytest.raises(GalleryCorrupted, match="left untouched"):
        open_gallery(tmp_path)
    assert store.read_bytes()[:16] == b"not a database!!"


def test_ivf_factory_trains_from_the_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    g = open_gallery(tmp_path)
    g.create_subject("s", "S", {})
    vecs = unit(rng, 400)
    g.add_faces("s", [face(v, str(i)) for i, v in enumerate(vecs)], model_id=MODEL)
    g.close()
    ivf = open_gallery(tmp_path, factory="IVF4,Flat")
    assert ivf.stats()["indexed"] == 400 and ivf.stats()["index_factory"] == "IVF4,Flat"
    (top,) = ivf.search(vecs[:1], top_k=1, model_id=MODEL)
    assert top[0].score > 0.99


def test_concurrent_enroll_delete_and_search(opener: Opener) -> None:
    g = opener()
    errors: list[BaseException] = []
    n_threads, per_thread = 6, 25

    def worker(t: int) -> None:
        rng = np.random.default_rng(100 + t)
        try:
            for i in range(per_thread):
                sid = f"t{t}-{i}"
                g.create_subject(sid, sid, {})
                g.add_faces(sid, [face(unit(rng)[0], sid)], model_id=MODEL)
                g.search(unit(rng), top_k=3, model_id=MODEL)
                if i % 5 == 0:
                    g.delete_subject(sid)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    expected = n_threads * (per_thread - per_thread // 5)
    assert g.stats()["faces"] == expected == g.stats()["indexed"]
    assert_index_equals_store(g)


def test_reconcile_replays_what_the_index_missed_and_drops_what_the_store_lost(
    opener: Opener,
) -> None:
    """A crash between the store's commit and the index write leaves the index behind (or,
    for a delete, ahead): opening the gallery again, or `marginface gallery reconcile`, repairs
    it from the store."""
    rng = np.random.default_rng(6)
    g = opener()
    g.create_subject("s", "S", {})
    vecs = unit(rng, 4)
    results = g.add_faces("s", [face(v, f"r{i}") for i, v in enumerate(vecs)], model_id=MODEL)
    ids = np.array([fid for fid, _ in results], dtype=np.int64)
    # what a crash leaves: two committed faces never reached the index, and a stray vector
    # (a deleted face's) is still there; the embedded index file even claims to be current
    store: Any = g._store
    index: Any = g._index  # the kept index, written past the gallery as a crash would
    index.remove(ids[:2].tolist())
    index.add(np.array([10**9]), unit(rng))
    if hasattr(index, "faiss"):  # embedded: save what it holds now, claimed current
        state = {"generation": store.generation(), "digest": store.content_digest()}
        index.faiss.save(index._path, state)
    else:
        index.flush()
        index.close()
    store.close()
    again = opener()  # the start-up check
    assert_index_equals_store(again)
    (top,) = again.search(vecs[:1], top_k=1, model_id=MODEL)
    assert top[0].face_id == ids[0]
    assert again.reconcile() == {"replayed": 0, "removed": 0, "faces": 4}
