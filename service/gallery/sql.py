"""The SQL store, the source of truth of both backends: one class for the SQL they share, with
dialect hooks that SQLite (``sqlite.py``) and PostgreSQL (``postgres.py``) fill in.

Every write is one transaction that bumps the store's generation, so a derived index knows
whether it reflects the store. Each embedding carries a checksum (``rows.checksum``); every
read of embeddings verifies it and the unit norm, and a row that fails is quarantined: kept
for the operator, never returned. Schemas are versioned SQL files per dialect under
``migrations/<dialect>/``, with Python backfills for what SQL cannot compute.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from service.errors import (
    FaceNotFound,
    InvalidRequest,
    ModelMismatch,
    NegativeNotFound,
    SubjectExists,
    SubjectNotFound,
    TooManyNegatives,
)
from service.gallery import rows
from service.gallery.records import (
    FaceRecord,
    Negative,
    NegativeSource,
    NewFace,
    Quarantined,
    Subject,
)

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
Cursor = Any  # sqlite3.Cursor or psycopg.Cursor: the DB-API subset both share
_CHUNK = 500  # ids per IN (...) list
_PAGE = 20_000  # rows per page when every embedding is read


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, SQL) of every migration a dialect ships with this release, in order."""
    found = []
    for path in sorted((MIGRATIONS / dialect).glob("*.sql")):
        found.append((int(path.name.split("_", 1)[0]), path.read_text()))
    return found


def statements(sql: str) -> list[str]:
    """A migration file's statements (no triggers or functions: ';' ends a statement)."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def backfill_checksums(cur: Cursor, q: Callable[[str], str]) -> None:
    """Migration step: give every face the checksum of what it holds now (an embedding
    corrupted before the upgrade is still caught by the unit-norm check)."""
    found = cur.execute(q("SELECT id, subject_id, image_sha256, embedding FROM faces")).fetchall()
    cur.executemany(
        q("UPDATE faces SET checksum=? WHERE id=?"),
        [(rows.checksum(str(r[1]), str(r[2]), bytes(r[3])), r[0]) for r in found],
    )


class SqlStore(ABC):
    """Subjects and faces in SQL; every write is committed before it returns.

    Subclasses provide the connection (``_transaction``, ``_read``), the placeholder style,
    the generation counter, row locking and the mapping of driver errors."""

    dialect: str
    placeholder = "?"
    like = "LIKE"
    #: Python steps run after a migration's SQL, in its transaction, by schema version
    backfills: ClassVar[dict[int, Callable[[Cursor, Callable[[str], str]], None]]] = {}
    embedding_dim: int
    model_id: str
    #: the full sha256 of the gallery's model's weights ("" until a service of it opens it)
    model_sha256: str = ""
    #: told the ids of faces just quarantined (the backend takes them out of its index)
    on_quarantine: Callable[[list[int]], None] | None = None

    # ---- dialect hooks

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Cursor]:
        """One write transaction, committed or rolled back as a whole; driver errors mapped."""

    @abstractmethod
    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Rows of one read statement (``?`` placeholders); driver errors mapped."""

    @abstractmethod
    def _bump(self, cur: Cursor) -> None:
        """Advance the generation inside a write transaction."""

    @abstractmethod
    def generation(self) -> int:
        """A counter every write advances (a derived index records the one it reflects)."""

    def _lock_clause(self, mode: str) -> str:
        """Row-lock suffix for SELECT ... WHERE id = ? (``UPDATE`` or ``SHARE``); SQLite needs
        none (a write transaction locks the whole database)."""
        return ""

    def _digest_change(self, cur: Cursor, delta: int) -> None:  # noqa: B027 - optional hook
        """Keep the content digest in step with a write (a dialect that keeps one)."""

    def content_digest(self) -> int | None:
        """The sum of every stored checksum, kept on write (None: this dialect keeps none)."""
        return None

    @abstractmethod
    def purge_logs(self) -> bool:
        """After deletes: push erased rows out of logs and free pages; False to retry later."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    # ---- helpers

    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        found = self._read(sql, args)
        return found[0] if found else None

    def _lock_subject(self, cur: Cursor, subject_id: str, mode: str) -> None:
        """Lock a subject's row for this transaction; SubjectNotFound if absent."""
        sql = f"SELECT 1 FROM subjects WHERE id=? {self._lock_clause(mode)}"
        if cur.execute(self._q(sql), (subject_id,)).fetchone() is None:
            raise SubjectNotFound(f"no subject with id {subject_id!r}")

    def check_model(self, model_id: str) -> None:
        """Raise ModelMismatch unless embeddings of ``model_id`` belong in this gallery."""
        if model_id != self.model_id:
            raise ModelMismatch(
                f"this gallery holds embeddings of {self.model_id}; the service runs {model_id}. "
                "Embeddings of different models are not comparable: use a new gallery "
                "(another folder or database) or re-enroll with the gallery's model.",
                gallery_model=self.model_id,
                service_model=model_id,
            )

    def check_pin(self, cur: Cursor | None = None) -> None:
        """ModelMismatch when the gallery was switched to another model since this store was
        opened (another replica, or migrate-model): writes of this process's model must stop,
        and /readyz says so until a restart follows the gallery. In a write transaction the
        pin's row is share-locked, so a switch waits for it (or it for the switch)."""
        sql = f"SELECT value FROM meta WHERE key='model_id' {self._lock_clause('SHARE')}"
        row = self._one(sql) if cur is None else cur.execute(self._q(sql)).fetchone()
        if row is not None and str(row[0]) != self.model_id:
            raise ModelMismatch(
                f"the gallery was moved to {row[0]} (gallery migrate-model) while this service "
                f"ran {self.model_id}: restart it (it follows the gallery's model)",
                gallery_model=str(row[0]),
                service_model=self.model_id,
            )

    # ---- subjects

    def create_subject(self, subject_id: str, name: str, metadata: dict[str, Any]) -> Subject:
        """Insert a subject; SubjectExists when the id is taken."""
        now = time.time()
        with self._transaction() as cur:
            inserted = cur.execute(
                self._q(
                    "INSERT INTO subjects(id, name, metadata, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING RETURNING id"
                ),
                rows.subject_values(Subject(subject_id, name, metadata, now)),
            ).fetchone()
            if inserted is None:
                raise SubjectExists(f"subject {subject_id!r} already exists")
            self._bump(cur)
        return Subject(subject_id, name, metadata, now, 0)

    def get_subject(self, subject_id: str) -> Subject:
        """The subject with its face count; SubjectNotFound."""
        row = self._one(
            f"SELECT {rows.SUBJECT_COLUMNS} FROM subjects s WHERE s.id = ?", (subject_id,)
        )
        if row is None:
            raise SubjectNotFound(f"no subject with id {subject_id!r}")
        return rows.subject(row)

    def existing_subjects(self, subject_ids: Sequence[str]) -> set[str]:
        """Which of these subject ids exist now."""
        found: set[str] = set()
        ids = list(subject_ids)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found |= {
                str(r[0])
                for r in self._read(f"SELECT id FROM subjects WHERE id IN ({marks})", chunk)
            }
        return found

    def list_subjects(
        self, offset: int, limit: int, search: str | None = None
    ) -> tuple[list[Subject], int]:
        """A page of subjects ordered by creation, and the total."""
        where, args = "", []
        if search:
            where = f"WHERE s.id {self.like} ? ESCAPE '\\' OR s.name {self.like} ? ESCAPE '\\'"
            pattern = (
                "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
            args = [pattern, pattern]
        total = self._one(f"SELECT COUNT(*) FROM subjects s {where}", args)
        found = self._read(
            f"SELECT {rows.SUBJECT_COLUMNS} FROM subjects s {where} "
            "ORDER BY s.created_at, s.id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        return [rows.subject(r) for r in found], int(total[0])

    def update_subject(
        self, subject_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Subject:
        """Rename or change metadata; SubjectNotFound."""
        with self._transaction() as cur:
            self._lock_subject(cur, subject_id, "UPDATE")
            if name is not None:
                cur.execute(self._q("UPDATE subjects SET name=? WHERE id=?"), (name, subject_id))
            if metadata is not None:
                values = rows.subject_values(Subject(subject_id, "", metadata, 0.0))
                cur.execute(
                    self._q("UPDATE subjects SET metadata=? WHERE id=?"), (values[2], subject_id)
                )
            self._bump(cur)
        return self.get_subject(subject_id)

    def delete_subject(self, subject_id: str) -> list[int]:
        """Delete a subject and its faces; the deleted face ids. SubjectNotFound."""
        with self._transaction() as cur:
            self._lock_subject(cur, subject_id, "UPDATE")
            # its negatives, and the negatives of others copied from its faces (the foreign
            # keys cascade too: said here, where erasure is read)
            cur.execute(
                self._q(
                    "DELETE FROM negatives WHERE subject_id=? OR face_id IN "
                    "(SELECT id FROM faces WHERE subject_id=?)"
                ),
                (subject_id, subject_id),
            )
            removed = cur.execute(
                self._q("DELETE FROM faces WHERE subject_id=? RETURNING id, checksum"),
                (subject_id,),
            ).fetchall()
            ids = sorted(int(r[0]) for r in removed)
            self._forget_quarantine(cur, ids)
            cur.execute(self._q("DELETE FROM subjects WHERE id=?"), (subject_id,))
            self._digest_change(cur, -rows.digest_of([r[1] for r in removed]))
            self._bump(cur)
        return ids

    # ---- faces

    def _insert_face(
        self, cur: Cursor, subject_id: str, face: NewFace, now: float
    ) -> tuple[int, bool, str]:
        """Insert unless this image is already enrolled for the subject; (id, created, checksum)."""
        values = rows.new_face_values(
            subject_id,
            face,
            model_id=self.model_id,
            model_sha256=self.model_sha256,
            dim=self.embedding_dim,
            now=now,
        )
        row = cur.execute(
            self._q(
                "INSERT INTO faces(subject_id, embedding, model_id, model_sha256, box, det_score, "
                "image_sha256, created_at, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (subject_id, image_sha256) DO NOTHING RETURNING id"
            ),
            values,
        ).fetchone()
        if row is not None:
            return int(row[0]), True, str(values[-1])
        existing = cur.execute(
            self._q("SELECT id FROM faces WHERE subject_id=? AND image_sha256=?"),
            (subject_id, face.image_sha256),
        ).fetchone()
        return int(existing[0]), False, ""

    def _ensure_subject(self, cur: Cursor, subject_id: str, name: str, now: float) -> None:
        """Create a subject when missing (batch indexing), locking its row either way."""
        cur.execute(
            self._q(
                "INSERT INTO subjects(id, name, metadata, created_at) VALUES (?, ?, '{}', ?) "
                "ON CONFLICT (id) DO NOTHING"
            ),
            (subject_id, name, now),
        )
        self._lock_subject(cur, subject_id, "SHARE")

    def add_faces(
        self, subject_id: str, faces: list[NewFace], *, create_name: str | None = None
    ) -> list[tuple[int, bool]]:
        """Insert faces in one transaction; (face id, created) per face. An image already
        enrolled for the subject (same sha256) comes back with created=False. The subject row
        is locked (PostgreSQL: FOR SHARE) so a concurrent delete waits or wins."""
        now = time.time()
        with self._transaction() as cur:
            self.check_pin(cur)
            if create_name is not None:
                self._ensure_subject(cur, subject_id, create_name, now)
            else:
                self._lock_subject(cur, subject_id, "SHARE")
            inserted = [self._insert_face(cur, subject_id, f, now) for f in faces]
            self._digest_change(cur, rows.digest_of([c for _, created, c in inserted if created]))
            self._bump(cur)
        return [(fid, created) for fid, created, _ in inserted]

    def add_faces_many(
        self, items: list[tuple[str, NewFace]], *, creatable: frozenset[str] | None = None
    ) -> list[tuple[str, int | None, bool]]:
        """Batch indexing: faces of many subjects in one transaction. A missing subject is
        created (named after its id) when ``creatable`` is None or holds it; otherwise its faces
        are skipped (face id None): a subject deleted while a job runs stays deleted."""
        now = time.time()
        out: list[tuple[str, int | None, bool]] = []
        checks: list[str] = []
        present: dict[str, bool] = {}
        with self._transaction() as cur:
            self.check_pin(cur)
            for subject_id, face in items:
                if subject_id not in present:
                    if creatable is None or subject_id in creatable:
                        self._ensure_subject(cur, subject_id, subject_id, now)
                        present[subject_id] = True
                    else:
                        try:
                            self._lock_subject(cur, subject_id, "SHARE")
                            present[subject_id] = True
                        except SubjectNotFound:
                            present[subject_id] = False
                if not present[subject_id]:
                    out.append((subject_id, None, False))
                    continue
                fid, created, check = self._insert_face(cur, subject_id, face, now)
                checks.append(check if created else "")
                out.append((subject_id, fid, created))
            self._digest_change(cur, rows.digest_of(checks))
            self._bump(cur)
        return out

    def known_images(self) -> set[tuple[str, str]]:
        """Every (subject id, image sha256) enrolled: what a resumed batch index skips."""
        return {
            (str(r[0]), str(r[1])) for r in self._read("SELECT subject_id, image_sha256 FROM faces")
        }

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        """The faces of a subject; SubjectNotFound."""
        self.get_subject(subject_id)
        found = self._read(
            f"SELECT {rows.FACE_COLUMNS} FROM faces WHERE subject_id=? ORDER BY id", (subject_id,)
        )
        return [rows.face(r) for r in found]

    def delete_face(self, face_id: int) -> str:
        """Delete one face; its subject id. FaceNotFound."""
        if not -(2**63) <= face_id < 2**63:
            raise FaceNotFound(f"no face with id {face_id}")
        with self._transaction() as cur:
            # the negatives copied from it go with it (the foreign key cascades too)
            cur.execute(self._q("DELETE FROM negatives WHERE face_id=?"), (face_id,))
            row = cur.execute(
                self._q("DELETE FROM faces WHERE id=? RETURNING subject_id, checksum"), (face_id,)
            ).fetchone()
            if row is None:
                raise FaceNotFound(f"no face with id {face_id}")
            self._forget_quarantine(cur, [face_id])
            self._digest_change(cur, -rows.digest_of([row[1]]))
            self._bump(cur)
        return str(row[0])

    # ---- negatives ("not this person")

    def add_negative(
        self,
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
        model_id, model_sha256 = self.model_id, self.model_sha256
        with self._transaction() as cur:
            self.check_pin(cur)
            self._lock_subject(cur, subject_id, "UPDATE")  # one count-then-insert at a time
            if face_id is not None:
                existing = cur.execute(
                    self._q(
                        f"SELECT {rows.NEGATIVE_COLUMNS} FROM negatives "
                        "WHERE subject_id=? AND face_id=?"
                    ),
                    (subject_id, face_id),
                ).fetchone()
                if existing is not None:
                    return rows.negative(existing), False
            count = cur.execute(
                self._q("SELECT COUNT(*) FROM negatives WHERE subject_id=?"), (subject_id,)
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
                blob, model_id, model_sha256 = self._face_to_copy(cur, subject_id, face_id)
            else:
                blob = rows.embedding_bytes(embedding, self.embedding_dim)
            row = cur.execute(
                self._q(
                    "INSERT INTO negatives(subject_id, model_id, model_sha256, embedding, "
                    "checksum, source, face_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "RETURNING id"
                ),
                (subject_id, model_id, model_sha256, blob,
                 rows.negative_checksum(subject_id, blob), source, face_id, now),
            ).fetchone()  # fmt: skip
        negative = Negative(
            int(row[0]), subject_id, model_id, source, face_id, now, model_sha256
        )
        return negative, True

    def _face_to_copy(self, cur: Cursor, subject_id: str, face_id: int) -> tuple[bytes, str, str]:
        """(embedding, model id, model sha256) of a gallery face to keep as a negative of
        another subject, verified; FaceNotFound, InvalidRequest."""
        if not -(2**63) <= face_id < 2**63:
            raise FaceNotFound(f"no face with id {face_id}")
        found = cur.execute(
            self._q(
                f"SELECT {rows.VECTOR_COLUMNS}, model_id, model_sha256 FROM faces "
                f"WHERE id=? {self._lock_clause('SHARE')}"
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
        _, _, bad = rows.verified([found[:5]], self.embedding_dim)
        if bad:
            raise FaceNotFound(f"face {face_id} is quarantined ({bad[0][1]}): it is not copied")
        return bytes(found[3]), str(found[5]), str(found[6] or "")

    def list_negatives(self, subject_id: str) -> list[Negative]:
        """The negative examples of a subject, oldest first (no embeddings); SubjectNotFound."""
        self.get_subject(subject_id)
        found = self._read(
            f"SELECT {rows.NEGATIVE_COLUMNS} FROM negatives WHERE subject_id=? ORDER BY id",
            (subject_id,),
        )
        return [rows.negative(r) for r in found]

    def delete_negative(self, subject_id: str, negative_id: int) -> None:
        """Erase one negative example of a subject; NegativeNotFound."""
        if not -(2**63) <= negative_id < 2**63:
            raise NegativeNotFound(f"subject {subject_id!r} has no negative {negative_id}")
        with self._transaction() as cur:
            row = cur.execute(
                self._q("DELETE FROM negatives WHERE id=? AND subject_id=? RETURNING id"),
                (negative_id, subject_id),
            ).fetchone()
            if row is None:
                raise NegativeNotFound(f"subject {subject_id!r} has no negative {negative_id}")

    def negatives_of(self, subject_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """subject id -> (n, dim) embeddings of its negatives of the gallery's own model (a
        row of another model, or of other weights, is never compared), verified (a row that
        fails is logged and left out), for the subjects that have any: one query per 500."""
        ids = sorted(set(subject_ids))
        model = (self.model_id, self.model_sha256)
        out: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found = self._read(
                f"SELECT {rows.NEGATIVE_VECTOR_COLUMNS} FROM negatives "
                f"WHERE subject_id IN ({marks}) AND model_id=? "
                "AND (model_sha256='' OR ?='' OR model_sha256=?) ORDER BY id",
                [*chunk, model[0], model[1], model[1]],
            )
            _, vectors, bad = rows.verified(found, self.embedding_dim)
            for negative_id, reason in bad:
                log.error("negative %d is not compared: its stored embedding is %s",
                          negative_id, reason)  # fmt: skip
            bad_ids = {b for b, _ in bad}
            good = [r for r in found if int(r[0]) not in bad_ids]
            for r, vector in zip(good, vectors, strict=True):
                out.setdefault(str(r[1]), []).append(vector)
        return {sid: np.stack(vs) for sid, vs in out.items()}

    # ---- embeddings, always verified

    def _verified(self, found: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Verify rows of VECTOR_COLUMNS; quarantine the ones that fail and return the rest."""
        ids, vecs, bad = rows.verified(found, self.embedding_dim)
        if bad:
            self.quarantine(bad)
        return ids, vecs

    @property
    def _usable(self) -> str:
        """The faces a search may compare: not quarantined, and embedded by the gallery's own
        model (a row of another model is kept and reported, never compared). The model id is
        the gallery's own pin (a manifest's name@sha), quoted as a SQL literal."""
        model = self.model_id.replace("'", "''")
        return (
            "NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.face_id = faces.id) "
            f"AND faces.model_id = '{model}'"
        )

    def embeddings_of(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of one subject's usable faces (verified)."""
        return self._verified(
            self._read(
                f"SELECT {rows.VECTOR_COLUMNS} FROM faces WHERE subject_id=? AND {self._usable} "
                "ORDER BY id",
                (subject_id,),
            )
        )

    def embeddings_by_id(self, face_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of those ids that exist and are usable, sorted by id."""
        found: list[Any] = []
        for start in range(0, len(face_ids), _CHUNK):
            chunk = face_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found += self._read(
                f"SELECT {rows.VECTOR_COLUMNS} FROM faces WHERE id IN ({marks}) AND {self._usable}",
                chunk,
            )
        found.sort(key=lambda r: r[0])
        return self._verified(found)

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Every usable (face id, embedding), verified, and the generation read before them:
        an index built from them is at least that current (writes after the read bump it)."""
        generation = self.generation()
        id_parts, vec_parts = [], []
        last = -(2**63)
        while True:
            page = self._read(
                f"SELECT {rows.VECTOR_COLUMNS} FROM faces WHERE id > ? AND {self._usable} "
                "ORDER BY id LIMIT ?",
                (last, _PAGE),
            )
            if not page:
                break
            ids, vecs = self._verified(page)
            id_parts.append(ids)
            vec_parts.append(vecs)
            last = int(page[-1][0])
        if not id_parts:
            return np.zeros(0, np.int64), np.zeros((0, self.embedding_dim), np.float32), generation
        return np.concatenate(id_parts), np.concatenate(vec_parts), generation

    def face_ids(self) -> np.ndarray:
        """Every usable face id, sorted (what reconcile compares the index with)."""
        found = self._read(f"SELECT id FROM faces WHERE {self._usable} ORDER BY id")
        return np.array([r[0] for r in found], dtype=np.int64)

    def owners(self, face_ids: list[int]) -> dict[int, tuple[str, str]]:
        """face id -> (subject id, name) for search results; deleted and quarantined faces are
        absent, so a search never returns them."""
        out: dict[int, tuple[str, str]] = {}
        for start in range(0, len(face_ids), _CHUNK):
            chunk = face_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for r in self._read(
                "SELECT faces.id, s.id, s.name FROM faces "
                "JOIN subjects s ON s.id = faces.subject_id "
                f"WHERE faces.id IN ({marks}) AND {self._usable}",
                chunk,
            ):
                out[int(r[0])] = (str(r[1]), str(r[2]))
        return out

    def record_weights(self, model_id: str, model_sha256: str) -> None:
        """Remember the full sha256 of the gallery's model's weights, once a service of that
        model opens it, and give it to the rows stored before it was recorded."""
        if not model_sha256 or model_id != self.model_id:
            return
        self.model_sha256 = model_sha256
        if self._one("SELECT 1 FROM faces WHERE model_id=? AND model_sha256='' LIMIT 1",
                     (model_id,)) is None:  # fmt: skip
            return
        with self._transaction() as cur:
            cur.execute(
                self._q("UPDATE faces SET model_sha256=? WHERE model_id=? AND model_sha256=''"),
                (model_sha256, model_id),
            )

    def other_models(self) -> dict[str, int]:
        """model id -> faces stored with embeddings of another model than the gallery's
        (kept, never compared)."""
        found = self._read(
            "SELECT model_id, COUNT(*) FROM faces WHERE model_id <> ? GROUP BY model_id",
            (self.model_id,),
        )
        return {str(r[0]): int(r[1]) for r in found}

    def all_face_ids(self) -> set[int]:
        """Every stored face id, whatever its state or model (what kept face data belongs to)."""
        return {int(r[0]) for r in self._read("SELECT id FROM faces")}

    def counts(self) -> tuple[int, int]:
        """(subjects, faces)."""
        row = self._one("SELECT (SELECT COUNT(*) FROM subjects), (SELECT COUNT(*) FROM faces)")
        return int(row[0]), int(row[1])

    # ---- quarantine

    def quarantine(self, bad: list[tuple[int, str]]) -> None:
        """Set faces aside whose embedding failed its check; logged, reported, never matched."""
        now = time.time()
        with self._transaction() as cur:
            cur.executemany(
                self._q(
                    "INSERT INTO quarantine(face_id, reason, at) VALUES (?, ?, ?) "
                    "ON CONFLICT (face_id) DO NOTHING"
                ),
                [(face_id, reason, now) for face_id, reason in bad],
            )
            self._bump(cur)
        for face_id, reason in bad:
            log.error("face %d quarantined: its stored embedding is %s", face_id, reason)
        if self.on_quarantine is not None:
            self.on_quarantine([face_id for face_id, _ in bad])

    def _forget_quarantine(self, cur: Cursor, face_ids: list[int]) -> None:
        for start in range(0, len(face_ids), _CHUNK):
            chunk = face_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            cur.execute(self._q(f"DELETE FROM quarantine WHERE face_id IN ({marks})"), chunk)

    def quarantined(self) -> list[Quarantined]:
        """Faces set aside, oldest first."""
        found = self._read(
            "SELECT q.face_id, f.subject_id, q.reason, q.at FROM quarantine q "
            "JOIN faces f ON f.id = q.face_id ORDER BY q.face_id"
        )
        return [Quarantined(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in found]

    def verify_all(self) -> list[Quarantined]:
        """Check every stored embedding (checksum, unit norm); quarantine the ones that fail.
        Returns the faces quarantined now and before."""
        last = -(2**63)
        while True:
            page = self._read(
                f"SELECT {rows.VECTOR_COLUMNS} FROM faces WHERE id > ? AND {self._usable} "
                "ORDER BY id LIMIT ?",
                (last, _PAGE),
            )
            if not page:
                break
            self._verified(page)
            last = int(page[-1][0])
        return self.quarantined()

    # ---- copying between backends

    def iter_subjects(self, batch: int) -> Iterator[list[Subject]]:
        """Every subject (face counts included), a page at a time."""
        return rows.subject_pages(self.list_subjects, batch)

    def iter_faces(self, batch: int) -> Iterator[list[tuple[FaceRecord, np.ndarray]]]:
        """Every face with its embedding, in id order (keyset pages: stable under writes)."""
        last = -(2**63)
        while True:
            found = self._read(
                f"SELECT {rows.FACE_COLUMNS}, embedding FROM faces "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (last, batch),
            )
            if not found:
                return
            yield [rows.face_with_embedding(r) for r in found]
            last = int(found[-1][0])

    def iter_negatives(self, batch: int) -> Iterator[list[tuple[Negative, np.ndarray]]]:
        """Every negative example with its embedding, in id order, in pages."""
        last = -(2**63)
        while True:
            found = self._read(
                f"SELECT {rows.NEGATIVE_COLUMNS}, embedding FROM negatives "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (last, batch),
            )
            if not found:
                return
            yield [
                (rows.negative(r), np.frombuffer(bytes(r[7]), dtype=np.float32).copy())
                for r in found
            ]
            last = int(found[-1][0])

    def import_negatives(self, negatives: list[tuple[Negative, np.ndarray]]) -> None:
        """Insert negative examples as they are (new ids; subjects and faces copied first)."""
        values = []
        for n, vector in negatives:
            blob = rows.embedding_bytes(vector, self.embedding_dim)
            values.append(
                (n.subject_id, n.model_id, n.model_sha256, blob,
                 rows.negative_checksum(n.subject_id, blob), n.source, n.face_id, n.created_at)
            )  # fmt: skip
        with self._transaction() as cur:
            cur.executemany(
                self._q(
                    "INSERT INTO negatives(subject_id, model_id, model_sha256, embedding, "
                    "checksum, source, face_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                values,
            )

    def import_subjects(self, subjects: list[Subject]) -> None:
        """Insert subjects as they are (ids and creation times kept)."""
        with self._transaction() as cur:
            cur.executemany(
                self._q("INSERT INTO subjects(id, name, metadata, created_at) VALUES (?, ?, ?, ?)"),
                [rows.subject_values(s) for s in subjects],
            )
            self._bump(cur)

    def import_faces(self, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
        """Insert faces as they are (face ids kept, so both backends answer alike)."""
        values = [rows.imported_face_values(f, v, self.embedding_dim) for f, v in faces]
        with self._transaction() as cur:
            cur.executemany(
                self._q(
                    "INSERT INTO faces(id, subject_id, embedding, model_id, model_sha256, box, "
                    "det_score, image_sha256, created_at, checksum) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                values,
            )
            self._after_import(cur)
            self._digest_change(cur, rows.digest_of([v[-1] for v in values]))
            self._bump(cur)

    def _after_import(self, cur: Cursor) -> None:  # noqa: B027 - optional hook
        """Dialect hook: e.g. move an id sequence past imported ids."""
