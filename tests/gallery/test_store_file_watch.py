"""The embedded store's file watch (``StoreFile``, issue 26 finding 2) beside other processes
that write to the same store: ``gallery migrate-model --no-switch`` stages rows beside a running
service, replicas share one store. Their SQLite checkpoints are not a lost store; a real
truncation still is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.errors import GalleryCorrupted
from service.gallery.sqlite import STORE_FILE, SqliteStore
from tests.gallery.test_gallery import DIM, MODEL

#: another process writing to the store and checkpointing (what SQLite does in any process
#: with a connection: a migration's, a replica's): 200 kB rows, a passive checkpoint after each
WRITER = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE IF NOT EXISTS neighbour (data BLOB)")
for _ in range(int(sys.argv[2])):
    conn.execute("INSERT INTO neighbour VALUES (?)", (os.urandom(200_000),))
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
conn.close()
"""


def test_another_process_checkpointing_the_store_is_not_taken_for_a_truncation(
    tmp_path: Path,
) -> None:
    """Found running bench/migration_latency.py (the server answered 503 gallery_corrupted,
    'was truncated while the service ran', to every write after `migrate-model --no-switch`
    ran beside it): the watch compared the page count in the file's header with its size,
    without SQLite's locks. A checkpoint writes pages in page order, so page 1 (the header,
    with the new size) lands before the pages that extend the file: for the checkpoint's
    length the file is shorter than its header says. On main about 1% of checks during
    another process's checkpoints said 'was truncated', and the store stayed refused until a
    restart."""
    path = tmp_path / STORE_FILE
    store = SqliteStore(path, model_id=MODEL, embedding_dim=DIM)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "300"])
    checks = 0
    try:
        while writer.poll() is None:
            store.check_file()
            checks += 1
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait()
        store.close()
    assert writer.returncode == 0
    assert checks > 100, "the writer ended before the watch was exercised"


def test_a_store_truncated_past_its_header_is_still_refused(tmp_path: Path) -> None:
    """The other side of the checkpoint fix: a file cut short (its header intact) is lost."""
    path = tmp_path / STORE_FILE
    SqliteStore(path, model_id=MODEL, embedding_dim=DIM).close()  # closing checkpoints it
    store = SqliteStore(path, model_id=MODEL, embedding_dim=DIM)
    try:
        page_size = int.from_bytes(path.read_bytes()[16:18], "big")
        assert path.stat().st_size > page_size
        os.truncate(path, page_size)
        with pytest.raises(GalleryCorrupted, match="was truncated"):
            store.check_file()
    finally:
        store.close()


def test_a_store_left_mid_checkpoint_by_a_crash_opens(tmp_path: Path) -> None:
    """A checkpoint writes page 1 (with the new page count) before the pages that extend the
    file; a SIGKILL between the two leaves the file shorter than its header says, every page
    still in the WAL. That is a whole store, not a truncated one: the service refused to start
    on it (GalleryCorrupted "was truncated", found by tests/test_server.py's SIGKILL test on a
    fresh checkout). Opening completes the checkpoint first."""
    import sqlite3

    path = tmp_path / STORE_FILE
    SqliteStore(path, model_id=MODEL, embedding_dim=DIM).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE filler (data BLOB)")
    for _ in range(20):
        conn.execute("INSERT INTO filler VALUES (?)", (os.urandom(50_000),))
    header = conn.execute("PRAGMA page_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as fh:  # page 1 as a checkpoint writes it first: the new count
        fh.seek(28)
        fh.write(int(header).to_bytes(4, "big"))
    # (the other connection stays open, never checkpointing: the WAL keeps every page)
    assert path.stat().st_size < header * page_size  # short, as the crash left it
    store = SqliteStore(path, model_id=MODEL, embedding_dim=DIM)
    try:
        store.check_file()  # was: GalleryCorrupted (the file "was truncated")
        assert store.counts() == (0, 0)
    finally:
        store.close()
        conn.close()
