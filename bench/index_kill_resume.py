"""Kill `marginface index` halfway through a folder with SIGKILL, run it again, and compare the
result with an uninterrupted gallery of the same folder: same (subject, image sha256) keys and the
same embeddings. Prints JSON.

Usage: python bench/index_kill_resume.py ROOT --clean GALLERY_OF_AN_UNINTERRUPTED_RUN --into NEW_DIR
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def count(gallery: Path) -> int:
    try:
        with sqlite3.connect(gallery / "gallery.sqlite3", timeout=10) as c:
            return int(c.execute("SELECT COUNT(*) FROM faces").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def content(gallery: Path) -> dict[tuple[str, str], np.ndarray]:
    with sqlite3.connect(gallery / "gallery.sqlite3") as c:
        rows = c.execute("SELECT subject_id, image_sha256, embedding FROM faces").fetchall()
    return {(a, b): np.frombuffer(e, np.float32) for a, b, e in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--clean", type=Path, required=True)
    parser.add_argument("--into", type=Path, required=True)
    args = parser.parse_args()
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "index",
        args.root,
        "--gallery",
        str(args.into),
        "--json",
        "--no-progress",
        "--device",
        "cpu",
        "--report",
        str(args.into) + ".json",
    ]
    total = count(args.clean)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    while count(args.into) < total // 2:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = count(args.into)
    resumed = json.loads(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stdout)
    a, b = content(args.clean), content(args.into)
    same = a.keys() == b.keys()
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a) if same else None
    keys = ("total", "enrolled", "already_present", "no_face", "unreadable", "seconds")
    print(
        json.dumps(
            {
                "uninterrupted_faces": total,
                "faces_at_sigkill": at_kill,
                "resume": {k: resumed[k] for k in keys},
                "same_keys": same,
                "faces_after_resume": len(b),
                "max_abs_embedding_diff": diff,
            },
            indent=2,
        )
    )
    return 0 if same and diff == 0.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
