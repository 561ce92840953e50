"""Every row of the SQL store in pages, and rows inserted as they are (ids, creation times and
embeddings kept): what copying a gallery between backends reads and writes. ``SqlStore``
binds these functions as its methods of the same names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from service.gallery import rows
from service.gallery.records import FaceRecord, Negative, Subject

if TYPE_CHECKING:
    from service.gallery.sql import SqlStore


def iter_subjects(store: SqlStore, batch: int) -> Iterator[list[Subject]]:
    """Every subject (face counts included), a page at a time."""
    return rows.subject_pages(store.list_subjects, batch)


def iter_faces(store: SqlStore, batch: int) -> Iterator[list[tuple[FaceRecord, np.ndarray]]]:
    """Every face with its embedding, in id order (keyset pages: stable under writes)."""
    last = -(2**63)
    while True:
        found = store._read(
            f"SELECT {rows.FACE_COLUMNS}, embedding FROM faces WHERE id > ? ORDER BY id LIMIT ?",
            (last, batch),
        )
        if not found:
            return
        yield [rows.face_with_embedding(r) for r in found]
        last = int(found[-1][0])


def iter_negatives(store: SqlStore, batch: int) -> Iterator[list[tuple[Negative, np.ndarray]]]:
    """Every negative example with its embedding, in id order, in pages."""
    last = -(2**63)
    while True:
        found = store._read(
            f"SELECT {rows.NEGATIVE_COLUMNS}, embedding FROM negatives "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (last, batch),
        )
        if not found:
            return
        yield [
            (rows.negative(r), np.frombuffer(bytes(r[7]), dtype=np.float32).copy()) for r in found
        ]
        last = int(found[-1][0])


def import_negatives(store: SqlStore, negatives: list[tuple[Negative, np.ndarray]]) -> None:
    """Insert negative examples as they are (new ids; subjects and faces copied first)."""
    values = []
    for n, vector in negatives:
        blob = rows.embedding_bytes(vector, store.embedding_dim)
        values.append(
            (n.subject_id, n.model_id, n.model_sha256, blob,
             rows.negative_checksum(n.subject_id, blob), n.source, n.face_id, n.created_at)
        )  # fmt: skip
    with store._transaction() as cur:
        cur.executemany(
            store._q(
                "INSERT INTO negatives(subject_id, model_id, model_sha256, embedding, "
                "checksum, source, face_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            values,
        )


def import_subjects(store: SqlStore, subjects: list[Subject]) -> None:
    """Insert subjects as they are (ids and creation times kept)."""
    with store._transaction() as cur:
        cur.executemany(
            store._q("INSERT INTO subjects(id, name, metadata, created_at) VALUES (?, ?, ?, ?)"),
            [rows.subject_values(s) for s in subjects],
        )
        store._bump(cur)


def import_faces(store: SqlStore, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
    """Insert faces as they are (face ids kept, so both backends answer alike)."""
    values = [rows.imported_face_values(f, v, store.embedding_dim) for f, v in faces]
    with store._transaction() as cur:
        cur.executemany(
            store._q(
                "INSERT INTO faces(id, subject_id, embedding, model_id, model_sha256, box, "
                "det_score, image_sha256, created_at, checksum) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            values,
        )
        store._after_import(cur)
        store._digest_change(cur, rows.digest_of([v[-1] for v in values]))
        store._bump(cur)
