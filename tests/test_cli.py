"""The marginface command as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import DATA, ROOT, lfw

CLI = [sys.executable, "-m", "service.cli"]


def run(*args: str, gallery: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*CLI, *args, "--models-dir", str(ROOT / "models"), "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_detect_group_photo_json() -> None:
    proc = run("detect", str(DATA / "detection/insightface/t1.jpg"), "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert len(payload["faces"]) == 6


def test_verify_json_and_error_exit_code(tmp_path: Path) -> None:
    proc = run("verify", str(lfw("Colin_Powell", 1)), str(lfw("Colin_Powell", 2)), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["match"] is True
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    proc = run("verify", str(bad), str(lfw("Colin_Powell", 2)), "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["code"] == "invalid_image"


def test_models_list_json() -> None:
    proc = run("models", "list", "--json")
    names = {m["name"]: m for m in json.loads(proc.stdout)["models"]}
    assert names["sface-2021dec"]["present"] and names["retinaface-mnet025"]["present"]
