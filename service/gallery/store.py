"""The embedded backend's store: SQLite (WAL) holding subjects and faces, the source of truth.

Every write bumps a ``generation`` counter in the same transaction; the FAISS index records the
generation it reflects, so a stale or missing index is detected and rebuilt from here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import (
    FaceNotFound,
    GalleryCorrupted,
    ModelMismatch,
    SubjectExists,
    SubjectNotFound,
)
from service.gallery import rows
from service.gallery.records import FaceRecord, NewFace, Subject

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    model_id TEXT NOT NULL,
    box TEXT NOT NULL,
    det_score REAL NOT NULL,
    image_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (subject_id, image_sha256)
);
CREATE INDEX IF NOT EXISTS faces_subject ON faces(subject_id);
"""


class SqliteStore:
    """SQLite store; one connection guarded by a lock (the gallery serialises writes anyway)."""

    def __init__(self, path: Path, *, model_id: str, embedding_dim: int) -> None:
        self.path = path
        self.embedding_dim = embedding_dim
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=30.0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            # erasure: deleted rows are overwritten with zeros, not left in free pages
            self._conn.execute("PRAGMA secure_delete=ON")
            check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise GalleryCorrupted(
                f"the gallery store {path} cannot be read ({exc}); it is left untouched. "
                "Restore it from a backup (marginface gallery import) or move it aside."
            ) from exc
        self.model_id = self._pin_model(model_id, embedding_dim)

    def _pin_model(self, model_id: str, embedding_dim: int) -> str:
        """Record the gallery's model on first use; afterwards, keep the recorded one."""
        with self.transaction() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key='model_id'").fetchone()
            if row is None:
                cur.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [
                        ("model_id", model_id),
                        ("embedding_dim", str(embedding_dim)),
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("generation", "0"),
                    ],
                )
                return model_id
            return str(row[0])

    def check_model(self, model_id: str) -> None:
        """Raise ModelMismatch unless embeddings of ``model_id`` belong in this gallery."""
        if model_id != self.model_id:
            raise ModelMismatch(
                f"this gallery holds embeddings of {self.model_id}; the service runs {model_id}. "
                "Embeddings of different models are not comparable: use a new gallery path or "
                "re-enroll with the gallery's model.",
                gallery_model=self.model_id,
                service_model=model_id,
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """An immediate (write-locking) transaction that commits or rolls back as a whole."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")

    @staticmethod
    def _bump(cur: sqlite3.Cursor) -> None:
        cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")

    def generation(self) -> int:
        """The write counter; the index is current when it records the same number."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0])

    # ---- subjects

    def create_subject(self, subject_id: str, name: str, metadata: dict[str, Any]) -> Subject:
        """Insert a subject; raises SubjectExists if the id is taken."""
        now = time.time()
        with self.transaction() as cur:
            try:
                cur.execute(
                    "INSERT INTO subjects(id, name, metadata, created_at) VALUES (?, ?, ?, ?)",
                    (subject_id, name, json.dumps(metadata), now),
                )
            except sqlite3.IntegrityError as exc:
                raise SubjectExists(f"subject {subject_id!r} already exists") from exc
            self._bump(cur)
        return Subject(subject_id, name, metadata, now, 0)

    def get_subject(self, subject_id: str) -> Subject:
        """The subject with its face count; raises SubjectNotFound."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {rows.SUBJECT_COLUMNS} FROM subjects s WHERE s.id = ?",
                (subject_id,),
            ).fetchone()
        if row is None:
            raise SubjectNotFound(f"no subject with id {subject_id!r}")
        return rows.subject(row)

    def list_subjects(
        self, offset: int, limit: int, search: str | None = None
    ) -> tuple[list[Subject], int]:
        """A page of subjects ordered by creation, and the total count."""
        where, args = "", []
        if search:
            where = "WHERE s.id LIKE ? ESCAPE '\\' OR s.name LIKE ? ESCAPE '\\'"
            pattern = (
                "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
            args = [pattern, pattern]
        with self._lock:
            total = self._conn.execute(f"SELECT COUNT(*) FROM subjects s {where}", args).fetchone()[
                0
            ]
            found = self._conn.execute(
                f"SELECT {rows.SUBJECT_COLUMNS} FROM subjects s {where} "
                f"ORDER BY s.created_at, s.id LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [rows.subject(r) for r in found], int(total)

    def update_subject(
        self, subject_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Subject:
        """Change a subject's name and/or metadata; raises SubjectNotFound."""
        with self.transaction() as cur:
            if cur.execute("SELECT 1 FROM subjects WHERE id=?", (subject_id,)).fetchone() is None:
                raise SubjectNotFound(f"no subject with id {subject_id!r}")
            if name is not None:
                cur.execute("UPDATE subjects SET name=? WHERE id=?", (name, subject_id))
            if metadata is not None:
                cur.execute(
                    "UPDATE subjects SET metadata=? WHERE id=?", (json.dumps(metadata), subject_id)
                )
            self._bump(cur)
        return self.get_subject(subject_id)

    def delete_subject(self, subject_id: str) -> list[int]:
        """Delete a subject and its faces; returns the deleted face ids. Raises SubjectNotFound."""
        with self.transaction() as cur:
            if cur.execute("SELECT 1 FROM subjects WHERE id=?", (subject_id,)).fetchone() is None:
                raise SubjectNotFound(f"no subject with id {subject_id!r}")
            ids = [
                r[0] for r in cur.execute("SELECT id FROM faces WHERE subject_id=?", (subject_id,))
            ]
            cur.execute("DELETE FROM faces WHERE subject_id=?", (subject_id,))
            cur.execute("DELETE FROM subjects WHERE id=?", (subject_id,))
            self._bump(cur)
        return ids

    # ---- faces

    def add_faces(
        self, subject_id: str, faces: list[NewFace], *, create_name: str | None = None
    ) -> list[tuple[int, bool]]:
        """Insert faces in one transaction; returns (face id, created) per face.

        A face whose image sha256 is already enrolled for this subject is not added again: its
        existing id comes back with created=False. With ``create_name`` the subject is created
        when missing (batch indexing); otherwise a missing subject raises SubjectNotFound.
        """
        now = time.time()
        results: list[tuple[int, bool]] = []
        with self.transaction() as cur:
            exists = cur.execute("SELECT 1 FROM subjects WHERE id=?", (subject_id,)).fetchone()
            if exists is None:
                if create_name is None:
                    raise SubjectNotFound(f"no subject with id {subject_id!r}")
                cur.execute(
                    "INSERT INTO subjects(id, name, metadata, created_at) VALUES (?, ?, '{}', ?)",
                    (subject_id, create_name, now),
                )
            for face in faces:
                row = cur.execute(
                    "SELECT id FROM faces WHERE subject_id=? AND image_sha256=?",
                    (subject_id, face.image_sha256),
                ).fetchone()
                if row is not None:
                    results.append((int(row[0]), False))
                    continue
                cur.execute(
                    "INSERT INTO faces(subject_id, embedding, model_id, box, det_score, "
                    "image_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows.new_face_values(
                        subject_id, face, model_id=self.model_id, dim=self.embedding_dim, now=now
                    ),
                )
                results.append((int(cur.lastrowid or 0), True))
            self._bump(cur)
        return results

    def add_faces_many(self, items: list[tuple[str, NewFace]]) -> list[tuple[str, int, bool]]:
        """Batch indexing: faces of many subjects in one transaction, subjects created as needed.

        A new subject is named after its id. Returns (subject id, face id, created) per item;
        an image already enrolled for its subject comes back with created=False.
        """
        now = time.time()
        out: list[tuple[str, int, bool]] = []
        with self.transaction() as cur:
            for subject_id, face in items:
                cur.execute(
                    "INSERT OR IGNORE INTO subjects(id, name, metadata, created_at) "
                    "VALUES (?, ?, '{}', ?)",
                    (subject_id, subject_id, now),
                )
                row = cur.execute(
                    "SELECT id FROM faces WHERE subject_id=? AND image_sha256=?",
                    (subject_id, face.image_sha256),
                ).fetchone()
                if row is not None:
                    out.append((subject_id, int(row[0]), False))
                    continue
                cur.execute(
                    "INSERT INTO faces(subject_id, embedding, model_id, box, det_score, "
                    "image_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows.new_face_values(
                        subject_id, face, model_id=self.model_id, dim=self.embedding_dim, now=now
                    ),
                )
                out.append((subject_id, int(cur.lastrowid or 0), True))
            self._bump(cur)
        return out

    def known_images(self) -> set[tuple[str, str]]:
        """Every (subject id, image sha256) enrolled: what a resumed batch index skips."""
        with self._lock:
            found = self._conn.execute("SELECT subject_id, image_sha256 FROM faces").fetchall()
        return {(str(r[0]), str(r[1])) for r in found}

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        """The faces of a subject; raises SubjectNotFound."""
        self.get_subject(subject_id)
        with self._lock:
            found = self._conn.execute(
                f"SELECT {rows.FACE_COLUMNS} FROM faces WHERE subject_id=? ORDER BY id",
                (subject_id,),
            ).fetchall()
        return [rows.face(r) for r in found]

    def delete_face(self, face_id: int) -> str:
        """Delete one face; returns its subject id. Raises FaceNotFound."""
        with self.transaction() as cur:
            row = cur.execute("SELECT subject_id FROM faces WHERE id=?", (face_id,)).fetchone()
            if row is None:
                raise FaceNotFound(f"no face with id {face_id}")
            cur.execute("DELETE FROM faces WHERE id=?", (face_id,))
            self._bump(cur)
        return str(row[0])

    def embeddings_of(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of one subject, for verify-against-subject."""
        with self._lock:
            found = self._conn.execute(
                "SELECT id, embedding FROM faces WHERE subject_id=? ORDER BY id", (subject_id,)
            ).fetchall()
        return rows.unpack(found, self.embedding_dim)

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Every (face id, embedding) and the generation they belong to, read consistently."""
        with self.transaction() as cur:
            gen = int(cur.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
            found = cur.execute("SELECT id, embedding FROM faces ORDER BY id").fetchall()
        ids, vecs = rows.unpack(found, self.embedding_dim)
        return ids, vecs, gen

    def face_ids(self) -> np.ndarray:
        """Every face id, sorted."""
        with self._lock:
            found = self._conn.execute("SELECT id FROM faces ORDER BY id").fetchall()
        return np.array([r[0] for r in found], dtype=np.int64)

    def embeddings_by_id(self, face_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of those ids that still exist, sorted by id."""
        found: list[Any] = []
        with self._lock:
            for start in range(0, len(face_ids), 500):
                chunk = face_ids[start : start + 500]
                found += self._conn.execute(
                    f"SELECT id, embedding FROM faces WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
        found.sort(key=lambda r: r[0])
        return rows.unpack(found, self.embedding_dim)

    def iter_subjects(self, batch: int) -> Iterator[list[Subject]]:
        """Every subject (face counts included), a page at a time."""
        return rows.subject_pages(self.list_subjects, batch)

    def iter_faces(self, batch: int) -> Iterator[list[tuple[FaceRecord, np.ndarray]]]:
        """Every face with its embedding, in id order (keyset pages: stable under writes)."""
        last = -1
        while True:
            with self._lock:
                found = self._conn.execute(
                    f"SELECT {rows.FACE_COLUMNS}, "
                    "embedding FROM faces WHERE id > ? ORDER BY id LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not found:
                return
            yield [rows.face_with_embedding(r) for r in found]
            last = int(found[-1][0])

    def import_subjects(self, subjects: list[Subject]) -> None:
        """Insert subjects as they are (migration between backends)."""
        with self.transaction() as cur:
            cur.executemany(
                "INSERT INTO subjects(id, name, metadata, created_at) VALUES (?, ?, ?, ?)",
                [rows.subject_values(s) for s in subjects],
            )
            self._bump(cur)

    def import_faces(self, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
        """Insert faces under their own ids (migration between backends)."""
        with self.transaction() as cur:
            cur.executemany(
                "INSERT INTO faces(id, subject_id, embedding, model_id, box, det_score, "
                "image_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [rows.imported_face_values(f, v) for f, v in faces],
            )
            self._bump(cur)

    def subject_of_faces(self, face_ids: list[int]) -> dict[int, tuple[str, str]]:
        """face id -> (subject id, subject name) for search results."""
        if not face_ids:
            return {}
        marks = ",".join("?" * len(face_ids))
        with self._lock:
            found = self._conn.execute(
                f"SELECT f.id, s.id, s.name FROM faces f JOIN subjects s ON s.id = f.subject_id "
                f"WHERE f.id IN ({marks})",
                face_ids,
            ).fetchall()
        return {int(r[0]): (str(r[1]), str(r[2])) for r in found}

    def counts(self) -> tuple[int, int]:
        """(subjects, faces)."""
        with self._lock:
            subjects = self._conn.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
            faces = self._conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        return int(subjects), int(faces)

    def purge_wal(self) -> bool:
        """Copy the WAL into the database and truncate it, so that the old page images in it
        (which still hold a deleted face's embedding) are gone from disk too.

        Never waits for other connections (a backup reading, say): returns False when the
        checkpoint could not complete now, and the caller tries again later.
        """
        with self._lock:
            self._conn.execute("PRAGMA busy_timeout=0")
            try:
                busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError:
                busy = 1
            finally:
                self._conn.execute("PRAGMA busy_timeout=30000")
        return not busy

    def close(self) -> None:
        """Checkpoint the WAL and close."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()


Store = SqliteStore  # the name earlier releases used
