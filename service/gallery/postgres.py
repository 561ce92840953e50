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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from service.errors import (
    BackendUnavailable,
    InsufficientStorage,
    InvalidRequest,
    SchemaOutdated,
)
from service.gallery.sql import SqlStore, backfill_checksums, migrations, statements

log = logging.getLogger(__name__)

_LOCK_KEY = 0x4D46_6462  # pg_advisory_lock key: one `db upgrade` at a time
T = TypeVar("T")
#: Python steps run after a migration's SQL, in its transaction
BACKFILLS = {3: backfill_checksums}


def latest_version() -> int:
    """The schema version this release expects."""
    return migrations("postgres")[-1][0]


def _unstorable(exc: psycopg.DataError) -> InvalidRequest:
    """A value PostgreSQL refuses (NUL in text, ...): the caller's input, so a 422."""
    return InvalidRequest(f"a value in the request cannot be stored: {exc}".strip())


def _disk_full(exc: psycopg.Error) -> InsufficientStorage:
    return InsufficientStorage(
        "PostgreSQL's disk is full: nothing was written; free space on the database server "
        "and retry (deletes still work)"
    )


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
            for version, sql in migrations("postgres"):
                if version <= before or (upto is not None and version > upto):
                    continue
                with conn.transaction(), conn.cursor() as cur:
                    for statement in statements(sql):
                        cur.execute(statement.encode())
                    backfill = BACKFILLS.get(version)
                    if backfill is not None:
                        backfill(cur, lambda q: q.replace("?", "%s"))
                    cur.execute(
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
            except pg_errors.DiskFull as exc:
                raise _disk_full(exc) from exc
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
            except pg_errors.DiskFull as exc:
                raise _disk_full(exc) from exc
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


class PostgresStore(SqlStore):
    """A PostgreSQL store; one connection per store, serialised by a lock (writes are short
    transactions; a lost connection answers 503 backend_unavailable and is reopened next time)."""

    dialect = "postgres"
    placeholder = "%s"
    like = "ILIKE"

    def __init__(self, dsn: str, *, model_id: str, embedding_dim: int) -> None:
        self._link = _Link(dsn)
        self.embedding_dim = embedding_dim
        version = self._link.run(_applied)
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

    # ---- dialect hooks

    def _transaction(self) -> AbstractContextManager[psycopg.Cursor[Any]]:
        return self._link.transaction()

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        query = self._q(sql)
        return self._link.run(lambda c: c.execute(query, list(args)).fetchall())

    def _lock_clause(self, mode: str) -> str:
        return {"UPDATE": "FOR UPDATE", "SHARE": "FOR SHARE"}[mode]

    def _bump(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute("SELECT nextval('generation_seq')")

    def generation(self) -> int:
        """The write counter (a sequence: never rolled back, so it only ever grows)."""
        row = self._one("SELECT last_value FROM generation_seq")
        return int(row[0]) if row else 0

    def _after_import(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(
            "SELECT setval(pg_get_serial_sequence('faces', 'id'), "
            "GREATEST((SELECT MAX(id) FROM faces), 1))"
        )

    def purge_logs(self) -> bool:
        """After deletes: VACUUM the tables (on a connection of its own, so requests are not
        held up) so the erased rows' space is reclaimed; PostgreSQL keeps dead row versions
        until then. Not a byte-level wipe of the disk: see docs/security.md."""
        try:
            with _connect(self._link.dsn) as conn:
                conn.execute("VACUUM faces, subjects, quarantine, negatives")
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
