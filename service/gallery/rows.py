"""Rows <-> records for the two SQL stores (SQLite and PostgreSQL share one table layout), so
the stores differ only in their SQL dialect and transactions."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from service.gallery.records import FaceRecord, NewFace, Subject

#: a subject and its face count, as every read of Subjects selects them (``s`` = subjects)
SUBJECT_COLUMNS = (
    "s.id, s.name, s.metadata, s.created_at, "
    "(SELECT COUNT(*) FROM faces f WHERE f.subject_id = s.id)"
)
#: the face columns every read of FaceRecords selects, in this order (then the embedding)
FACE_COLUMNS = "id, subject_id, model_id, box, det_score, image_sha256, created_at"


def subject(row: Sequence[Any]) -> Subject:
    """(id, name, metadata JSON, created_at, face count) -> Subject."""
    return Subject(row[0], row[1], json.loads(row[2]), row[3], int(row[4]))


def face(row: Sequence[Any]) -> FaceRecord:
    """The FACE_COLUMNS of a row -> FaceRecord."""
    return FaceRecord(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])


def face_with_embedding(row: Sequence[Any]) -> tuple[FaceRecord, np.ndarray]:
    """FACE_COLUMNS then the embedding blob -> (FaceRecord, vector)."""
    return face(row), np.frombuffer(bytes(row[7]), dtype=np.float32).copy()


def subject_values(s: Subject) -> tuple[Any, ...]:
    """Values for INSERT INTO subjects(id, name, metadata, created_at)."""
    return (s.id, s.name, json.dumps(s.metadata), s.created_at)


def new_face_values(
    subject_id: str, new: NewFace, *, model_id: str, dim: int, now: float
) -> tuple[Any, ...]:
    """Values for INSERT INTO faces(subject_id, embedding, model_id, box, det_score,
    image_sha256, created_at); refuses an embedding of the wrong size."""
    vec = np.ascontiguousarray(new.embedding, dtype=np.float32)
    if vec.shape != (dim,):
        raise ValueError(f"embedding has shape {vec.shape}, expected ({dim},)")
    box = json.dumps([round(v, 2) for v in new.box])
    return (subject_id, vec.tobytes(), model_id, box, new.det_score, new.image_sha256, now)


def imported_face_values(f: FaceRecord, vector: np.ndarray) -> tuple[Any, ...]:
    """Values for INSERT INTO faces(id, subject_id, embedding, model_id, box, det_score,
    image_sha256, created_at): a face copied as it is, id included."""
    blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
    box = json.dumps(f.box)
    return (f.id, f.subject_id, blob, f.model_id, box, f.det_score, f.image_sha256, f.created_at)


def unpack(rows: Sequence[Sequence[Any]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(id, embedding blob) rows -> (ids, (n, dim) float32 vectors)."""
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, dim), dtype=np.float32)
    vecs = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype=np.float32)
    return ids, vecs.reshape(len(rows), dim).copy()


def subject_pages(
    list_subjects: Callable[[int, int], tuple[list[Subject], int]], batch: int
) -> Iterator[list[Subject]]:
    """Every subject, a page at a time, from a store's list_subjects(offset, limit)."""
    offset = 0
    while True:
        page, _ = list_subjects(offset, batch)
        if not page:
            return
        yield page
        offset += len(page)
