"""The SQL store, the source of truth of both backends: one class for the SQL they share, with
dialect hooks that SQLite (``sqlite.py``) and PostgreSQL (``postgres.py``) fill in.

Every write is one transaction that bumps the store's generation, so a derived index knows
whether it reflects the store. Each embedding carries a checksum (``rows.checksum``); every
read of embeddings verifies it and the unit norm, and a row that fails is quarantined: kept
for the operator, never returned. Schemas are versioned SQL files per dialect under
``migrations/<dialect>/``, with Python backfills for what SQL cannot compute.

This module holds the transactions of subjects and faces; the store's other methods are plain
functions over it, grouped by concern and bound in the class body under the names callers use:
verified embedding reads and the quarantine (``embeddings``), negative examples
(``negatives``), rows in pages for copying a gallery (``pages``).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

from service.errors import FaceNotFound, ModelMismatch, SubjectExists, SubjectNotFound
from service.gallery import embeddings, negatives, pages, rows
from service.gallery.records import FaceRecord, NewFace, Subject

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
Cursor = Any  # sqlite3.Cursor or psycopg.Cursor: the DB-API subset both share


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
    #: random, made when the gallery is created (its images folder is bound to it)
    gallery_id: str = ""
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
        for start in range(0, len(ids), rows.CHUNK):
            chunk = ids[start : start + rows.CHUNK]
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

    # ---- negatives ("not this person"): negatives.py

    add_negative = negatives.add_negative
    list_negatives = negatives.list_negatives
    delete_negative = negatives.delete_negative
    negatives_of = negatives.negatives_of

    # ---- embeddings, always verified: embeddings.py

    _verified = embeddings.verified
    _usable = property(embeddings.usable)
    embeddings_of = embeddings.embeddings_of
    embeddings_by_id = embeddings.embeddings_by_id
    all_embeddings = embeddings.all_embeddings
    face_ids = embeddings.face_ids
    owners = embeddings.owners

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

    # ---- quarantine: embeddings.py

    quarantine = embeddings.quarantine
    _forget_quarantine = embeddings.forget_quarantine
    quarantined = embeddings.quarantined
    verify_all = embeddings.verify_all

    # ---- copying between backends: pages.py

    iter_subjects = pages.iter_subjects
    iter_faces = pages.iter_faces
    iter_negatives = pages.iter_negatives
    import_negatives = pages.import_negatives
    import_subjects = pages.import_subjects
    import_faces = pages.import_faces

    def _after_import(self, cur: Cursor) -> None:  # noqa: B027 - optional hook
        """Dialect hook: e.g. move an id sequence past imported ids."""
