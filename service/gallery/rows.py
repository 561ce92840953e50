"""Rows <-> records for the SQL store (SQLite and PostgreSQL share one table layout), and the
integrity of each stored embedding: a checksum written with it and a unit-norm check wherever it
is read, so a flipped byte is caught instead of matched."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from service.gallery.records import FaceRecord, Negative, NewFace, Subject

log = logging.getLogger(__name__)

CHUNK = 500  # ids per IN (...) list
PAGE = 20_000  # rows per page when every embedding is read
#: a subject and its face count, as every read of Subjects selects them (``s`` = subjects)
SUBJECT_COLUMNS = (
    "s.id, s.name, s.metadata, s.created_at, "
    "(SELECT COUNT(*) FROM faces f WHERE f.subject_id = s.id)"
)
#: the face columns every read of FaceRecords selects, in this order (then the embedding)
FACE_COLUMNS = "id, subject_id, model_id, box, det_score, image_sha256, created_at, model_sha256"
#: what a verified read of embeddings selects
VECTOR_COLUMNS = "id, subject_id, image_sha256, embedding, checksum"
#: the columns every read of Negatives selects, in this order (then the embedding)
NEGATIVE_COLUMNS = "id, subject_id, model_id, source, face_id, created_at, model_sha256"
#: what a verified read of negative embeddings selects (the VECTOR_COLUMNS layout)
NEGATIVE_VECTOR_COLUMNS = "id, subject_id, 'negative', embedding, checksum"
#: a stored embedding is a unit vector (the gallery compares by inner product = cosine)
UNIT_NORM_TOLERANCE = 1e-3
_DIGEST_MOD = 1 << 64


def checksum(subject_id: str, image_sha256: str, embedding: bytes) -> str:
    """16 hex digits of sha256 over the face's subject, image and embedding bytes: a flipped
    byte, or a row moved to another subject, no longer matches."""
    h = hashlib.sha256()
    for part in (subject_id.encode("utf-8", "surrogatepass"), image_sha256.encode()):
        h.update(part)
        h.update(b"\0")
    h.update(embedding)
    return h.hexdigest()[:16]


def digest_of(checksums: Sequence[str]) -> int:
    """The store's content digest contribution of these rows (a sum, so deletes subtract)."""
    return sum(int(c, 16) for c in checksums if c) % _DIGEST_MOD


def digest_add(digest: int, delta: int) -> int:
    """``digest`` with ``delta`` added (or subtracted, when negative), modulo 2**64."""
    return (digest + delta) % _DIGEST_MOD


def vector_problem(vector: np.ndarray) -> str | None:
    """Why a vector cannot be a stored embedding (None: it can)."""
    if not np.all(np.isfinite(vector)):
        return "not finite"
    norm = float(np.linalg.norm(vector))
    if abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
        return f"not a unit vector (norm {norm:.4g})"
    return None


def servable_metadata(raw: str) -> dict[str, Any]:
    """Stored metadata as the API can serve it: a row an older release stored that cannot be
    served (invalid text, not an object) comes back as {} rather than break a listing."""
    try:
        value = json.loads(raw)
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        log.warning("a subject's stored metadata cannot be served; answering {} for it")
        return {}
    return value if isinstance(value, dict) else {}


def subject(row: Sequence[Any]) -> Subject:
    """(id, name, metadata JSON, created_at, face count) -> Subject."""
    return Subject(row[0], row[1], servable_metadata(row[2]), row[3], int(row[4]))


def face(row: Sequence[Any]) -> FaceRecord:
    """The FACE_COLUMNS of a row -> FaceRecord."""
    return FaceRecord(
        row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6], str(row[7] or "")
    )


def face_with_embedding(row: Sequence[Any]) -> tuple[FaceRecord, np.ndarray]:
    """FACE_COLUMNS then the embedding blob -> (FaceRecord, vector)."""
    return face(row), np.frombuffer(bytes(row[8]), dtype=np.float32).copy()


def negative(row: Sequence[Any]) -> Negative:
    """The NEGATIVE_COLUMNS of a row -> Negative."""
    face_id = None if row[4] is None else int(row[4])
    return Negative(
        int(row[0]), str(row[1]), str(row[2]), row[3], face_id, float(row[5]), str(row[6] or "")
    )


def negative_checksum(subject_id: str, embedding: bytes) -> str:
    """A negative's checksum: a face's, with "negative" in place of the image hash (a flipped
    byte, or a row moved to another subject, no longer matches)."""
    return checksum(subject_id, "negative", embedding)


def subject_values(s: Subject) -> tuple[Any, ...]:
    """Values for INSERT INTO subjects(id, name, metadata, created_at)."""
    return (s.id, s.name, json.dumps(s.metadata), s.created_at)


def embedding_bytes(vector: np.ndarray, dim: int) -> bytes:
    """The stored form of an embedding; ValueError for the wrong size or a non-unit vector."""
    vec = np.ascontiguousarray(vector, dtype=np.float32)
    if vec.shape != (dim,):
        raise ValueError(f"embedding has shape {vec.shape}, expected ({dim},)")
    problem = vector_problem(vec)
    if problem is not None:
        raise ValueError(f"an embedding to store is {problem}: the gallery keeps unit vectors")
    return vec.tobytes()


def new_face_values(
    subject_id: str, new: NewFace, *, model_id: str, model_sha256: str, dim: int, now: float
) -> tuple[Any, ...]:
    """Values for INSERT INTO faces(subject_id, embedding, model_id, model_sha256, box,
    det_score, image_sha256, created_at, checksum); refuses an embedding of the wrong size or
    norm."""
    blob = embedding_bytes(new.embedding, dim)
    box = json.dumps([round(v, 2) for v in new.box])
    check = checksum(subject_id, new.image_sha256, blob)
    return (
        subject_id, blob, model_id, model_sha256, box, new.det_score, new.image_sha256, now, check
    )  # fmt: skip


def imported_face_values(f: FaceRecord, vector: np.ndarray, dim: int) -> tuple[Any, ...]:
    """Values for INSERT INTO faces(id, subject_id, embedding, model_id, model_sha256, box,
    det_score, image_sha256, created_at, checksum): a face copied as it is, id included."""
    blob = embedding_bytes(vector, dim)
    box = json.dumps(f.box)
    check = checksum(f.subject_id, f.image_sha256, blob)
    return (
        f.id, f.subject_id, blob, f.model_id, f.model_sha256, box, f.det_score, f.image_sha256,
        f.created_at, check,
    )  # fmt: skip


def verified(
    rows: Sequence[Sequence[Any]], dim: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(id, subject_id, image_sha256, embedding, checksum) rows -> (ids, (n, dim) vectors) of
    the rows that pass their checksum and the unit-norm check, and (id, reason) of the rest,
    in row order. The vector checks run on all rows at once (every identify reads a few
    hundred rows: the candidates' faces and negatives)."""
    bad: list[tuple[int, int, str]] = []  # (row, id, reason)
    kept: list[tuple[int, int]] = []  # (row, id) of the rows whose checksum holds
    blobs: list[bytes] = []
    for row, (face_id, subject_id, image_sha256, blob, stored) in enumerate(rows):
        data = bytes(blob)
        if len(data) != 4 * dim:
            bad.append((row, int(face_id), f"embedding of {len(data)} bytes, expected {4 * dim}"))
        elif checksum(str(subject_id), str(image_sha256), data) != stored:
            bad.append((row, int(face_id), "checksum mismatch"))
        else:
            kept.append((row, int(face_id)))
            blobs.append(data)
    vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim).copy()
    finite = np.asarray(np.isfinite(vecs).all(axis=1))
    norms = np.linalg.norm(np.where(finite[:, None], vecs, 0.0), axis=1)
    unit = finite & (np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE)
    for i in np.flatnonzero(~unit):
        row, face_id = kept[i]
        reason = "not finite" if not finite[i] else f"not a unit vector (norm {norms[i]:.4g})"
        bad.append((row, face_id, reason))
    ids = np.array([face_id for (_, face_id), ok in zip(kept, unit, strict=True) if ok],
                   dtype=np.int64)  # fmt: skip
    return ids, vecs[unit], [(face_id, reason) for _, face_id, reason in sorted(bad)]


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
