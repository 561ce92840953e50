"""Index factories: exact until trainable, then IVF/PQ trained from the store; HNSW; search
parameters; and the device-copy search path (a CPU clone stands in for the GPU)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from service.gallery import Gallery
from service.gallery.embedded import embedded_gallery
from service.gallery.index import FaissIndex, min_train_size
from tests.backends import assert_index_equals_store
from tests.gallery.test_gallery import DIM, MODEL, face, unit


def test_min_train_sizes() -> None:
    assert min_train_size("Flat") == 0 and min_train_size("HNSW32") == 0
    assert min_train_size("IVF4,Flat") == 156
    assert min_train_size("IVF1024,PQ32") == 39 * 1024
    assert min_train_size("IVF16,PQ16") == 9_984
    assert min_train_size("IVF16,PQ16x4") == 624


def test_ivf_searches_exactly_until_it_can_train_then_switches(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    g = embedded_gallery(
        tmp_path,
        model_id=MODEL,
        embedding_dim=DIM,
        index_factory="IVF4,Flat",
        search_params="nprobe=4",
    )
    g.create_subject("s", "S", {})
    vecs = unit(rng, 200)
    g.add_faces("s", [face(v, str(i)) for i, v in enumerate(vecs[:100])], model_id=MODEL)
    assert g._index.faiss.active_factory == "Flat"
    assert "exact until 156" in g.stats()["index_factory"]
    g.add_faces("s", [face(v, str(i)) for i, v in enumerate(vecs[100:], 100)], model_id=MODEL)
    assert g.wait_until_indexed(timeout_s=30)  # trained beside the live index, then swapped in
    index = g._index.faiss
    assert index.active_factory == "IVF4,Flat" and g.stats()["index_factory"] == "IVF4,Flat"
    inner = index._inner()
    assert isinstance(inner, faiss.IndexIVFFlat) and inner.nprobe == 4  # all lists: exact
    assert_index_equals_store(g)
    scores, _ = index.search(vecs[150:151], 1)
    assert scores[0, 0] > 0.999
    g.close()
    again = embedded_gallery(
        tmp_path,
        model_id=MODEL,
        embedding_dim=DIM,
        index_factory="IVF4,Flat",
        search_params="nprobe=4",
    )
    loaded = again._index.faiss
    assert loaded.active_factory == "IVF4,Flat"  # loaded, not rebuilt
    assert loaded._inner().nprobe == 4
    again.close()


@pytest.mark.parametrize("factory", ["HNSW16", "IVF2,PQ32x4", "IVF4,PQ32x4fs,RFlat"])
def test_other_factories_find_the_enrolled_vectors(tmp_path: Path, factory: str) -> None:
    rng = np.random.default_rng(2)
    g = embedded_gallery(tmp_path, model_id=MODEL, embedding_dim=DIM, index_factory=factory)
    g.create_subject("s", "S", {})
    n = max(min_train_size(factory), 300)
    vecs = unit(rng, n)
    g.add_faces("s", [face(v, str(i)) for i, v in enumerate(vecs)], model_id=MODEL)
    assert g.wait_until_indexed(timeout_s=60)
    index = g._index.faiss
    assert index.active_factory == factory
    _, ids = index.search(vecs[:50], 1)
    stored, _, _ = g._store.all_embeddings()
    recall = float(np.mean(ids[:, 0] == stored[:50]))
    assert recall >= 0.9, recall
    g.close()


def test_device_copy_search_maps_positions_to_face_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With faiss-gpu the copy lives on the GPU; here a CPU clone checks our id mapping,
    including after removals (which renumber positions) and additions."""
    rng = np.random.default_rng(3)
    index = FaissIndex(DIM, "Flat")
    monkeypatch.setattr(index, "_to_device", lambda inner: faiss.clone_index(inner))
    vecs = unit(rng, 50)
    ids = np.arange(1000, 1050, dtype=np.int64)
    index.add(ids, vecs)
    expected = index.search(vecs[:10], 3)
    index.use_gpu = True
    got = index.search(vecs[:10], 3)
    np.testing.assert_array_equal(got[1], expected[1])
    index.remove([1000, 1003, 1007])
    index.add(np.array([5000], dtype=np.int64), vecs[:1])
    _, found = index.search(vecs[:10], 1)
    assert found[0, 0] == 5000 and found[3, 0] not in (1003,) and found[9, 0] == 1009
    index.use_gpu = False
    np.testing.assert_array_equal(index.search(vecs[:10], 1)[1], found)


def test_the_size_switch_keeps_every_face_searchable(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vecs = unit(rng, 260)

    def open_it() -> Gallery:
        return embedded_gallery(
            tmp_path, model_id=MODEL, embedding_dim=DIM, index_factory="HNSW16", exact_below=150
        )

    def all_found(g: Gallery, n: int) -> None:
        ids = {int(f.id): i for i, f in enumerate(g.list_faces("s"))}
        scores, found = g._index.faiss.search(vecs[:n], 1)
        assert (scores[:, 0] > 0.999).all()
        assert sorted(ids[int(f)] for f in found[:, 0]) == list(range(n))

    g = open_it()
    g.create_subject("s", "S", {})
    g.add_faces("s", [face(v, str(i)) for i, v in enumerate(vecs[:100])], model_id=MODEL)
    assert g._index.faiss.active_factory == "Flat"
    assert "exact until 150 faces, then HNSW16" in g.stats()["index_factory"]
    all_found(g, 100)
    g.add_faces("s", [face(v, str(i)) for i, v in enumerate(vecs[100:200], 100)], model_id=MODEL)
    all_found(g, 200)  # the live (exact) index answers while the HNSW is built beside it
    assert g.wait_until_indexed(timeout_s=30)
    assert g._index.faiss.active_factory == "HNSW16"
    g.add_faces("s", [face(v, str(i)) for i, v in enumerate(vecs[200:], 200)], model_id=MODEL)
    all_found(g, 260)
    assert_index_equals_store(g)
    g.close()
    again = open_it()
    assert again._index.faiss.active_factory == "HNSW16"
    all_found(again, 260)
    again.close()


def test_the_re_ranked_index_scores_on_exact_vectors_across_the_size_switch(
    tmp_path: Path,
) -> None:
    """The 1M default, ``IVF...,PQ32x4fs,RFlat``: fast-scan PQ finds candidates, the exact
    vectors it keeps re-score them. Its scores are exact cosines (not PQ's approximations), what
    it stores is the store's vectors bit for bit, and its search parameters (nprobe, k_factor_rf)
    survive a restart; exact below the switch, the factory above it, every face found."""
    rng = np.random.default_rng(6)
    factory, params = "IVF4,PQ32x4fs,RFlat", "nprobe=2,k_factor_rf=8"
    vecs = unit(rng, 900)

    def open_it() -> Gallery:
        return embedded_gallery(
            tmp_path,
            model_id=MODEL,
            embedding_dim=DIM,
            index_factory=factory,
            search_params=params,
            exact_below=700,
        )

    g = open_it()
    g.create_subject("s", "S", {})
    g.add_faces("s", [face(v, str(i)) for i, v in enumerate(vecs[:650])], model_id=MODEL)
    assert g._index.faiss.active_factory == "Flat"
    g.add_faces("s", [face(v, str(i)) for i, v in enumerate(vecs[650:800], 650)], model_id=MODEL)
    assert g.wait_until_indexed(timeout_s=60)
    g.add_faces("s", [face(v, str(i)) for i, v in enumerate(vecs[800:], 800)], model_id=MODEL)
    index = g._index.faiss
    assert index.active_factory == factory
    inner = index._inner()
    assert isinstance(inner, faiss.IndexRefineFlat) and inner.k_factor == 8
    assert faiss.extract_index_ivf(inner).nprobe == 2
    assert_index_equals_store(g)  # exact vectors, not PQ codes
    ids_by_row = {int(f.id): i for i, f in enumerate(g.list_faces("s"))}
    scores, found = index.search(vecs, 1)
    exact = np.einsum("ij,ij->i", vecs, vecs[[ids_by_row[int(f)] for f in found[:, 0]]])
    np.testing.assert_allclose(scores[:, 0], exact, atol=1e-5)  # re-scored exactly
    assert np.mean([ids_by_row[int(f)] == i for i, f in enumerate(found[:, 0])]) >= 0.99
    g.close()
    again = open_it()
    loaded = again._index.faiss
    assert loaded.active_factory == factory and loaded._inner().k_factor == 8
    again.close()
