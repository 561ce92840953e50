"""A gallery that moves to another recognizer without re-enrolling anyone: embeddings of a
model other than a face's current one, kept in the store beside the faces.

``gallery migrate-model`` (service.model_migration) re-embeds every face with the target model
and stages the results here, a batch per transaction: a face with a staged row is done, so a
killed migration resumes where it stopped, and a staged row is never written twice (its key is
face + model). The live gallery keeps serving its current model meanwhile. The switch swaps, in
one transaction, every face's current embedding with its staged one (the current one is staged
in turn, which is what a rollback swaps back), moves the pin to the new model, and the caller
swaps in an index built from the new embeddings. Faces the target could not re-embed keep their
embedding of the old model: listed (``migration_failures``), never compared, never dropped.
Staged rows and failures are erased with their face (foreign keys, and the store's deletes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.gallery import rows
from service.gallery.records import FaceRecord
from service.gallery.sql import SqlStore

_CHUNK = 500


@dataclass(frozen=True)
class ModelPin:
    """What a gallery is pinned to: a model's id (name@sha256[:12]), full weights sha256 and
    embedding size."""

    model_id: str
    model_sha256: str
    embedding_dim: int

    def to_json(self) -> str:
        """The stored form (meta ``previous_model``)."""
        return json.dumps(
            {
                "model_id": self.model_id,
                "model_sha256": self.model_sha256,
                "embedding_dim": self.embedding_dim,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ModelPin:
        """Read the stored form back."""
        d = json.loads(text)
        return cls(str(d["model_id"]), str(d["model_sha256"]), int(d["embedding_dim"]))


class ModelStaging:
    """Where a migration keeps its work: the store's staged embeddings and failures, opened
    beside a running service (it never touches the service's index), or by the gallery's own
    switch. Close it when done."""

    def __init__(self, store: SqlStore, *, owned: bool = True) -> None:
        self._store = store
        self._owned = owned  # False: the gallery's own store, which the gallery closes

    @property
    def pin(self) -> ModelPin:
        """The model the gallery is on now."""
        s = self._store
        return ModelPin(s.model_id, s.model_sha256, s.embedding_dim)

    def close(self) -> None:
        """Release the store's connection (when it was opened for this)."""
        if self._owned:
            self._store.close()

    def to_embed(self, target: str, after_id: int, limit: int) -> list[FaceRecord]:
        """Faces, in id order after ``after_id``, that still need an embedding of model ``target``:
        not on it already, none staged. Those listed as failed are tried again (the last run
        may have lacked the service's settings or key); a success clears the listing."""
        found = self._store._read(
            f"SELECT {rows.FACE_COLUMNS} FROM faces f WHERE f.id > ? AND f.model_id <> ? "
            "AND NOT EXISTS (SELECT 1 FROM staged_embeddings s WHERE s.face_id = f.id "
            "AND s.model_id = ?) ORDER BY f.id LIMIT ?",
            (after_id, target, target, limit),
        )
        return [rows.face(r) for r in found]

    def stage(self, target: ModelPin, items: list[tuple[int, np.ndarray]]) -> int:
        """Keep embeddings of ``target`` for these faces (one transaction); a face deleted
        meanwhile is skipped, one staged already keeps its row. The rows written."""
        written = 0
        now = time.time()
        with self._store._transaction() as cur:
            for face_id, vector in items:
                face = cur.execute(
                    self._store._q("SELECT subject_id, image_sha256 FROM faces WHERE id=?"),
                    (face_id,),
                ).fetchone()
                if face is None:
                    continue
                blob = rows.embedding_bytes(vector, target.embedding_dim)
                check = rows.checksum(str(face[0]), str(face[1]), blob)
                done = cur.execute(
                    self._store._q(
                        "INSERT INTO staged_embeddings(face_id, model_id, model_sha256, embedding, "
                        "checksum, created_at) VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (face_id, model_id) DO NOTHING RETURNING face_id"
                    ),
                    (face_id, target.model_id, target.model_sha256, blob, check, now),
                ).fetchone()
                written += done is not None
                cur.execute(
                    self._store._q(
                        "DELETE FROM migration_failures WHERE face_id = ? AND model_id = ?"
                    ),
                    (face_id, target.model_id),
                )
        return written

    def record_failures(self, target: str, failures: list[tuple[int, str]]) -> None:
        """List faces model ``target`` could not re-embed, with why (a face deleted meanwhile is
        skipped)."""
        if not failures:
            return
        now = time.time()
        with self._store._transaction() as cur:
            for face_id, reason in failures:
                cur.execute(
                    self._store._q(
                        "INSERT INTO migration_failures(face_id, model_id, reason, at) "
                        "SELECT id, ?, ?, ? FROM faces WHERE id=? ON CONFLICT (face_id, model_id) "
                        "DO UPDATE SET reason = excluded.reason, at = excluded.at"
                    ),
                    (target, reason, now, face_id),
                )

    def failures(self, target: str) -> list[dict[str, Any]]:
        """The faces model ``target`` could not re-embed: face id, subject id, reason."""
        found = self._store._read(
            "SELECT m.face_id, f.subject_id, m.reason FROM migration_failures m "
            "JOIN faces f ON f.id = m.face_id WHERE m.model_id = ? ORDER BY m.face_id",
            (target,),
        )
        return [{"face_id": int(r[0]), "subject_id": str(r[1]), "reason": str(r[2])} for r in found]

    def progress(self, target: str) -> dict[str, int]:
        """How far a migration to ``target`` is: faces in all, on it already, staged, failed,
        still to do."""
        row = self._store._one(
            "SELECT (SELECT COUNT(*) FROM faces), "
            "(SELECT COUNT(*) FROM faces WHERE model_id = ?), "
            "(SELECT COUNT(*) FROM staged_embeddings s JOIN faces f ON f.id = s.face_id "
            " WHERE s.model_id = ? AND f.model_id <> ?), "
            "(SELECT COUNT(*) FROM migration_failures m JOIN faces f ON f.id = m.face_id "
            " WHERE m.model_id = ? AND f.model_id <> ?)",
            (target, target, target, target, target),
        )
        faces, on_target, staged, failed = (int(v) for v in row)
        return {
            "faces": faces,
            "on_target": on_target,
            "staged": staged,
            "failed": failed,
            "remaining": max(0, faces - on_target - staged - failed),
        }

    def previous_model(self) -> ModelPin | None:
        """The model the gallery was on before its last switch (what a rollback returns to)."""
        row = self._store._one("SELECT value FROM meta WHERE key='previous_model'")
        return ModelPin.from_json(str(row[0])) if row else None

    def staged_models(self) -> dict[str, int]:
        """model id -> staged embeddings of it (of faces that still exist)."""
        found = self._store._read(
            "SELECT s.model_id, COUNT(*) FROM staged_embeddings s JOIN faces f "
            "ON f.id = s.face_id GROUP BY s.model_id"
        )
        return {str(r[0]): int(r[1]) for r in found}


def staged_vectors(store: SqlStore, target: ModelPin) -> tuple[np.ndarray, np.ndarray]:
    """(face ids, embeddings) of what the gallery will search once switched to ``target``: the
    staged embeddings of faces not on it yet, and the faces already on it, verified; a staged
    row that fails its check is dropped and the face listed as failed."""
    staged = store._read(
        "SELECT f.id, f.subject_id, f.image_sha256, s.embedding, s.checksum "
        "FROM staged_embeddings s JOIN faces f ON f.id = s.face_id "
        "WHERE s.model_id = ? AND f.model_id <> ? ORDER BY f.id",
        (target.model_id, target.model_id),
    )
    current = store._read(
        f"SELECT {rows.VECTOR_COLUMNS} FROM faces WHERE model_id = ? ORDER BY id",
        (target.model_id,),
    )
    ids, vecs, bad = rows.verified(staged + current, target.embedding_dim)
    if bad:
        with store._transaction() as cur:
            for face_id, _ in bad:
                cur.execute(
                    store._q("DELETE FROM staged_embeddings WHERE face_id=? AND model_id=?"),
                    (face_id, target.model_id),
                )
        ModelStaging(store).record_failures(
            target.model_id, [(f, f"staged embedding {r}") for f, r in bad]
        )
    order = np.argsort(ids, kind="stable")
    return ids[order], vecs[order]


def switch(store: SqlStore, target: ModelPin) -> dict[str, int]:
    """Move the gallery to ``target`` in one transaction: every face with a staged embedding
    of it swaps that in (its current one is staged under its own model, for a rollback); the
    negatives copied from those faces follow them; the pin and the content digest change. The
    store's own pin is updated after the commit. A switch to the model the gallery is on
    (faces that failed before, re-embedded) keeps the model a rollback returns to."""
    previous = ModelPin(store.model_id, store.model_sha256, store.embedding_dim)
    keep_previous = target.model_id == store.model_id
    now = time.time()
    with store._transaction() as cur:
        # the pin's row first: a write of the old model (another replica) waits, then refuses
        cur.execute(
            store._q(f"SELECT value FROM meta WHERE key='model_id' {store._lock_clause('UPDATE')}")
        )
        moving = [
            int(r[0])
            for r in cur.execute(
                store._q(
                    "SELECT f.id FROM faces f JOIN staged_embeddings s ON s.face_id = f.id "
                    "WHERE s.model_id = ? AND f.model_id <> ? ORDER BY f.id"
                ),
                (target.model_id, target.model_id),
            ).fetchall()
        ]
        before = rows.digest_of(
            [r[0] for r in cur.execute("SELECT checksum FROM faces").fetchall()]
        )
        for start in range(0, len(moving), _CHUNK):
            chunk = moving[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            cur.execute(
                store._q(
                    "INSERT INTO staged_embeddings(face_id, model_id, model_sha256, embedding, "
                    f"checksum, created_at) SELECT id, model_id, model_sha256, embedding, "
                    f"checksum, ? FROM faces WHERE id IN ({marks}) "
                    "ON CONFLICT (face_id, model_id) DO UPDATE SET "
                    "model_sha256 = excluded.model_sha256, embedding = excluded.embedding, "
                    "checksum = excluded.checksum, created_at = excluded.created_at"
                ),
                (now, *chunk),
            )
            cur.execute(
                store._q(
                    "UPDATE faces SET "
                    "embedding = (SELECT s.embedding FROM staged_embeddings s "
                    "WHERE s.face_id = faces.id AND s.model_id = ?), "
                    "checksum = (SELECT s.checksum FROM staged_embeddings s "
                    "WHERE s.face_id = faces.id AND s.model_id = ?), "
                    f"model_id = ?, model_sha256 = ? WHERE id IN ({marks})"
                ),
                (target.model_id, target.model_id, target.model_id, target.model_sha256, *chunk),
            )
            cur.execute(
                store._q(
                    f"DELETE FROM staged_embeddings WHERE model_id = ? AND face_id IN ({marks})"
                ),
                (target.model_id, *chunk),
            )
        _follow_faces(store, cur, target)
        after = rows.digest_of([r[0] for r in cur.execute("SELECT checksum FROM faces").fetchall()])
        store._digest_change(cur, after - before)
        pins = [
            ("model_id", target.model_id),
            ("embedding_dim", str(target.embedding_dim)),
            ("model_sha256", target.model_sha256),
        ]
        if not keep_previous:
            pins += [("previous_model", previous.to_json()), ("switched_at", repr(now))]
        for key, value in pins:
            cur.execute(
                store._q(
                    "INSERT INTO meta(key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ),
                (key, value),
            )
        store._bump(cur)
    store.model_id = target.model_id
    store.model_sha256 = target.model_sha256
    store.embedding_dim = target.embedding_dim
    return {"switched": len(moving)}


def _follow_faces(store: SqlStore, cur: Any, target: ModelPin) -> None:
    """A negative copied from a gallery face takes that face's embedding of ``target`` (a
    probe's negative cannot be re-embedded: it stays with its model, never compared)."""
    found = cur.execute(
        store._q(
            "SELECT n.id, n.subject_id, f.embedding FROM negatives n JOIN faces f "
            "ON f.id = n.face_id WHERE n.source = 'face' AND f.model_id = ? "
            "AND n.model_id <> ?"
        ),
        (target.model_id, target.model_id),
    ).fetchall()
    for negative_id, subject_id, blob in found:
        data = bytes(blob)
        cur.execute(
            store._q(
                "UPDATE negatives SET embedding=?, checksum=?, model_id=?, model_sha256=? "
                "WHERE id=?"
            ),
            (
                data,
                rows.negative_checksum(str(subject_id), data),
                target.model_id,
                target.model_sha256,
                negative_id,
            ),
        )


def purge(store: SqlStore) -> int:
    """Erase every staged embedding and failure record (a rollback is no longer possible, a
    migration in progress starts over); the embeddings erased."""
    with store._transaction() as cur:
        n = cur.execute("SELECT COUNT(*) FROM staged_embeddings").fetchone()[0]
        cur.execute("DELETE FROM staged_embeddings")
        cur.execute("DELETE FROM migration_failures")
        store._bump(cur)
    return int(n)
