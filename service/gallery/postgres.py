"""The distributed backend's store: PostgreSQL holds subjects and faces for every API replica.

Same contract as the SQLite store (``protocols.FaceStore``). The schema is versioned SQL under
``migrations/`` applied by ``marginface db upgrade`` (``upgrade``); a store refuses to open a
database whose schema is not the one this release expects, rather than guess.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psycopg
from psycopg import errors as pg_errors

from service.errors import (
    BackendUnavailable,
    FaceNotFound,
    InvalidRequest,
    ModelMismatch,
    SchemaOutdated,
    SubjectExists,
    SubjectNotFound,
)
from service.gallery import rows
from service.gallery.records import FaceRecord, NewFace, Subject

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x4D46_6462  # pg_advisory_lock key: one `db upgrade` at a time
T = TypeVar("T")


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) of every migration shipped with this release, in order."""
    out = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        out.append((int(path.name.split("_", 1)[0]), path.read_text()))
    return out


def latest_version() -> int:
    """The schema version this release expects."""
    return migrations()[-1][0]


def _unstorable(exc: psycopg.DataError) -> InvalidRequest:
    """A value PostgreSQL refuses (NUL in text, ...): the caller's input, so a 422."""
    return InvalidRequest(f"a value in the request cannot be stored: {exc}".strip())


def _connect(dsn: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise BackendUnavailable(
            f"PostgreSQL cannot be reached: {exc}".strip(), retry_after_s=1
        ) from exc


def _applied(conn: psycopg.Connection[Any]) -> int:
    """The schema version of a database (0: never upgraded)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
    )
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def upgrade(dsn: str, *, upto: int | None = None) -> dict[str, Any]:
    """Apply the migrations a database lacks (up to ``upto``, default all), each in its own
    transaction, under an advisory lock (replicas starting together cannot apply one twice).
    Idempotent."""
    with _connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            before = _applied(conn)
            if before > latest_version():
                raise SchemaOutdated(
                    f"the database schema is at version {before}, newer than this release's "
                    f"{latest_version()}: upgrade MarginFace instead",
                    database=before,
                    expected=latest_version(),
                )
            applied = []
            for version, sql in migrations():
                if version <= before or (upto is not None and version > upto):
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations(version, applied_at) VALUES (%s, %s)",
                        (version, time.time()),
                    )
                applied.append(version)
                log.info("schema migration %04d applied", version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return {"from": before, "to": max([before, *applied]), "applied": applied}


class _Link:
    """One PostgreSQL connection shared by threads: serialised by a lock, reopened after a
    failure. A lost connection answers 503 backend_unavailable (PostgreSQL rolls back the open
    transaction: nothing is half-written); a value PostgreSQL cannot hold (NUL in text) a 422."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        """The open connection (lock held), reopened when a failure closed it."""
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self.dsn)
        return self._conn

    def _lost(self, exc: Exception) -> BackendUnavailable:
        """Forget a failed connection; the caller raises what this returns."""
        self.close()
        return BackendUnavailable(
            f"PostgreSQL failed during the request ({exc.__class__.__name__}); "
            "nothing was half-written, retry",
            retry_after_s=1,
        )

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run one autocommit statement (or a few reads) on the connection."""
        with self.lock:
            try:
                return work(self._connection())
            except psycopg.OperationalError as exc:
                raise self._lost(exc) from exc
            except psycopg.DataError as exc:
                raise _unstorable(exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction on the locked connection; commits or rolls back as a whole."""
        with self.lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except psycopg.OperationalError as exc:
                raise self._lost(exc) from exc
            except psycopg.DataError as exc:
                raise _unstorable(exc) from exc

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class PostgresStore:
    """A PostgreSQL store; one connection per store, serialised by a lock (writes are short
    transactions; a lost connection answers 503 backend_unavailable and is reopened next time)."""

    def __init__(self, dsn: str, *, model_id: str, embedding_dim: int) -> None:
        self._link = _Link(dsn)
        self._run = self._link.run
        self._transaction = self._link.transaction
        self.embedding_dim = embedding_dim
        version = self._run(_applied)
        if version != latest_version():
            self._link.close()
            raise SchemaOutdated(
                f"the database schema is at version {version}; this release needs "
                f"{latest_version()}: run `marginface db upgrade`",
                database=version,
                expected=latest_version(),
            )
        self.model_id = self._pin_model(model_id, embedding_dim)

    def _pin_model(self, model_id: str, embedding_dim: int) -> str:
        """Record the model, the embedding size and a random gallery id on first use (the
        gallery id names the Milvus collection: a new database never meets an old collection
        whose face ids would collide with its own)."""
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO meta(key, value) VALUES ('model_id', %s), ('embedding_dim', %s), "
                "('gallery_id', %s) ON CONFLICT (key) DO NOTHING",
                (model_id, str(embedding_dim), uuid.uuid4().hex),
            )
            meta = dict(cur.execute("SELECT key, value FROM meta").fetchall())
        self.embedding_dim = int(meta["embedding_dim"])
        self.gallery_id = str(meta["gallery_id"])
        return str(meta["model_id"])

    def check_model(self, model_id: str) -> None:
        """Raise ModelMismatch unless embeddings of ``model_id`` belong in this gallery."""
        if model_id != self.model_id:
            raise ModelMismatch(
                f"this gallery holds embeddings of {self.model_id}; the service runs {model_id}. "
                "Embeddings of different models are not comparable: use another database or "
                "re-enroll with the gallery's model.",
                gallery_model=self.model_id,
                service_model=model_id,
            )

    @staticmethod
    def _lock_subject(cur: psycopg.Cursor[Any], subject_id: str, mode: str) -> None:
        """Lock a subject's row for this transaction (UPDATE: to change or delete it; SHARE: to
        add faces, so that a delete on another replica waits); SubjectNotFound if absent."""
        lock = {"UPDATE": "FOR UPDATE", "SHARE": "FOR SHARE"}[mode]
        found = cur.execute(f"SELECT 1 FROM subjects WHERE id=%s {lock}", (subject_id,))
        if found.fetchone() is None:
            raise SubjectNotFound(f"no subject with id {subject_id!r}")

    @staticmethod
    def _bump(cur: psycopg.Cursor[Any]) -> None:
        cur.execute("SELECT nextval('generation_seq')")

    def generation(self) -> int:
        """The write counter (a sequence: never rolled back, so it only ever grows)."""
        row = self._run(lambda c: c.execute("SELECT last_value FROM generation_seq").fetchone())
        return int(row[0]) if row else 0

    # ---- subjects

    def create_subject(self, subject_id: str, name: str, metadata: dict[str, Any]) -> Subject:
        """Insert a subject; raises SubjectExists if the id is taken (by any replica)."""
        now = time.time()
        try:
            with self._transaction() as cur:
                cur.execute(
                    "INSERT INTO subjects(id, name, metadata, created_at) VALUES (%s, %s, %s, %s)",
                    (subject_id, name, json.dumps(metadata), now),
                )
                self._bump(cur)
        except pg_errors.UniqueViolation as exc:
            raise SubjectExists(f"subject {subject_id!r} already exists") from exc
        return Subject(subject_id, name, metadata, now, 0)

    def get_subject(self, subject_id: str) -> Subject:
        """The subject with its face count; raises SubjectNotFound."""
        row = self._run(
            lambda c: c.execute(
                f"SELECT {rows.SUBJECT_COLUMNS} FROM subjects s WHERE s.id = %s",
                (subject_id,),
            ).fetchone()
        )
        if row is None:
            raise SubjectNotFound(f"no subject with id {subject_id!r}")
        return rows.subject(row)

    def list_subjects(
        self, offset: int, limit: int, search: str | None = None
    ) -> tuple[list[Subject], int]:
        """A page of subjects ordered by creation, and the total count."""
        where, args = "", []
        if search:
            where = "WHERE s.id ILIKE %s ESCAPE '\\' OR s.name ILIKE %s ESCAPE '\\'"
            pattern = (
                "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
            args = [pattern, pattern]

        def page(c: psycopg.Connection[Any]) -> tuple[Any, list[Any]]:
            total = c.execute(f"SELECT COUNT(*) FROM subjects s {where}", args).fetchone()
            found = c.execute(
                f"SELECT {rows.SUBJECT_COLUMNS} FROM subjects s {where} "
                f"ORDER BY s.created_at, s.id LIMIT %s OFFSET %s",
                [*args, limit, offset],
            ).fetchall()
            return total, found

        total, found = self._run(page)
        subjects = [rows.subject(r) for r in found]
        return subjects, int(total[0])

    def update_subject(
        self, subject_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Subject:
        """Change a subject's name and/or metadata; raises SubjectNotFound."""
        with self._transaction() as cur:
            self._lock_subject(cur, subject_id, "UPDATE")
            if name is not None:
                cur.execute("UPDATE subjects SET name=%s WHERE id=%s", (name, subject_id))
            if metadata is not None:
                cur.execute(
                    "UPDATE subjects SET metadata=%s WHERE id=%s",
                    (json.dumps(metadata), subject_id),
                )
            self._bump(cur)
        return self.get_subject(subject_id)

    def delete_subject(self, subject_id: str) -> list[int]:
        """Delete a subject and its faces; returns the deleted face ids."""
        with self._transaction() as cur:
            self._lock_subject(cur, subject_id, "UPDATE")
            ids = [
                int(r[0])
                for r in cur.execute(
                    "DELETE FROM faces WHERE subject_id=%s RETURNING id", (subject_id,)
                ).fetchall()
            ]
            cur.execute("DELETE FROM subjects WHERE id=%s", (subject_id,))
            self._bump(cur)
        return sorted(ids)

    # ---- faces

    def _insert_face(
        self, cur: psycopg.Cursor[Any], subject_id: str, face: NewFace, now: float
    ) -> tuple[int, bool]:
        """Insert unless this image is already enrolled for the subject (by any replica)."""
        row = cur.execute(
            "INSERT INTO faces(subject_id, embedding, model_id, box, det_score, image_sha256, "
            "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (subject_id, image_sha256) DO NOTHING RETURNING id",
            rows.new_face_values(
                subject_id, face, model_id=self.model_id, dim=self.embedding_dim, now=now
            ),
        ).fetchone()
        if row is not None:
            return int(row[0]), True
        existing = cur.execute(
            "SELECT id FROM faces WHERE subject_id=%s AND image_sha256=%s",
            (subject_id, face.image_sha256),
        ).fetchone()
        assert existing is not None
        return int(existing[0]), False

    def add_faces(
        self, subject_id: str, faces: list[NewFace], *, create_name: str | None = None
    ) -> list[tuple[int, bool]]:
        """Insert faces in one transaction; (face id, created) per face. The subject row is
        locked (FOR SHARE) so a delete on another replica waits for this enrollment or wins."""
        now = time.time()
        with self._transaction() as cur:
            if create_name is not None:
                cur.execute(
                    "INSERT INTO subjects(id, name, metadata, created_at) "
                    "VALUES (%s, %s, '{}', %s) ON CONFLICT (id) DO NOTHING",
                    (subject_id, create_name, now),
                )
            self._lock_subject(cur, subject_id, "SHARE")
            results = [self._insert_face(cur, subject_id, face, now) for face in faces]
            self._bump(cur)
        return results

    def add_faces_many(self, items: list[tuple[str, NewFace]]) -> list[tuple[str, int, bool]]:
        """Batch indexing: faces of many subjects in one transaction, subjects created as needed."""
        now = time.time()
        out: list[tuple[str, int, bool]] = []
        with self._transaction() as cur:
            for subject_id, face in items:
                cur.execute(
                    "INSERT INTO subjects(id, name, metadata, created_at) "
                    "VALUES (%s, %s, '{}', %s) ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id",
                    (subject_id, subject_id, now),
                )  # DO UPDATE (a no-op) locks the row: a delete elsewhere waits for this batch
                fid, created = self._insert_face(cur, subject_id, face, now)
                out.append((subject_id, fid, created))
            self._bump(cur)
        return out

    def known_images(self) -> set[tuple[str, str]]:
        """Every (subject id, image sha256) enrolled."""
        found = self._run(
            lambda c: c.execute("SELECT subject_id, image_sha256 FROM faces").fetchall()
        )
        return {(str(r[0]), str(r[1])) for r in found}

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        """The faces of a subject; raises SubjectNotFound."""
        self.get_subject(subject_id)
        found = self._run(
            lambda c: c.execute(
                f"SELECT {rows.FACE_COLUMNS} FROM faces WHERE subject_id=%s ORDER BY id",
                (subject_id,),
            ).fetchall()
        )
        return [rows.face(r) for r in found]

    def delete_face(self, face_id: int) -> str:
        """Delete one face; returns its subject id. Raises FaceNotFound."""
        if not -(2**63) <= face_id < 2**63:
            raise FaceNotFound(f"no face with id {face_id}")
        with self._transaction() as cur:
            row = cur.execute(
                "DELETE FROM faces WHERE id=%s RETURNING subject_id", (face_id,)
            ).fetchone()
            if row is None:
                raise FaceNotFound(f"no face with id {face_id}")
            self._bump(cur)
        return str(row[0])

    def embeddings_of(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of one subject."""
        found = self._run(
            lambda c: c.execute(
                "SELECT id, embedding FROM faces WHERE subject_id=%s ORDER BY id", (subject_id,)
            ).fetchall()
        )
        return rows.unpack(found, self.embedding_dim)

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Every (face id, embedding) and the generation, from one snapshot."""
        with self._transaction() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            gen = cur.execute("SELECT last_value FROM generation_seq").fetchone()
            found = cur.execute("SELECT id, embedding FROM faces ORDER BY id").fetchall()
        ids, vecs = rows.unpack(found, self.embedding_dim)
        return ids, vecs, int(gen[0]) if gen else 0

    def face_ids(self) -> np.ndarray:
        """Every face id, sorted."""
        found = self._run(lambda c: c.execute("SELECT id FROM faces ORDER BY id").fetchall())
        return np.array([r[0] for r in found], dtype=np.int64)

    def embeddings_by_id(self, face_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of those ids that still exist, sorted by id."""
        if not face_ids:
            return rows.unpack([], self.embedding_dim)
        found = self._run(
            lambda c: c.execute(
                "SELECT id, embedding FROM faces WHERE id = ANY(%s) ORDER BY id", (face_ids,)
            ).fetchall()
        )
        return rows.unpack(found, self.embedding_dim)

    def subject_of_faces(self, face_ids: list[int]) -> dict[int, tuple[str, str]]:
        """face id -> (subject id, subject name) for search results."""
        if not face_ids:
            return {}
        found = self._run(
            lambda c: c.execute(
                "SELECT f.id, s.id, s.name FROM faces f JOIN subjects s ON s.id = f.subject_id "
                "WHERE f.id = ANY(%s)",
                (face_ids,),
            ).fetchall()
        )
        return {int(r[0]): (str(r[1]), str(r[2])) for r in found}

    def counts(self) -> tuple[int, int]:
        """(subjects, faces)."""
        row = self._run(
            lambda c: c.execute(
                "SELECT (SELECT COUNT(*) FROM subjects), (SELECT COUNT(*) FROM faces)"
            ).fetchone()
        )
        assert row is not None
        return int(row[0]), int(row[1])

    def iter_subjects(self, batch: int) -> Iterator[list[Subject]]:
        """Every subject (face counts included), a page at a time."""
        return rows.subject_pages(self.list_subjects, batch)

    def iter_faces(self, batch: int) -> Iterator[list[tuple[FaceRecord, np.ndarray]]]:
        """Every face with its embedding, in id order (keyset pages)."""
        last = -(2**63)
        while True:
            found = self._run(partial(self._faces_after, last, batch))
            if not found:
                return
            yield [rows.face_with_embedding(r) for r in found]
            last = int(found[-1][0])

    @staticmethod
    def _faces_after(last: int, batch: int, conn: psycopg.Connection[Any]) -> list[Any]:
        return conn.execute(
            f"SELECT {rows.FACE_COLUMNS}, embedding FROM faces WHERE id > %s ORDER BY id LIMIT %s",
            (last, batch),
        ).fetchall()

    def import_subjects(self, subjects: list[Subject]) -> None:
        """Insert subjects as they are (migration between backends)."""
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO subjects(id, name, metadata, created_at) VALUES (%s, %s, %s, %s)",
                [rows.subject_values(s) for s in subjects],
            )
            self._bump(cur)

    def import_faces(self, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
        """Insert faces under their own ids, then move the id sequence past them."""
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO faces(id, subject_id, embedding, model_id, box, det_score, "
                "image_sha256, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [rows.imported_face_values(f, v) for f, v in faces],
            )
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('faces', 'id'), "
                "GREATEST((SELECT MAX(id) FROM faces), 1))"
            )
            self._bump(cur)

    def purge_wal(self) -> bool:
        """After deletes: VACUUM the tables (on a connection of its own, so requests are not
        held up) so the erased rows' space is reclaimed; PostgreSQL keeps dead row versions
        until then. Not a byte-level wipe of the disk: see docs/security.md."""
        try:
            with _connect(self._link.dsn) as conn:
                conn.execute("VACUUM faces, subjects")
        except (BackendUnavailable, psycopg.Error) as exc:
            log.warning("VACUUM after a delete failed (%s); retrying later", exc)
            return False
        return True

    def close(self) -> None:
        """Close the connection."""
        self._link.close()


class PostgresJobBoard:
    """Batch job records in PostgreSQL (``service.jobs.JobBoard``): every replica publishes its
    jobs' progress here and answers for jobs another replica runs."""

    def __init__(self, dsn: str) -> None:
        self._link = _Link(dsn)
        self._run = self._link.run

    def publish(self, record: dict[str, Any]) -> None:
        """Insert or update one job's record."""
        self._run(
            lambda c: c.execute(
                "INSERT INTO jobs(id, record, created_at, updated_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record, "
                "updated_at = EXCLUDED.updated_at",
                (record["id"], json.dumps(record), record["created_at"], time.time()),
            )
        )

    def fetch(self, job_id: str) -> dict[str, Any] | None:
        """One job's last published record, or None."""
        row = self._run(
            lambda c: c.execute("SELECT record FROM jobs WHERE id = %s", (job_id,)).fetchone()
        )
        return None if row is None else dict(json.loads(row[0]))

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest jobs' records, newest first."""
        found = self._run(
            lambda c: c.execute(
                "SELECT record FROM jobs ORDER BY created_at DESC LIMIT %s", (limit,)
            ).fetchall()
        )
        return [dict(json.loads(r[0])) for r in found]

    def close(self) -> None:
        """Close the connection."""
        self._link.close()
