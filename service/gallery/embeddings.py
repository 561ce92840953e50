"""Reading embeddings from the SQL store, always verified: every read checks each row's
checksum and unit norm, and a row that fails is quarantined (kept for the operator, reported,
never returned or compared). ``SqlStore`` binds these functions as its methods of the same
names (``verified``, ``usable`` and ``forget_quarantine`` as its private helpers)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from service.gallery import rows
from service.gallery.records import Quarantined

if TYPE_CHECKING:
    from service.gallery.sql import Cursor, SqlStore

log = logging.getLogger(__name__)


def verified(store: SqlStore, found: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Verify rows of VECTOR_COLUMNS; quarantine the ones that fail and return the rest."""
    ids, vecs, bad = rows.verified(found, store.embedding_dim)
    if bad:
        store.quarantine(bad)
    return ids, vecs


def usable(store: SqlStore) -> str:
    """The faces a search may compare: not quarantined, and embedded by the gallery's own
    model (a row of another model is kept and reported, never compared). The model id is
    the gallery's own pin (a manifest's name@sha), quoted as a SQL literal."""
    model = store.model_id.replace("'", "''")
    return (
        "NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.face_id = faces.id) "
        f"AND faces.model_id = '{model}'"
    )


def embeddings_of(store: SqlStore, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(face ids, embeddings) of one subject's usable faces (verified)."""
    return store._verified(
        store._read(
            f"SELECT {rows.VECTOR_COLUMNS} FROM faces WHERE subject_id=? AND {store._usable} "
            "ORDER BY id",
            (subject_id,),
        )
    )


def embeddings_by_id(store: SqlStore, face_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(face ids, embeddings) of those ids that exist and are usable, sorted by id."""
    found: list[Any] = []
    for start in range(0, len(face_ids), rows.CHUNK):
        chunk = face_ids[start : start + rows.CHUNK]
        marks = ",".join("?" * len(chunk))
        found += store._read(
            f"SELECT {rows.VECTOR_COLUMNS} FROM faces WHERE id IN ({marks}) AND {store._usable}",
            chunk,
        )
    found.sort(key=lambda r: r[0])
    return store._verified(found)


def all_embeddings(store: SqlStore) -> tuple[np.ndarray, np.ndarray, int]:
    """Every usable (face id, embedding), verified, and the generation read before them:
    an index built from them is at least that current (writes after the read bump it)."""
    generation = store.generation()
    id_parts, vec_parts = [], []
    last = -(2**63)
    while True:
        page = store._read(
            f"SELECT {rows.VECTOR_COLUMNS} FROM faces WHERE id > ? AND {store._usable} "
            "ORDER BY id LIMIT ?",
            (last, rows.PAGE),
        )
        if not page:
            break
        ids, vecs = store._verified(page)
        id_parts.append(ids)
        vec_parts.append(vecs)
        last = int(page[-1][0])
    if not id_parts:
        return np.zeros(0, np.int64), np.zeros((0, store.embedding_dim), np.float32), generation
    return np.concatenate(id_parts), np.concatenate(vec_parts), generation


def face_ids(store: SqlStore) -> np.ndarray:
    """Every usable face id, sorted (what reconcile compares the index with)."""
    found = store._read(f"SELECT id FROM faces WHERE {store._usable} ORDER BY id")
    return np.array([r[0] for r in found], dtype=np.int64)


def owners(store: SqlStore, face_ids: list[int]) -> dict[int, tuple[str, str]]:
    """face id -> (subject id, name) for search results; deleted and quarantined faces are
    absent, so a search never returns them."""
    out: dict[int, tuple[str, str]] = {}
    for start in range(0, len(face_ids), rows.CHUNK):
        chunk = face_ids[start : start + rows.CHUNK]
        marks = ",".join("?" * len(chunk))
        for r in store._read(
            "SELECT faces.id, s.id, s.name FROM faces "
            "JOIN subjects s ON s.id = faces.subject_id "
            f"WHERE faces.id IN ({marks}) AND {store._usable}",
            chunk,
        ):
            out[int(r[0])] = (str(r[1]), str(r[2]))
    return out


# ---- quarantine


def quarantine(store: SqlStore, bad: list[tuple[int, str]]) -> None:
    """Set faces aside whose embedding failed its check; logged, reported, never matched."""
    now = time.time()
    with store._transaction() as cur:
        cur.executemany(
            store._q(
                "INSERT INTO quarantine(face_id, reason, at) VALUES (?, ?, ?) "
                "ON CONFLICT (face_id) DO NOTHING"
            ),
            [(face_id, reason, now) for face_id, reason in bad],
        )
        store._bump(cur)
    for face_id, reason in bad:
        log.error("face %d quarantined: its stored embedding is %s", face_id, reason)
    if store.on_quarantine is not None:
        store.on_quarantine([face_id for face_id, _ in bad])


def forget_quarantine(store: SqlStore, cur: Cursor, face_ids: list[int]) -> None:
    for start in range(0, len(face_ids), rows.CHUNK):
        chunk = face_ids[start : start + rows.CHUNK]
        marks = ",".join("?" * len(chunk))
        cur.execute(store._q(f"DELETE FROM quarantine WHERE face_id IN ({marks})"), chunk)


def quarantined(store: SqlStore) -> list[Quarantined]:
    """Faces set aside, oldest first."""
    found = store._read(
        "SELECT q.face_id, f.subject_id, q.reason, q.at FROM quarantine q "
        "JOIN faces f ON f.id = q.face_id ORDER BY q.face_id"
    )
    return [Quarantined(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in found]


def verify_all(store: SqlStore) -> list[Quarantined]:
    """Check every stored embedding (checksum, unit norm); quarantine the ones that fail.
    Returns the faces quarantined now and before."""
    last = -(2**63)
    while True:
        page = store._read(
            f"SELECT {rows.VECTOR_COLUMNS} FROM faces WHERE id > ? AND {store._usable} "
            "ORDER BY id LIMIT ?",
            (last, rows.PAGE),
        )
        if not page:
            break
        store._verified(page)
        last = int(page[-1][0])
    return store.quarantined()
