"""Issue 26, acceptance 3: ``Gallery`` is the only writer. Nothing outside ``service/gallery``
(the service, the CLI, training, scripts, benchmarks) reaches a gallery's store or index:
the lock, the kept face data and the audit hook are all in ``Gallery``, and a path around it
skips them. Tests may open the internals to inject faults; the shipped code may not."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

#: classes that write a gallery's store or index; only service/gallery may name them
WRITERS = {
    "SqlStore",
    "SqliteStore",
    "SqliteSnapshot",
    "PostgresStore",
    "IndexSync",
    "LiveFaissIndex",
    "MilvusIndex",
}
#: a gallery's private parts: its store, its index, and how the index follows the store
PRIVATE = {"_backend", "_store", "_index", "_sync"}
#: a standalone FAISS index (not a gallery's) is what the index benchmarks measure
STANDALONE_INDEX_OK = {"bench/gallery_benchmark.py", "bench/gpu_check.py", "bench/index_1m.py"}


def offences(source: str, rel: str) -> list[str]:
    """Where one module reaches past ``Gallery``: a private attribute of it (``g._store``,
    ``g._index``, ``g._sync``, ``g._backend``, ``g.backend.x``), or an import of a class that
    writes the store or the index. A standalone FAISS index (``FaissIndex``, and its own
    ``_index``) is allowed where an index benchmark measures one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            standalone = node.attr == "_index" and rel in STANDALONE_INDEX_OK
            if node.attr in PRIVATE and not standalone:
                found.append(f"{rel}:{node.lineno}: .{node.attr}")
            elif isinstance(node.value, ast.Attribute) and node.value.attr == "backend":
                found.append(f"{rel}:{node.lineno}: .backend.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service.gallery"):
            for alias in node.names:
                standalone = alias.name == "FaissIndex" and rel in STANDALONE_INDEX_OK
                if alias.name in WRITERS or (alias.name == "FaissIndex" and not standalone):
                    found.append(f"{rel}:{node.lineno}: imports {alias.name}")
    return found


def shipped_modules() -> list[Path]:
    """Every Python file of the service (outside service/gallery), training, scripts, bench."""
    paths = []
    for top in ("service", "training", "scripts", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if not path.relative_to(ROOT).as_posix().startswith("service/gallery/"):
                paths.append(path)
    return paths


def test_the_scan_sees_a_write_around_the_gallery() -> None:
    """The scan itself can fail: each way around Gallery is caught."""
    planted = (
        "from service.gallery.sqlite import SqliteStore\n"
        "g.backend.import_faces(rows)\n"
        "g._backend.repair()\n"
        "from service.gallery.index import FaissIndex\n"
        "g._store.delete_face(1)\n"
        "g._index.remove([1])\n"
        "from service.gallery.live_index import LiveFaissIndex\n"
    )
    assert len(offences(planted, "bench/x.py")) == 7
    assert offences("settings.gallery.backend == 'embedded'\n", "service/x.py") == []


def test_nothing_outside_the_gallery_writes_its_store_or_index() -> None:
    found = []
    for path in shipped_modules():
        found += offences(path.read_text(), path.relative_to(ROOT).as_posix())
    assert found == []
