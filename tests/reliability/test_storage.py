"""What the service leaves on disk, and how it behaves when the disk is full, against a real
uvicorn process: job working folders never outlive their job (not after SIGKILL, not when a
queued job is cut short by SIGTERM), and a full disk refuses writes with 507 while deletes
(erasure) still succeed and the service still starts."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.backends import free_port
from tests.conftest import DATA, read
from tests.test_server import HEADERS, server

LFW = DATA / "lfw" / "images"
GLINT = DATA / "glint24_aligned"


def lfw_zip(people: int, per_person: int) -> bytes:
    """A zip of <person>/<photo> entries from LFW (people with enough photos)."""
    names = [d.name for d in sorted(LFW.iterdir()) if len(list(d.iterdir())) >= per_person]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names[:people]:
            for photo in sorted((LFW / name).glob("*.jpg"))[:per_person]:
                zf.write(photo, f"{name}/{photo.name}")
    return buf.getvalue()


def submit(c: httpx.Client, data: bytes) -> str:
    r = c.post("/v1/jobs/index", files={"archive": ("people.zip", data, "application/zip")})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def leftovers(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir()) if work.is_dir() else []


def wait_running(c: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["done"] > 0:
            return
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_job_folders_are_removed_after_sigkill_and_after_sigterm_with_a_queued_job(
    tmp_path: Path,
) -> None:
    """Issue 12, finding 7: after a SIGKILL during a zip job, or a SIGTERM while a job is
    queued, the unpacked photos stayed in jobs/upload-*/tree, and nothing removed them at
    start-up (this broke "photos are not kept by default")."""
    work = tmp_path / "jobs"
    env = {"MARGINFACE_JOBS__WORK_DIR": str(work)}
    gallery, port = tmp_path / "gallery", free_port()
    base = f"http://127.0.0.1:{port}"
    big = lfw_zip(people=40, per_person=6)
    with server(gallery, port, env) as proc, httpx.Client(base_url=base, headers=HEADERS) as c:
        wait_running(c, submit(c, big))
        assert leftovers(work)  # the unpacked upload exists while the job runs
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert leftovers(work), "the SIGKILL left nothing to clean: the test cannot fail"
    with server(gallery, port, env) as proc, httpx.Client(base_url=base, headers=HEADERS) as c:
        assert leftovers(work) == []  # removed at start-up
        wait_running(c, submit(c, big))
        queued = submit(c, lfw_zip(people=3, per_person=2))
        assert c.get(f"/v1/jobs/{queued}").json()["status"] == "queued"
        assert len(leftovers(work)) == 2
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode is not None
    assert leftovers(work) == []  # the running job's folder and the queued one's


# ---- a full disk


@contextlib.contextmanager
def small_disk(path: Path, size: str = "24m") -> Iterator[Path]:
    """A real file system of its own (tmpfs) at ``path``, to fill up."""
    path.mkdir(parents=True, exist_ok=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    mount = subprocess.run(
        [*sudo, "mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:  # fail, not skip: this is the proof of the disk-full promise
        raise RuntimeError(f"cannot mount a tmpfs for the disk-full test: {mount.stderr}")
    try:
        yield path
    finally:
        subprocess.run([*sudo, "umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the file system refuses; returns it."""
    filler = disk / "filler.bin"
    chunk = b"\0" * 65536
    with filler.open("wb") as fh:
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError:
            pass
    with contextlib.suppress(OSError), filler.open("ab") as fh:  # the last partial blocks
        while True:
            fh.write(b"\0" * 512)
            fh.flush()
    return filler


def enroll_aligned(c: httpx.Client, subject: str, photos: list[Path]) -> httpx.Response:
    files = [("files", (p.name, read(p), "image/jpeg")) for p in photos]
    return c.post(f"/v1/subjects/{subject}/faces", files=files, params={"aligned": "true"})


def identify_aligned(c: httpx.Client, photo: Path) -> dict[str, object]:
    r = c.post(
        "/v1/identify",
        files={"image": (photo.name, read(photo), "image/jpeg")},
        data={"aligned": "true"},
    )
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert isinstance(faces, list)
    return dict(faces[0])


def test_a_full_disk_refuses_writes_with_507_keeps_the_gallery_and_still_erases(
    tmp_path: Path,
) -> None:
    """Issue 12, finding 8: a full disk was a 500, deletes included, and the service then
    refused to restart until the volume grew."""
    people = sorted(d.name for d in GLINT.iterdir())[:3]
    photos = {n: sorted((GLINT / n).glob("*.jpg"), key=lambda p: int(p.stem)) for n in people}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with small_disk(tmp_path / "disk") as disk:
        gallery = disk / "gallery"
        env = {"MARGINFACE_JOBS__WORK_DIR": str(disk / "jobs")}
        with (
            server(gallery, port, env, log_dir=tmp_path),
            httpx.Client(base_url=base, headers=HEADERS) as c,
        ):
            for name in people[:2]:
                assert c.post("/v1/subjects", json={"id": name, "name": name}).status_code == 201
                assert enroll_aligned(c, name, photos[name][:3]).status_code == 201
            filler = fill(disk)
            assert c.post("/v1/subjects", json={"id": "new", "name": "N"}).status_code in (
                201,
                507,
            )  # a subject row may still fit in a free page
            r = enroll_aligned(c, people[0], photos[people[0]][3:9])
            assert r.status_code == 507, r.text
            assert r.json()["error"]["code"] == "insufficient_storage"
            faces = c.get(f"/v1/subjects/{people[0]}/faces").json()
            assert len(faces) == 3  # all or nothing: the refused batch left no face behind
            match = identify_aligned(c, photos[people[0]][10])["match"]
            assert isinstance(match, dict) and match["subject_id"] == people[0]
            r = c.delete(f"/v1/subjects/{people[1]}")  # erasure must work on a full disk
            assert r.status_code == 200, r.text
            assert c.get(f"/v1/subjects/{people[1]}").status_code == 404
        with (
            server(gallery, port, env, log_dir=tmp_path),
            httpx.Client(base_url=base, headers=HEADERS) as c,
        ):
            ready = c.get("/readyz").json()
            assert ready["gallery"]["faces"] == ready["gallery"]["indexed"] == 3
            assert c.get(f"/v1/subjects/{people[1]}").status_code == 404
            match = identify_aligned(c, photos[people[0]][11])["match"]
            assert isinstance(match, dict) and match["subject_id"] == people[0]
            filler.unlink()  # space again: writes work again
            r = enroll_aligned(c, people[2], photos[people[2]][:2])
            if r.status_code == 404:
                assert (
                    c.post("/v1/subjects", json={"id": people[2], "name": "x"}).status_code == 201
                )
                r = enroll_aligned(c, people[2], photos[people[2]][:2])
            assert r.status_code == 201, r.text
    shutil.rmtree(tmp_path / "disk", ignore_errors=True)


def test_export_on_a_full_disk_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    """Issue 25, finding 6: an export whose working folder's disk is full answered 500
    (sqlite3.OperationalError 'database or disk is full' from the backup)."""
    people = sorted(d.name for d in GLINT.iterdir())[:2]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with small_disk(tmp_path / "disk", size="2m") as disk:
        env = {"MARGINFACE_JOBS__WORK_DIR": str(disk / "jobs")}
        with (
            server(tmp_path / "gallery", port, env, log_dir=tmp_path),
            httpx.Client(base_url=base, headers=HEADERS, timeout=60) as c,
        ):
            for name in people:
                assert c.post("/v1/subjects", json={"id": name, "name": name}).status_code == 201
                photos = sorted((GLINT / name).glob("*.jpg"))[:4]
                assert enroll_aligned(c, name, photos).status_code == 201
            (disk / "jobs").mkdir(exist_ok=True)
            filler = fill(disk)
            r = c.get("/v1/gallery/export")
            assert r.status_code == 507, r.text
            assert r.json()["error"]["code"] == "insufficient_storage"
            assert [p.name for p in (disk / "jobs").iterdir()] == []  # nothing half-written
            filler.unlink()
            r = c.get("/v1/gallery/export")
            assert r.status_code == 200, r.text
            assert r.content.startswith(b"SQLite format 3\0")
    shutil.rmtree(tmp_path / "disk", ignore_errors=True)
