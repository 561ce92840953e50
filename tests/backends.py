"""Real servers for the distributed gallery's tests: PostgreSQL (Debian's package, started on a
free port in a throwaway cluster) and Milvus (milvus-lite's gRPC server in its own process, the
same client API as a Milvus cluster). Both are started once per test session and stopped after.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

from service.errors import BackendUnavailable
from service.gallery import Gallery, backends
from service.gallery.embedded import embedded_gallery
from service.settings import GallerySettings


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within 60 s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes], sig: int, root: Path | None) -> None:
    """Stop a server's process group (SIGKILL after 30 s) and remove its files (``root``)."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


def _pg_binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:  # fail, not skip: these tests are the proof the backend works
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed; `apt-get install postgresql` "
            "(scripts/test.sh does it)"
        )
    return found


@dataclass
class Postgres:
    """A PostgreSQL server in a throwaway cluster; ``new_database`` gives each test its own
    database; ``stop`` and ``start`` simulate an outage (same data, same port)."""

    root: Path
    port: int
    as_user: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str = "postgres") -> str:
        """Connection string of one database (trust authentication on loopback)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; returns its DSN."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def start(self) -> None:
        """Start the server (fsync off: the tests kill our server, never PostgreSQL) and wait
        until it accepts connections."""
        log = self.root / "postgres.log"
        settings = ["listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off",
                    "full_page_writes=off", "max_connections=300"]  # fmt: skip
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [*self.as_user, _pg_binary("postgres"), "-D", str(self.root / "data"),
                 "-p", str(self.port), "-k", str(self.root / "sock"),
                 *[arg for s in settings for arg in ("-c", s)]],
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _wait_for_port(self.port, self.proc, "postgres", log)
        deadline = time.monotonic() + 30
        while True:  # listening precedes accepting connections during start-up
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut, as in an outage."""
        if self.proc is not None:
            _stop(self.proc, signal.SIGINT, None)
            self.proc = None


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb + postgres on a free port, as the `postgres` user when we are root (PostgreSQL
    refuses to run as root)."""
    root = Path(tempfile.mkdtemp(prefix="marginface-pg-"))
    (root / "sock").mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "sock", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, _pg_binary("initdb"), "-D", str(root / "data"), "-U", "postgres",
         "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = Postgres(root, free_port(), as_user)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class MilvusServer:
    """A running milvus-lite server process."""

    uri: str
    pid: int

    def rss_bytes(self) -> int:
        """The server's resident memory (what its vectors and indexes cost)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def start_milvus(root: Path, port: int) -> subprocess.Popen[bytes]:
    """Start milvus-lite's server on ``port`` with its data in ``root`` (a restart on the same
    folder finds its collections again); returns once it listens."""
    log = root / "milvus.log"
    root.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(root / "data"),
             "--host", "127.0.0.1", "--port", str(port), "--max-workers", "32"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    _wait_for_port(port, proc, "milvus-lite", log)
    return proc


@contextmanager
def milvus_server() -> Iterator[MilvusServer]:
    """milvus-lite's gRPC server in its own process (http://127.0.0.1:PORT)."""
    root = Path(tempfile.mkdtemp(prefix="marginface-milvus-"))
    port = free_port()
    proc = start_milvus(root, port)
    try:
        yield MilvusServer(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        _stop(proc, signal.SIGTERM, root)


@dataclass
class Distributed:
    """Where one test's distributed gallery lives: its own database and collection prefix."""

    dsn: str
    milvus_uri: str
    collection: str

    def settings(self) -> dict[str, object]:
        """The `gallery` settings fields of the distributed backend."""
        return {
            "backend": "distributed",
            "postgres_dsn": self.dsn,
            "milvus_uri": self.milvus_uri,
            "milvus_collection": self.collection,
        }

    def env(self) -> dict[str, str]:
        """The same, as a server process's environment."""
        return {f"MARGINFACE_GALLERY__{k.upper()}": str(v) for k, v in self.settings().items()}


def backend_env(backend: Distributed | None) -> dict[str, str]:
    """Server environment for a backend (nothing extra for the embedded one)."""
    return backend.env() if backend else {}


def open_backend_gallery(backend: Distributed | None, folder: Path) -> Gallery:
    """Open what a test server wrote: the embedded gallery in ``folder``, or the distributed
    one (its pinned model and size are read from PostgreSQL, so the arguments do not matter)."""
    if backend is None:
        return embedded_gallery(folder, model_id="ignored@x", embedding_dim=128)
    for attempt in range(3):
        try:
            return backends.open_gallery(
                GallerySettings(**backend.settings()), model_id="ignored@x", embedding_dim=128
            )
        except BackendUnavailable:
            # milvus-lite answers a test process's long-lived gRPC channel, after many test
            # servers have come and gone, with GOAWAY "too_many_pings" and pymilvus keeps the
            # dead channel in its shared connection registry (milvus-io/pymilvus#1796): drop
            # the registry's connections and retry with a fresh channel
            if attempt == 2:
                raise
            from pymilvus.client.connection_manager import ConnectionManager

            ConnectionManager.get_instance().close_all()
            time.sleep(1.0)
    raise AssertionError("unreachable")


def assert_index_equals_store(g: Gallery) -> None:
    """The index holds exactly the store's usable vectors (both shipped backends pair a SQL
    store with an index: compared here vector by vector), once no build is pending."""
    assert g.wait_until_indexed(timeout_s=60)
    ids, vecs, _ = g._store.all_embeddings()
    index_ids, index_vecs = g._index.vectors()
    np.testing.assert_array_equal(ids, index_ids)
    np.testing.assert_allclose(vecs, index_vecs, atol=1e-6)
    assert g.integrity()["index"]["consistent"]
