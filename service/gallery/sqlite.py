"""The embedded backend's store: SQLite (WAL, synchronous=FULL, secure_delete) in the gallery
folder, plus its backups (a consistent export while the server runs, and an import).

A store made by an older release is upgraded in place when it opens (versioned SQL under
``migrations/sqlite``, one transaction per version); one made by a newer release is refused.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from service.errors import (
    GalleryCorrupted,
    InsufficientStorage,
    InvalidRequest,
    SchemaOutdated,
)
from service.gallery import rows
from service.gallery.owner import FolderLock
from service.gallery.sql import Cursor, SqlStore, backfill_checksums, migrations, statements
from service.gallery.store_file import StoreFile

STORE_FILE = "gallery.sqlite3"
_FULL_CODES = {sqlite3.SQLITE_FULL}
_MIN_FREE_BYTES = 1 << 20  # an I/O error with less than this free is a full disk


def latest_version() -> int:
    """The embedded schema version this release writes."""
    return migrations("sqlite")[-1][0]


def _is_disk_full(exc: sqlite3.Error, directory: Path) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code in _FULL_CODES or "database or disk is full" in str(exc):
        return True
    if isinstance(exc, sqlite3.OperationalError) and "disk I/O error" in str(exc):
        try:
            return shutil.disk_usage(directory).free < _MIN_FREE_BYTES
        except OSError:
            return False
    return False


def _full(path: Path) -> InsufficientStorage:
    return InsufficientStorage(
        f"the disk holding the gallery ({path.parent}) is full: nothing was written; free "
        "space and retry (deletes still work)"
    )


class SqliteStore(SqlStore):
    """SQLite store; one connection guarded by a lock (writes are serialised anyway)."""

    dialect = "sqlite"
    backfills: ClassVar[dict[int, Callable[[Cursor, Callable[[str], str]], None]]] = {
        2: backfill_checksums
    }

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
        except sqlite3.DatabaseError as exc:
            if _is_disk_full(exc, path.parent):
                raise _full(path) from exc
            raise GalleryCorrupted(
                f"the gallery store {path} cannot be read ({exc}); it is left untouched. "
                "Restore it from a backup (marginface gallery import) or move it aside."
            ) from exc
        # a checkpoint a crash interrupted leaves the file shorter than its header says (page 1
        # is written first), every page still in the WAL: complete it before watching the file
        with contextlib.suppress(sqlite3.OperationalError):  # busy: another process's, running
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._file = StoreFile(path)
        self._lost: str | None = None
        try:
            self._upgrade()
            self.model_id = self._pin_model(model_id, embedding_dim)
        except BaseException:
            self._conn.close()
            self._file.close()
            raise

    # ---- the file under the connection

    def check_file(self) -> None:
        """Raise GalleryCorrupted when the store file this connection opened is gone, replaced
        or truncated on disk. SQLite keeps writing to an unlinked file and answers from its
        cache over a truncated one, so without this check writes would be acknowledged and
        lost; once lost, the store stays refused until the service restarts (where an empty
        store beside a non-empty index is refused too)."""
        if self._lost is None:
            self._lost = self._file.problem()
        if self._lost is not None:
            raise GalleryCorrupted(
                f"the gallery store {self.path} {self._lost} while the service ran: writes are "
                "refused (they would be lost). Stop the service, then restore the store from a "
                "backup (marginface gallery import); index.faiss still holds the vectors."
            )

    # ---- dialect hooks

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """An immediate (write-locking) transaction that commits or rolls back as a whole."""
        with self._lock, self._errors():
            self.check_file()
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")

    transaction = _transaction  # bulk loaders (benchmarks) write through it directly

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A full disk is a 507 (nothing was written: SQLite rolled the transaction back)."""
        try:
            yield
        except sqlite3.Error as exc:
            if _is_disk_full(exc, self.path.parent):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise _full(self.path) from exc
            raise

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock, self._errors():
            self.check_file()  # a lost file answers stale rows or errors: neither is served
            return self._conn.execute(sql, list(args)).fetchall()

    def _bump(self, cur: Cursor) -> None:
        cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")

    def generation(self) -> int:
        """The write counter; the index is current when it records the same number."""
        row = self._one("SELECT value FROM meta WHERE key='generation'")
        return int(row[0])

    def _digest_change(self, cur: Cursor, delta: int) -> None:
        if delta == 0:
            return
        row = cur.execute("SELECT value FROM meta WHERE key='content_digest'").fetchone()
        new = rows.digest_add(int(row[0]), delta)
        cur.execute("UPDATE meta SET value=? WHERE key='content_digest'", (str(new),))

    def content_digest(self) -> int | None:
        """The sum of every stored checksum (mod 2**64), kept in each write's transaction."""
        row = self._one("SELECT value FROM meta WHERE key='content_digest'")
        return int(row[0]) if row else None

    # ---- schema

    def _schema_version(self) -> int:
        """0: an empty file; 1: the release before versioned migrations (tables, no version)."""
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
        if "meta" not in tables:
            return 0
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            return 1 if "faces" in tables else 0
        return int(row[0])

    def _upgrade(self) -> None:
        """Apply the migrations this file lacks, each in one transaction (DDL included); refuse
        a file written by a newer release."""
        current = self._schema_version()
        latest = latest_version()
        if current > latest:
            raise SchemaOutdated(
                f"the gallery at {self.path} has schema version {current}, newer than this "
                f"release's {latest}: a later MarginFace wrote it; upgrade MarginFace (the file "
                "is left as it is)",
                database=current,
                expected=latest,
            )
        for version, sql in migrations("sqlite"):
            if version <= current:
                continue
            with self._transaction() as cur:
                for statement in statements(sql):
                    cur.execute(statement)
                backfill = self.backfills.get(version)
                if backfill is not None:
                    backfill(cur, self._q)
                    if version == 2:
                        total = cur.execute("SELECT checksum FROM faces").fetchall()
                        cur.execute(
                            "UPDATE meta SET value=? WHERE key='content_digest'",
                            (str(rows.digest_of([r[0] for r in total])),),
                        )
                cur.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(version),),
                )

    def _pin_model(self, model_id: str, embedding_dim: int) -> str:
        """Record the gallery's model on first use; afterwards, keep the recorded one. Also
        the gallery's random id (what its images folder is bound to), made once."""
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO meta(key, value) VALUES ('gallery_id', ?) "
                "ON CONFLICT (key) DO NOTHING",
                (uuid.uuid4().hex,),
            )
        self.gallery_id = str(self._one("SELECT value FROM meta WHERE key='gallery_id'")[0])
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key='model_id'").fetchone()
        if row is not None:
            dim = self._one("SELECT value FROM meta WHERE key='embedding_dim'")
            self.embedding_dim = int(dim[0]) if dim else embedding_dim
            return str(row[0])
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                [
                    ("model_id", model_id),
                    ("embedding_dim", str(embedding_dim)),
                    ("generation", "0"),
                ],
            )
        return model_id

    # ---- upkeep

    def purge_logs(self) -> bool:
        """Copy the WAL into the database and truncate it, so that the old page images in it
        (which still hold a deleted face's embedding) are gone from disk too. Never waits for
        other connections (a backup reading, say): False when the checkpoint could not complete
        now, and the caller tries again later."""
        with self._lock:
            if self._file.problem() is not None:
                return True  # a lost file: nothing to write back into it (check_file reports)
            self._conn.execute("PRAGMA busy_timeout=0")
            try:
                busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError:
                busy = 1
            finally:
                self._conn.execute("PRAGMA busy_timeout=30000")
        return not busy

    def snapshot_reader(self) -> SqliteSnapshot:
        """A second, read-only connection: long reads (an index build) beside the writer, never
        queued behind its lock (the build replays the writes made meanwhile)."""
        return SqliteSnapshot(self)

    def close(self) -> None:
        """Checkpoint the WAL and close (a lost file is not written to)."""
        with self._lock:
            try:
                if self._lost is None:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # a full disk: the WAL stays, SQLite replays it at the next open
            finally:
                self._conn.close()
                self._file.close()  # only now: closing it earlier would drop SQLite's locks


class SqliteSnapshot(SqliteStore):
    """A read-only view of a SqliteStore on its own connection (reads never queue behind the
    writer's lock). Writes through it are refused by SQLite."""

    def __init__(self, store: SqliteStore) -> None:
        self.path = store.path
        self.embedding_dim = store.embedding_dim
        self.model_id = store.model_id
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            f"file:{store.path}?mode=ro", uri=True, check_same_thread=False, timeout=30.0
        )
        self._owner = store
        self._file, self._lost = store._file, store._lost  # the owner's descriptor

    def quarantine(self, bad: list[tuple[int, str]]) -> None:
        """Quarantine through the owning store (this connection is read-only)."""
        self._owner.quarantine(bad)

    def close(self) -> None:
        """Close the read connection."""
        with self._lock:
            self._conn.close()


# ---- backups


def _open_readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)


def describe_store(path: Path) -> dict[str, Any]:
    """Check a store file (integrity, model pin) and count it; raises GalleryCorrupted."""
    if not path.is_file():
        raise GalleryCorrupted(f"{path} does not exist")
    try:
        conn = _open_readonly(path)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            subjects = conn.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
            faces = conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise GalleryCorrupted(f"{path} is not a readable MarginFace gallery ({exc})") from exc
    if "model_id" not in meta:
        raise GalleryCorrupted(f"{path} has no model pin: not a MarginFace gallery")
    return {
        "model_id": meta["model_id"],
        "embedding_dim": int(meta.get("embedding_dim", 0)),
        "schema_version": int(meta.get("schema_version", 1)),
        "subjects": int(subjects),
        "faces": int(faces),
    }


def export_store(directory: Path, target: Path) -> dict[str, Any]:
    """A consistent backup of a gallery's store, safe while a server writes to it (SQLite's
    backup API reads one snapshot); the index is not exported: it is rebuilt from the store."""
    source = directory / STORE_FILE
    describe_store(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        _copy_store(source, tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise InsufficientStorage(f"no space left for the backup at {target}") from exc
        raise
    tmp.replace(target)
    return {"file": str(target), **describe_store(target)}


def _copy_store(source: Path, target: Path) -> None:
    """One consistent snapshot of ``source`` into a fresh file ``target`` (a rollback journal,
    so the copy is a single self-contained file). InsufficientStorage when ``target``'s disk
    fills up (SQLite says so as an OperationalError, not an OSError); nothing is left."""
    target.unlink(missing_ok=True)
    src = _open_readonly(source)
    try:
        dest = sqlite3.connect(str(target))
        try:
            src.backup(dest)
            dest.execute("PRAGMA journal_mode=DELETE")
        finally:
            dest.close()
    except sqlite3.Error as exc:
        if not _is_disk_full(exc, target.parent):
            raise
        target.unlink(missing_ok=True)
        Path(f"{target}-journal").unlink(missing_ok=True)
        raise InsufficientStorage(
            "the disk the copy is written to is full: no copy was made; free space and retry"
        ) from exc
    finally:
        src.close()


def import_store(source: Path, directory: Path, *, replace: bool = False) -> dict[str, Any]:
    """Restore a backup into a gallery folder (with the service stopped: GalleryBusy while any
    process holds the folder). Refuses to overwrite a gallery that holds faces unless
    ``replace``; the index is rebuilt at the next start (and an older backup's schema is
    upgraded then)."""
    info = describe_store(source)
    hold = FolderLock(directory, exclusive=True)
    try:
        return _replace_store(source, directory, info, replace=replace)
    finally:
        hold.release()


def _replace_store(
    source: Path, directory: Path, info: dict[str, Any], *, replace: bool
) -> dict[str, Any]:
    """The restore itself, folder held exclusively: the new store file, no stale index."""
    from service.gallery.index import INDEX_FILE

    store = directory / STORE_FILE
    if store.exists() and describe_store(store)["faces"] and not replace:
        raise InvalidRequest(
            f"the gallery at {directory} is not empty; pass --replace to overwrite it"
        )
    tmp = directory / (STORE_FILE + ".import")
    _copy_store(source, tmp)
    for stale in (
        directory / INDEX_FILE,
        (directory / INDEX_FILE).with_suffix(".json"),
        directory / (STORE_FILE + "-wal"),
        directory / (STORE_FILE + "-shm"),
    ):
        stale.unlink(missing_ok=True)
    tmp.replace(store)
    return {"gallery": str(directory), **info}
