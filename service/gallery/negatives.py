"""Negative examples ("not this person") in the SQL store: a subject's embeddings of faces
that are not that person, which identify's veto reads (never indexed). ``SqlStore`` binds
these functions as its methods of the same names."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from service.errors import FaceNotFound, InvalidRequest, NegativeNotFound, TooManyNegatives
from service.gallery import rows
from service.gallery.records import Negative, NegativeSource

if TYPE_CHECKING:
    from service.gallery.sql import Cursor, SqlStore

log = logging.getLogger(__name__)


def add_negative(
    store: SqlStore,
    subject_id: str,
    embedding: np.ndarray | None,
    *,
    source: NegativeSource,
    face_id: int | None,
    limit: int,
) -> tuple[Negative, bool]:
    """Store a negative example of a subject: ``embedding`` (a probe's, or a cluster job
    face's), or, when it is None, a copy of gallery face ``face_id``'s stored embedding
    (verified; with that face's model). A face already stored as a negative of this
    subject comes back with created=False. SubjectNotFound, FaceNotFound, InvalidRequest
    (a face of the subject itself), TooManyNegatives (``limit`` per subject)."""
    now = time.time()
    model_id, model_sha256 = store.model_id, store.model_sha256
    with store._transaction() as cur:
        store.check_pin(cur)
        store._lock_subject(cur, subject_id, "UPDATE")  # one count-then-insert at a time
        if face_id is not None:
            existing = cur.execute(
                store._q(
                    f"SELECT {rows.NEGATIVE_COLUMNS} FROM negatives "
                    "WHERE subject_id=? AND face_id=?"
                ),
                (subject_id, face_id),
            ).fetchone()
            if existing is not None:
                return rows.negative(existing), False
        count = cur.execute(
            store._q("SELECT COUNT(*) FROM negatives WHERE subject_id=?"), (subject_id,)
        ).fetchone()[0]
        if int(count) >= limit:
            raise TooManyNegatives(
                f"subject {subject_id!r} holds {count} negative examples, the most it may; "
                "delete some (DELETE /v1/subjects/{id}/negatives/{negative_id}) first",
                subject_id=subject_id,
                limit=limit,
            )
        if embedding is None:
            assert face_id is not None
            blob, model_id, model_sha256 = _face_to_copy(store, cur, subject_id, face_id)
        else:
            blob = rows.embedding_bytes(embedding, store.embedding_dim)
        row = cur.execute(
            store._q(
                "INSERT INTO negatives(subject_id, model_id, model_sha256, embedding, "
                "checksum, source, face_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id"
            ),
            (subject_id, model_id, model_sha256, blob,
             rows.negative_checksum(subject_id, blob), source, face_id, now),
        ).fetchone()  # fmt: skip
    negative = Negative(int(row[0]), subject_id, model_id, source, face_id, now, model_sha256)
    return negative, True


def _face_to_copy(
    store: SqlStore, cur: Cursor, subject_id: str, face_id: int
) -> tuple[bytes, str, str]:
    """(embedding, model id, model sha256) of a gallery face to keep as a negative of
    another subject, verified; FaceNotFound, InvalidRequest."""
    if not -(2**63) <= face_id < 2**63:
        raise FaceNotFound(f"no face with id {face_id}")
    found = cur.execute(
        store._q(
            f"SELECT {rows.VECTOR_COLUMNS}, model_id, model_sha256 FROM faces "
            f"WHERE id=? {store._lock_clause('SHARE')}"
        ),
        (face_id,),
    ).fetchone()
    if found is None:
        raise FaceNotFound(f"no face with id {face_id}")
    if str(found[1]) == subject_id:
        raise InvalidRequest(
            f"face {face_id} is enrolled as {subject_id!r}: to say it is not that person, "
            f"delete it (DELETE /v1/faces/{face_id})"
        )
    _, _, bad = rows.verified([found[:5]], store.embedding_dim)
    if bad:
        raise FaceNotFound(f"face {face_id} is quarantined ({bad[0][1]}): it is not copied")
    return bytes(found[3]), str(found[5]), str(found[6] or "")


def list_negatives(store: SqlStore, subject_id: str) -> list[Negative]:
    """The negative examples of a subject, oldest first (no embeddings); SubjectNotFound."""
    store.get_subject(subject_id)
    found = store._read(
        f"SELECT {rows.NEGATIVE_COLUMNS} FROM negatives WHERE subject_id=? ORDER BY id",
        (subject_id,),
    )
    return [rows.negative(r) for r in found]


def delete_negative(store: SqlStore, subject_id: str, negative_id: int) -> None:
    """Erase one negative example of a subject; NegativeNotFound."""
    if not -(2**63) <= negative_id < 2**63:
        raise NegativeNotFound(f"subject {subject_id!r} has no negative {negative_id}")
    with store._transaction() as cur:
        row = cur.execute(
            store._q("DELETE FROM negatives WHERE id=? AND subject_id=? RETURNING id"),
            (negative_id, subject_id),
        ).fetchone()
        if row is None:
            raise NegativeNotFound(f"subject {subject_id!r} has no negative {negative_id}")


def negatives_of(store: SqlStore, subject_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """subject id -> (n, dim) embeddings of its negatives of the gallery's own model (a
    row of another model, or of other weights, is never compared), verified (a row that
    fails is logged and left out), for the subjects that have any: one query per 500."""
    ids = sorted(set(subject_ids))
    model = (store.model_id, store.model_sha256)
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(ids), rows.CHUNK):
        chunk = ids[start : start + rows.CHUNK]
        marks = ",".join("?" * len(chunk))
        found = store._read(
            f"SELECT {rows.NEGATIVE_VECTOR_COLUMNS} FROM negatives "
            f"WHERE subject_id IN ({marks}) AND model_id=? "
            "AND (model_sha256='' OR ?='' OR model_sha256=?) ORDER BY id",
            [*chunk, model[0], model[1], model[1]],
        )
        _, vectors, bad = rows.verified(found, store.embedding_dim)
        for negative_id, reason in bad:
            log.error("negative %d is not compared: its stored embedding is %s",
                      negative_id, reason)  # fmt: skip
        bad_ids = {b for b, _ in bad}
        good = [r for r in found if int(r[0]) not in bad_ids]
        for r, vector in zip(good, vectors, strict=True):
            out.setdefault(str(r[1]), []).append(vector)
    return {sid: np.stack(vs) for sid, vs in out.items()}
