"""Foreign tools the tests drive from their own environments (their pins clash with ours)."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

TOOLS = ROOT / ".cache" / "tools"


def tool_venv(name: str, requirements: list[str]) -> Path:
    """A virtual environment under ``.cache/tools/NAME`` with exactly ``requirements``
    installed from the package registry; made once, reused while the requirements are the same
    (a lock keeps parallel test processes from building it twice)."""
    venv = TOOLS / name
    stamp = venv / "requirements.txt"
    wanted = "\n".join(sorted(requirements)) + "\n"
    TOOLS.mkdir(parents=True, exist_ok=True)
    with (TOOLS / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted:
            return venv
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", *requirements],
            check=True,
        )  # fmt: skip
        stamp.write_text(wanted)
    return venv
