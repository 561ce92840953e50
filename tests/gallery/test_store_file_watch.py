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
