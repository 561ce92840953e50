"""House rule: the service never imports torch or training (training imports the service)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_service_does_not_import_torch_or_training() -> None:
    code = (
        "import sys, pkgutil, importlib, service\n"
        "for m in pkgutil.walk_packages(service.__path__, 'service.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules\n"
        "             if n == 'torch' or n.startswith(('torch.', 'training')))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def imported_modules(path: Path) -> set[str]:
    """Top-level package names a module imports."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_gallery_touches_faiss_milvus_and_postgres() -> None:
    """House rule: service/gallery is the only code that imports the vector engines and the
    database drivers; the gallery's core (gallery.py, backend.py) imports none of them."""
    engines = {"faiss", "pymilvus", "psycopg", "sqlite3"}
    offenders = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        used = imported_modules(path) & engines
        rel = path.relative_to(ROOT).as_posix()
        core = rel in ("service/gallery/gallery.py", "service/gallery/backend.py")
        if used and (not rel.startswith("service/gallery/") or core):
            offenders.append(f"{rel}: {sorted(used)}")
    assert offenders == []


def test_the_cli_does_not_use_the_api_layer() -> None:
    """The CLI prints domain objects (their to_dict), not the REST API's response models, and
    each CLI module stays small."""
    offenders = []
    for path in sorted((ROOT / "service" / "cli").glob("*.py")):
        used = {m for m in full_imports(path) if m.startswith(("service.api", "fastapi"))}
        if used:
            offenders.append(f"{path.name}: {sorted(used)}")
        assert len(path.read_text().splitlines()) <= 250, f"{path.name} grew past 250 lines"
    assert not offenders, offenders
    assert len((ROOT / "service" / "app.py").read_text().splitlines()) <= 250


def full_imports(path: Path) -> set[str]:
    """Dotted names of every module a file imports."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names
