"""Issue 26, item 2: a gallery knows its model, per face. Every stored embedding records the
model that made it (name@sha256[:12] and the full sha256 of its weights), and a gallery compares
only the embeddings of its own model, on both backends."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from service.errors import ModelMismatch
from service.gallery import Gallery, backends
from service.gallery.sqlite import STORE_FILE
from service.settings import GallerySettings
from tests.backends import Distributed
from tests.gallery.test_gallery import DIM, MODEL, face, unit

WEIGHTS = "0" * 12 + "f" * 52  # the full sha256 of MODEL's (imaginary) weights
OTHER = "other-model@0123456789ab"


class Where:
    """One test's gallery on one backend, and raw SQL on its store (what a half-finished model
    change, or another release, could leave there)."""

    def __init__(self, settings: GallerySettings, dsn: str | None) -> None:
        self.settings = settings
        self.dsn = dsn

    def open(self) -> Gallery:
        return backends.open_gallery(
            self.settings, model_id=MODEL, embedding_dim=DIM, model_sha256=WEIGHTS
        )

    def sql(self, statement: str, *args: object) -> list[tuple[object, ...]]:
        if self.dsn is None:
            with contextlib.closing(sqlite3.connect(self.settings.path / STORE_FILE)) as conn:
                found = conn.execute(statement, args).fetchall()
                conn.commit()
                return found
        with psycopg.connect(self.dsn, autocommit=True) as pg:
            cur = pg.execute(statement.replace("?", "%s"), args)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


@pytest.fixture(params=["embedded", "distributed"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    if request.param == "embedded":
        yield Where(GallerySettings(path=tmp_path), None)
    else:
        dist: Distributed = request.getfixturevalue("distributed")
        yield Where(GallerySettings(**dist.settings()), dist.dsn)


def test_every_stored_face_records_its_model_and_weights(where: Where) -> None:
    rng = np.random.default_rng(30)
    g = where.open()
    try:
        g.create_subject("s", "S", {})
        g.add_faces("s", [face(v, f"f{i}") for i, v in enumerate(unit(rng, 2))], model_id=MODEL)
        records = g.list_faces("s")
    finally:
        g.close()
    assert [(r.model_id, r.model_sha256) for r in records] == [(MODEL, WEIGHTS)] * 2
    stored = where.sql("SELECT model_id, model_sha256 FROM faces")
    assert stored == [(MODEL, WEIGHTS)] * 2


def test_a_stored_face_of_another_model_is_never_compared(where: Where) -> None:
    """Main compared every stored vector with a probe, whatever model the face row named."""
    rng = np.random.default_rng(31)
    vecs = unit(rng, 3)
    g = where.open()
    g.create_subject("s", "S", {})
    ids = [fid for fid, _ in g.add_faces("s", [face(v, f"f{i}") for i, v in enumerate(vecs)],
                                         model_id=MODEL)]  # fmt: skip
    g.close()
    where.sql("UPDATE faces SET model_id = ? WHERE id = ?", OTHER, ids[0])
    g = where.open()
    try:
        (found,) = g.search(vecs[0][None], top_k=3, model_id=MODEL)
        assert ids[0] not in [c.face_id for c in found]
        face_ids, _ = g.subject_embeddings("s", model_id=MODEL)
        assert face_ids.tolist() == ids[1:]
        report = g.integrity()
        assert report["other_models"] == {OTHER: 1}
        assert report["index"]["consistent"]  # the index holds this model's faces only
        assert g.counts() == (1, 3)  # kept, listed, never compared
    finally:
        g.close()


def test_a_gallery_of_another_embedding_size_opens_and_refuses_to_compare(where: Where) -> None:
    """A gallery moved to a model with smaller embeddings (`gallery migrate-model` to a
    freshly trained 64-d model), opened by a service still configured for a 128-d one: the
    embedded backend built its index for the service's size and FAISS asserted on the stored
    vectors (AssertionError at start-up, the service never started, so it could not follow the
    gallery to its model). It opens at the stored size and refuses to compare (409)."""
    rng = np.random.default_rng(32)
    small = DIM // 2
    vecs = rng.standard_normal((2, small)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    g = backends.open_gallery(where.settings, model_id=OTHER, embedding_dim=small)
    try:
        g.create_subject("s", "S", {})
        g.add_faces("s", [face(v, f"f{i}") for i, v in enumerate(vecs)], model_id=OTHER)
    finally:
        g.close()
    g = where.open()
    try:
        assert (g.model_id, g.embedding_dim) == (OTHER, small)
        assert g.counts() == (1, 2)
        with pytest.raises(ModelMismatch):
            g.search(unit(rng), top_k=1, model_id=MODEL)
    finally:
        g.close()
