"""Negative examples ("not this person") in the gallery, on both backends: stored per subject
and bounded, copied from a gallery face, compared only within their model, erased with the
subject (and with the face they were copied from), exported, imported and migrated with the
gallery."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import (
    FaceNotFound,
    InvalidRequest,
    NegativeNotFound,
    SubjectNotFound,
    TooManyNegatives,
)
from service.gallery import Gallery, export_store, import_store
from service.gallery import gallery as gallery_module
from service.gallery.embedded import embedded_gallery
from service.gallery.transfer import copy_gallery
from tests.gallery.test_gallery import DIM, MODEL, Opener, face, opener, unit  # noqa: F401

STORE_FILE = "gallery.sqlite3"


def stored_negatives(g: Gallery) -> list[Any]:
    """Every negatives row in the store, read with SQL (what erasure must leave empty)."""
    store = g._store
    return list(store._read("SELECT id, subject_id, face_id FROM negatives"))


def two_subjects(g: Gallery, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Subjects a and b with two faces each; their vectors and b's face ids."""
    vecs = unit(rng, 4)
    g.create_subject("a", "A", {})
    g.create_subject("b", "B", {})
    g.add_faces("a", [face(vecs[0], "a0"), face(vecs[1], "a1")], model_id=MODEL)
    b_ids = [fid for fid, _ in g.add_faces("b", [face(vecs[2], "b0"), face(vecs[3], "b1")],
                                           model_id=MODEL)]  # fmt: skip
    return vecs, b_ids


def test_negatives_are_kept_listed_compared_and_erased_with_the_subject(
    opener: Opener,  # noqa: F811
) -> None:
    rng = np.random.default_rng(30)
    g = opener()
    vecs, b_ids = two_subjects(g, rng)
    probe = unit(rng)[0]
    n1, created = g.add_negative("a", probe, model_id=MODEL, source="probe")
    assert created and n1.source == "probe" and n1.face_id is None and n1.model_id == MODEL
    n2, created = g.add_negative("a", model_id=MODEL, source="face", face_id=b_ids[0])
    assert created and n2.face_id == b_ids[0]
    again, created = g.add_negative("a", model_id=MODEL, source="face", face_id=b_ids[0])
    assert not created and again.id == n2.id  # one face is one negative
    assert [n.id for n in g.list_negatives("a")] == [n1.id, n2.id]
    found = g.negatives_of(["a", "b"], model_id=MODEL)
    assert set(found) == {"a"}  # b has none
    np.testing.assert_allclose(found["a"], np.stack([probe, vecs[2]]), atol=1e-6)
    # a face of the subject itself is deleted, not marked; unknown faces and subjects refused
    own = g.list_faces("a")[0].id
    with pytest.raises(InvalidRequest):
        g.add_negative("a", model_id=MODEL, source="face", face_id=own)
    with pytest.raises(FaceNotFound):
        g.add_negative("a", model_id=MODEL, source="face", face_id=10**9)
    with pytest.raises(SubjectNotFound):
        g.add_negative("nobody", probe, model_id=MODEL, source="probe")
    with pytest.raises(NegativeNotFound):
        g.delete_negative("b", n1.id)  # a's negative, asked of b
    # erasing a subject erases its negatives, rows and all
    g.delete_subject("a")
    assert stored_negatives(g) == []
    with pytest.raises(SubjectNotFound):
        g.list_negatives("a")


def test_a_negative_copied_from_a_face_is_erased_with_that_face_and_its_subject(
    opener: Opener,  # noqa: F811
) -> None:
    """A negative of a that is a copy of b's face is b's biometric data: it goes when the face
    goes, and when b is erased."""
    rng = np.random.default_rng(31)
    g = opener()
    _, b_ids = two_subjects(g, rng)
    g.add_negative("a", model_id=MODEL, source="face", face_id=b_ids[0])
    g.add_negative("a", model_id=MODEL, source="face", face_id=b_ids[1])
    kept, _ = g.add_negative("a", unit(rng)[0], model_id=MODEL, source="probe")
    g.delete_face(b_ids[0])
    assert sorted(r[2] or 0 for r in stored_negatives(g)) == [0, b_ids[1]]
    g.delete_subject("b")
    assert [(int(r[0]), r[1]) for r in stored_negatives(g)] == [(kept.id, "a")]
    g.delete_negative("a", kept.id)
    assert stored_negatives(g) == []
    assert len(g.negatives_of(["a"], model_id=MODEL)) == 0


def test_negatives_per_subject_are_bounded(
    opener: Opener,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gallery_module, "NEGATIVES_PER_SUBJECT", 3)
    rng = np.random.default_rng(32)
    g = opener()
    g.create_subject("a", "A", {})
    g.create_subject("b", "B", {})
    for v in unit(rng, 3):
        g.add_negative("a", v, model_id=MODEL, source="probe")
    with pytest.raises(TooManyNegatives) as refused:
        g.add_negative("a", unit(rng)[0], model_id=MODEL, source="probe")
    assert refused.value.status == 409 and refused.value.details["limit"] == 3
    assert len(g.list_negatives("a")) == 3  # nothing of the refused one kept
    g.add_negative("b", unit(rng)[0], model_id=MODEL, source="probe")  # per subject
    g.delete_negative("a", g.list_negatives("a")[0].id)
    g.add_negative("a", unit(rng)[0], model_id=MODEL, source="probe")  # room again


def test_negatives_of_another_model_are_never_compared(opener: Opener) -> None:  # noqa: F811
    """A negative stored with another model's embedding (or other weights of the same name) is
    kept and listed, but never given to the veto."""
    rng = np.random.default_rng(33)
    g = opener()
    g.create_subject("a", "A", {})
    other, _ = g.add_negative("a", unit(rng)[0], model_id=MODEL, source="probe")
    same, _ = g.add_negative("a", unit(rng)[0], model_id=MODEL, source="probe")
    store = g._store
    with store._transaction() as cur:
        cur.execute(store._q("UPDATE negatives SET model_id=? WHERE id=?"),
                    ("other-model@111111111111", other.id))  # fmt: skip
    assert len(g.negatives_of(["a"], model_id=MODEL)["a"]) == 1
    store.model_sha256 = "f" * 64  # the gallery's weights are now known ...
    with store._transaction() as cur:  # ... and this row was made by other weights
        cur.execute(store._q("UPDATE negatives SET model_sha256=? WHERE id=?"),
                    ("0" * 64, same.id))  # fmt: skip
    assert g.negatives_of(["a"], model_id=MODEL) == {}
    assert len(g.list_negatives("a")) == 2


def test_migrating_a_gallery_copies_its_negatives(
    tmp_path: Path,
    opener: Opener,  # noqa: F811
) -> None:
    rng = np.random.default_rng(34)
    source = embedded_gallery(tmp_path / "source", model_id=MODEL, embedding_dim=DIM)
    vecs, b_ids = two_subjects(source, rng)
    probe = unit(rng)[0]
    source.add_negative("a", probe, model_id=MODEL, source="probe")
    source.add_negative("a", model_id=MODEL, source="face", face_id=b_ids[1])
    target = opener()
    report = copy_gallery(source, target)
    assert report["negatives"] == 2
    copied = target.list_negatives("a")
    assert [(n.source, n.face_id) for n in copied] == [("probe", None), ("face", b_ids[1])]
    np.testing.assert_allclose(
        target.negatives_of(["a"], model_id=MODEL)["a"], np.stack([probe, vecs[3]]), atol=1e-6
    )
    source.close()


def test_negatives_are_exported_and_imported_and_old_exports_still_import(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(35)
    g = embedded_gallery(tmp_path / "g", model_id=MODEL, embedding_dim=DIM)
    _, b_ids = two_subjects(g, rng)
    probe = unit(rng)[0]
    g.add_negative("a", probe, model_id=MODEL, source="probe")
    g.add_negative("a", model_id=MODEL, source="face", face_id=b_ids[0])
    export_store(tmp_path / "g", tmp_path / "backup.sqlite3")
    g.close()
    import_store(tmp_path / "backup.sqlite3", tmp_path / "restored")
    restored = embedded_gallery(tmp_path / "restored", model_id=MODEL, embedding_dim=DIM)
    assert [(n.source, n.face_id) for n in restored.list_negatives("a")] == [
        ("probe", None), ("face", b_ids[0])
    ]  # fmt: skip
    np.testing.assert_allclose(restored.negatives_of(["a"], model_id=MODEL)["a"][0], probe,
                               atol=1e-6)  # fmt: skip
    restored.close()
    # an export of the release before negatives (schema 3: no such table) imports and upgrades
    old = tmp_path / "old.sqlite3"
    old.write_bytes((tmp_path / "backup.sqlite3").read_bytes())
    with sqlite3.connect(old) as conn:
        conn.execute("DROP TABLE negatives")
        conn.execute("DROP TABLE staged_embeddings")  # schema 5: not there in 3 either
        conn.execute("DROP TABLE migration_failures")
        conn.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    import_store(old, tmp_path / "from-old")
    upgraded = embedded_gallery(tmp_path / "from-old", model_id=MODEL, embedding_dim=DIM)
    assert upgraded.counts() == (2, 4) and upgraded.list_negatives("a") == []
    upgraded.add_negative("a", probe, model_id=MODEL, source="probe")
    assert len(upgraded.negatives_of(["a"], model_id=MODEL)["a"]) == 1
    upgraded.close()


def test_a_verified_read_reports_each_bad_row_with_its_reason_in_row_order() -> None:
    """The vector checks of ``rows.verified`` run on all rows at once (every identify reads its
    candidates' faces and negatives through it): the same rows pass and fail, for the same
    reasons, as when each row was checked on its own."""
    from service.gallery import rows

    good = (np.ones(4, np.float32) / 2).tobytes()
    long = (np.ones(4, np.float32)).tobytes()  # norm 2
    nan = np.array([np.nan, 0, 0, 1], np.float32).tobytes()
    found = [
        (1, "s", "a", good, rows.checksum("s", "a", good)),
        (2, "s", "b", long, rows.checksum("s", "b", long)),
        (3, "s", "c", good, "0" * 16),
        (4, "s", "d", nan, rows.checksum("s", "d", nan)),
        (5, "s", "e", b"12", ""),
        (6, "t", "f", good, rows.checksum("t", "f", good)),
    ]
    ids, vectors, bad = rows.verified(found, 4)
    assert ids.tolist() == [1, 6] and vectors.shape == (2, 4)
    assert bad == [
        (2, "not a unit vector (norm 2)"),
        (3, "checksum mismatch"),
        (4, "not finite"),
        (5, "embedding of 2 bytes, expected 16"),
    ]
    empty_ids, empty, none = rows.verified([], 4)
    assert len(empty_ids) == 0 and empty.shape == (0, 4) and none == []
