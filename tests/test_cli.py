"""The marginface command as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import DATA, ROOT, lfw

CLI = [sys.executable, "-m", "service.cli"]


def run(*args: str, gallery: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*CLI, *args]
    if args[0] not in ("keys", "db", "--help"):
        cmd += ["--models-dir", str(ROOT / "models")]
    if args[0] not in ("keys", "db", "models", "gallery", "--help"):  # no model runs there
        cmd += ["--device", "cpu"]
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


def make_people(root: Path, people: dict[str, list[int]]) -> None:
    for name, numbers in people.items():
        (root / name).mkdir(parents=True)
        for n in numbers:
            (root / name / f"{n}.jpg").write_bytes(lfw(name, n).read_bytes())


def test_identify_prints_every_candidate_and_index_every_outcome(tmp_path: Path) -> None:
    """Was: `identify --top-k 3` printed one candidate, and the index summary left out the
    faces enrolled as the chosen one of several."""
    root, gallery = tmp_path / "people", tmp_path / "gallery"
    make_people(root, {"Colin_Powell": [1, 2], "Tony_Blair": [1], "George_W_Bush": [1, 2]})
    proc = run("index", str(root), "--gallery", str(gallery), "--no-progress",
               "--report", str(tmp_path / "report.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "chosen face of several" in proc.stdout and "low quality" in proc.stdout
    # with a progress bar and worker processes, it says why the bar waits at 0 (models loading)
    proc = run("index", str(root), "--gallery", str(gallery), "--processes", "2",
               "--report", str(tmp_path / "report2.json"))  # fmt: skip
    assert proc.returncode == 0 and "each loads the models" in proc.stderr, proc.stderr
    probe = str(lfw("Colin_Powell", 3))
    proc = run("identify", probe, "--gallery", str(gallery), "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    for name in ("Colin_Powell", "Tony_Blair", "George_W_Bush"):
        assert name in proc.stdout  # every candidate, not only the match
    proc = run("identify", probe, "--gallery", str(gallery), "--top-k", "3", "--json")
    faces = json.loads(proc.stdout)["faces"]
    main = max(faces, key=lambda f: f["detection"]["quality"]["score"])
    assert len(main["candidates"]) == 3 and main["match"]["subject_id"] == "Colin_Powell"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    """Was: a bare `[Errno 2]`."""
    missing = str(tmp_path / "nope.jpg")
    proc = run("detect", missing)
    assert proc.returncode == 2 and f"error: no such file: {missing}" in proc.stderr
    proc = run("verify", missing, str(lfw("Colin_Powell", 1)), "--json")
    assert json.loads(proc.stdout)["error"]["code"] == "file_not_found"


def test_a_normal_cpu_install_logs_no_warning() -> None:
    """Was: every command printed a CPU-provider WARNING per model on a machine without GPU."""
    cmd = [*CLI, "detect", str(lfw("Colin_Powell", 1)), "--models-dir", str(ROOT / "models")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr


def test_cluster_groups_a_nested_tree_and_follows_no_link(tmp_path: Path) -> None:
    lfw = DATA / "lfw" / "images"
    for k, person in enumerate(["Colin_Powell", "Serena_Williams"] * 3):
        folder = tmp_path / "photos" / f"day{k % 2}" / "misc"  # layout says nothing of who
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(lfw / person / f"{person}_{k // 2 + 1:04d}.jpg", folder / f"{person}_{k}.jpg")
    (tmp_path / "photos" / "outside.jpg").symlink_to(lfw / "Tony_Blair/Tony_Blair_0001.jpg")
    proc = run("cluster", str(tmp_path / "photos"), "--json", "--processes", "0")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["photos"] == 6 and out["skipped_links"] == ["outside.jpg"]
    groups = [
        {m["file"].rsplit("/", 1)[1].split("_")[0] for m in c["members"]}
        for c in out["clusters"]
        if c["size"] >= 3
    ]
    assert sorted(len(g) for g in groups) == [1, 1] and len(groups) == 2, out["clusters"]
    assert out["far"] == 1e-3  # 12 faces: 0.1 / 12, capped at the loosest automatic FAR
    assert 0.3 < out["threshold"] < 0.6
    # without --json the table names every member's photo, not only the representative's
    table = subprocess.run(
        [*CLI, "cluster", str(tmp_path / "photos"), "--processes", "0", "--no-progress",
         "--models-dir", str(ROOT / "models"), "--device", "cpu"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "COLUMNS": "400"},  # a wide terminal: rich wraps no cell
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    people = enumerate(["Colin_Powell", "Serena_Williams"] * 3)
    assert all(f"{p}_{k}.jpg" in table.stdout for k, p in people), table.stdout
    bad = run("cluster", str(tmp_path / "photos"), "--json", "--far", "1e-12")
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["code"] == "invalid_request"


def test_the_help_is_written_for_users() -> None:
    """`marginface --help` once showed a developer docstring with RST backticks, 39 options and
    arguments had no help, and --device / --models-dir were offered where they mean nothing."""
    import argparse

    from service.cli import build_parser

    top = run("--help")
    assert top.returncode == 0 and "``" not in top.stdout, top.stdout
    missing, offered = [], {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}".strip())
            elif not isinstance(action, argparse._HelpAction):
                if not action.help:
                    missing.append(f"{path} {action.option_strings or action.dest}")
                for option in action.option_strings:
                    offered.setdefault(option, set()).add(path)

    walk(build_parser(), "")
    assert not missing, missing
    no_model = {"keys create", "keys list", "keys revoke", "keys images-key", "db upgrade"}
    assert not no_model & offered["--device"] and not no_model & offered["--models-dir"]
    assert {"serve", "identify", "index", "cluster", "eval lfw"} <= offered["--device"]


def test_eval_identify_takes_photos_not_a_gallery_folder() -> None:
    """`--gallery` names a gallery's folder for identify, index and serve, but meant a folder of
    photos for `eval identify`: that option is `--photos` now (`--gallery` still accepted)."""
    small = ["--aligned", "--json", "--enrolled-people", "4", "--gallery-photos", "2",
             "--probes-per-person", "1"]  # fmt: skip
    for option in ("--photos", "--gallery"):
        proc = run("eval", "identify", option, str(DATA / "glint24_aligned"), *small)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["enrolled_people"] == 4
