"""Batch indexing: every outcome counted, re-runs add nothing, SIGKILL + re-run = a clean run."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service.gallery import Gallery
from service.gallery.embedded import embedded_gallery
from service.indexer import BatchIndexer, scan
from service.recognition import open_gallery
from service.vision.pipeline import FacePipeline
from tests.backends import assert_index_equals_store
from tests.conftest import DATA, ROOT, make_settings, png_bytes

LFW = DATA / "lfw" / "images"


def make_tree(root: Path, people: list[str], per_person: int) -> None:
    """A folder per subject with real LFW photos."""
    for name in people:
        (root / name).mkdir(parents=True)
        for photo in sorted((LFW / name).glob("*.jpg"))[:per_person]:
            shutil.copy(photo, root / name / photo.name)


def gallery_content(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """(subject, image sha256) -> embedding, read straight from the store file."""
    with sqlite3.connect(path / "gallery.sqlite3") as conn:
        rows = conn.execute("SELECT subject_id, image_sha256, embedding FROM faces").fetchall()
    return {(r[0], r[1]): np.frombuffer(r[2], dtype=np.float32) for r in rows}


def test_every_outcome_is_counted_and_a_rerun_adds_nothing(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    root = tmp_path / "people"
    make_tree(root, ["Colin_Powell", "Tony_Blair", "Serena_Williams"], 3)
    shutil.copy(LFW / "Colin_Powell/Colin_Powell_0001.jpg", root / "Colin_Powell/copy.jpg")
    (root / "Tony_Blair/notes.jpg").write_bytes(b"not an image at all")
    (root / "Tony_Blair/wall.png").write_bytes(png_bytes(np.full((200, 200, 3), 128, np.uint8)))
    (root / "bad id!").mkdir()
    shutil.copy(LFW / "Colin_Powell/Colin_Powell_0004.jpg", root / "bad id!/x.jpg")
    (root / "Serena_Williams/readme.txt").write_text("ignored: not an image suffix")
    group = DATA / "detection/insightface/t1.jpg"
    shutil.copy(group, root / "Serena_Williams/group.jpg")

    settings = make_settings(tmp_path)
    gallery = open_gallery(settings, pipeline.embedder.manifest)
    indexer = BatchIndexer(settings, pipeline, gallery, workers=2, batch_size=4)
    seen: list[tuple[int, int]] = []
    first = indexer.run(root, progress=lambda done, total: seen.append((done, total)))
    assert first.total == 14 == len(scan(root))
    assert first.counts == {
        "enrolled": 10,  # 9 portraits + the group photo's largest face (policy: largest)
        "already_present": 1,  # copy.jpg is Colin_Powell_0001.jpg again
        "no_face": 1,
        "several_faces": 0,
        "low_quality": 0,
        "unreadable": 1,
        "too_large": 0,
        "skipped_link": 0,
        "skipped_special": 0,
        "skipped_too_deep": 0,
        "invalid_subject": 1,
        "subject_deleted": 0,
    }
    assert "Serena_Williams/group.jpg" in first.largest_of_several  # LFW photos have bystanders too
    assert first.subjects_created == 3
    assert seen[-1] == (14, 14) and all(a <= b for (a, _), (b, _) in itertools.pairwise(seen))
    assert any("notes.jpg" in f for f in first.files["unreadable"])
    assert gallery.stats()["faces"] == gallery.stats()["indexed"] == 10

    second = indexer.run(root)
    assert second.counts["enrolled"] == 0 and second.counts["already_present"] == 11
    assert gallery.stats()["faces"] == 10

    strict = BatchIndexer(
        settings.model_copy(update={"enroll_policy": "reject"}), pipeline, gallery
    )
    (root / "Tony_Blair/group.jpg").write_bytes(group.read_bytes())
    third = strict.run(root)
    assert third.counts["several_faces"] == 1 and third.counts["enrolled"] == 0
    report = tmp_path / "report.json"
    third.write(report)
    assert json.loads(report.read_text())["files"]["several_faces"][0].startswith("Tony_Blair/")
    gallery.close()


def test_bulk_indexing_refuses_non_faces_and_faces_below_the_floor(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    """dogs.jpg was enrolled as a face (the largest dog), and nothing gated quality."""
    import cv2

    from service.vision.image import decode_image

    root = tmp_path / "people"
    make_tree(root, ["Colin_Powell"], 2)
    shutil.copy(DATA / "detection/dlib_faces/dogs.jpg", root / "Colin_Powell/dogs.jpg")
    sharp = decode_image((LFW / "Colin_Powell/Colin_Powell_0003.jpg").read_bytes())
    blurred = cv2.GaussianBlur(sharp, (0, 0), 8)
    (root / "Colin_Powell/blurred.png").write_bytes(png_bytes(blurred))
    settings = make_settings(tmp_path)  # the default floor, 0.6
    gallery = open_gallery(settings, pipeline.embedder.manifest)
    summary = BatchIndexer(settings, pipeline, gallery, workers=2, batch_size=2).run(root)
    assert summary.counts["enrolled"] == 2
    assert summary.counts["no_face"] == 1 and summary.counts["low_quality"] == 1
    report = tmp_path / "report.json"
    summary.write(report)
    files = json.loads(report.read_text())["files"]
    assert files["no_face"][0].startswith("Colin_Powell/dogs.jpg: no face")
    assert "refused" in files["no_face"][0]
    assert files["low_quality"][0].startswith("Colin_Powell/blurred.png: ")
    assert "sharpness" in files["low_quality"][0]
    assert gallery.stats()["faces"] == 2
    gallery.close()


def run_index(root: Path, gallery: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "index",
        str(root),
        "--gallery",
        str(gallery),
        "--models-dir",
        str(ROOT / "models"),
        "--device",
        "cpu",
        "--json",
        "--no-progress",
        "--batch-size",
        "8",
        "--report",
        str(gallery.parent / f"{gallery.name}.json"),
    ]
    env = {
        **os.environ,
        "MARGINFACE_INTRA_OP_THREADS": "1",
        "MARGINFACE_PRIVACY__IMAGES_DIR": str(gallery.parent / f"{gallery.name}-images"),
    }
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE)


def faces_in(gallery: Path) -> int:
    try:
        with sqlite3.connect(gallery / "gallery.sqlite3", timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    out: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
        except OSError:
            continue
        kids = [int(k) for k in text.split()]
        out += kids
        pending += kids
    return out


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            running.append(pid)
    return running


@pytest.mark.slow
def test_sigkill_halfway_then_rerun_equals_one_clean_run(tmp_path: Path) -> None:
    root = tmp_path / "people"
    people = sorted(p.name for p in LFW.iterdir() if len(list(p.iterdir())) >= 6)[:12]
    make_tree(root, people, 6)  # 72 photos

    clean = tmp_path / "clean"
    proc = run_index(root, clean)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0
    summary = json.loads(out)
    assert summary["total"] == 72 and summary["enrolled"] > 60

    killed = tmp_path / "killed"
    proc = run_index(root, killed)
    deadline = time.monotonic() + 300
    while faces_in(killed) < 20:  # a few committed batches, far from done
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = descendants(proc.pid)
    assert workers  # the default: worker processes
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while alive(workers):  # they die with their parent, models and photos with them
        assert time.monotonic() < deadline, f"workers outlived a SIGKILLed index: {alive(workers)}"
        time.sleep(0.1)
    partial = faces_in(killed)
    assert 20 <= partial < summary["enrolled"]

    proc = run_index(root, killed)
    out, _ = proc.communicate(timeout=600)
    resumed = json.loads(out)
    assert resumed["already_present"] == partial
    assert resumed["enrolled"] == summary["enrolled"] - partial

    a, b = gallery_content(clean), gallery_content(killed)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)
    # the index the re-run left behind agrees with its store
    g = embedded_gallery(killed, model_id="ignored@x", embedding_dim=128)
    assert_index_equals_store(g)
    g.close()


def test_a_subject_deleted_while_a_job_runs_is_not_recreated(
    tmp_path: Path, pipeline: FacePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12, finding 5: a bulk job re-created a subject deleted while it ran (deleted with
    64 faces, back with 56). The rule: a job creates a subject only if it did not exist when
    the job started, at most once; a subject deleted under it is not brought back, and its
    remaining photos are reported as `subject_deleted`."""
    root = tmp_path / "people"
    make_tree(root, ["Colin_Powell", "Tony_Blair"], 6)
    settings = make_settings(tmp_path)
    gallery = open_gallery(settings, pipeline.embedder.manifest)
    indexer = BatchIndexer(settings, pipeline, gallery, workers=1, batch_size=2)
    real_add_many = Gallery.add_many
    calls = {"n": 0}

    def add_then_delete(self: Gallery, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        result = real_add_many(self, *args, **kwargs)  # type: ignore[arg-type]
        calls["n"] += 1
        if calls["n"] == 1:  # an operator deletes Colin Powell after the first batch
            self.delete_subject("Colin_Powell")
        return result

    monkeypatch.setattr(Gallery, "add_many", add_then_delete)
    summary = indexer.run(root)
    subjects = {s.id for s in gallery.list_subjects(0, 10)[0]}
    assert "Colin_Powell" not in subjects and "Tony_Blair" in subjects
    assert summary.counts["subject_deleted"] == 4  # 6 photos, 2 enrolled before the delete
    assert len(gallery.list_faces("Tony_Blair")) == 6
    gallery.close()


def test_worker_processes_enroll_what_threads_enroll(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    root = tmp_path / "people"
    make_tree(root, ["Colin_Powell", "Tony_Blair", "Serena_Williams"], 3)
    (root / "Tony_Blair/notes.jpg").write_bytes(b"not an image at all")
    results = {}
    for processes in (0, 2):
        settings = make_settings(tmp_path / f"p{processes}")
        gallery = open_gallery(settings, pipeline.embedder.manifest)
        try:
            summary = BatchIndexer(settings, pipeline, gallery, processes=processes).run(root)
        finally:
            gallery.close()
        assert summary.counts["enrolled"] == 9 and summary.counts["unreadable"] == 1
        results[processes] = gallery_content(settings.gallery.path)
    assert results[0].keys() == results[2].keys()
    for key, vector in results[0].items():  # the same models give the same embeddings
        assert np.allclose(vector, results[2][key], atol=1e-5)
