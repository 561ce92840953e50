"""Admin routes: batch index jobs (a zip upload or a server-side folder), and gallery export."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from service.api.deps import AppState, IsAdmin, State
from service.archive import archive_root, extract_zip
from service.errors import Forbidden, InsufficientStorage, InvalidRequest
from service.gallery import export_store
from service.gallery.backends import embedded_folder
from service.jobs import WorkFolder
from service.photo_tree import LinkSkipped, PhotoTree
from service.schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[IsAdmin])
MAX_PATH_CHARS = 4096  # PATH_MAX
MAX_NAME_BYTES = 255  # NAME_MAX


def checked_path(path: str) -> Path:
    """A server-side folder a caller named, resolved; InvalidRequest for what no file system
    holds (NUL, over PATH_MAX, a name over NAME_MAX) instead of an OSError."""
    if "\x00" in path:
        raise InvalidRequest("path has a NUL byte")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidRequest(f"path is longer than {MAX_PATH_CHARS} characters")
    try:
        parts = [part.encode("utf-8") for part in Path(path).parts]
    except UnicodeEncodeError as exc:
        raise InvalidRequest("path is not valid text") from exc
    if any(len(part) > MAX_NAME_BYTES for part in parts):
        raise InvalidRequest(f"a name in path is longer than {MAX_NAME_BYTES} bytes")
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # a link loop, say
        raise InvalidRequest(f"path cannot be resolved ({exc})") from exc


def held_folder(path: str, allowed_roots: list[Path]) -> tuple[Path, PhotoTree]:
    """The resolved folder a caller named and its tree, opened now: the folder must be under
    an allowed root when it is resolved and when it is opened (one component at a time, no
    link followed); the job reads that descriptor, so nothing renamed or linked afterwards
    changes what it reads. InvalidRequest, Forbidden."""
    root = checked_path(path)
    allowed = [Path(r).resolve() for r in allowed_roots]
    if not any(root == a or a in root.parents for a in allowed):
        raise Forbidden(
            f"{path!r} is not under an allowed root; set MARGINFACE_JOBS__ALLOWED_ROOTS",
            allowed_roots=[str(a) for a in allowed],
        )
    try:
        return root, PhotoTree.held(root)
    except LinkSkipped as exc:
        raise InvalidRequest(f"{path[:200]!r} changed while it was being checked") from exc
    except OSError as exc:
        raise InvalidRequest(f"{path[:200]!r} is not a folder on the server") from exc


def job_source(
    state: AppState, archive: UploadFile | None, path: str | None, prefix: str
) -> tuple[str, PhotoTree, WorkFolder | None]:
    """(source, tree opened now, working folder) of a job: a server-side folder under an
    allowed root (``held_folder``), or a zip unpacked into a new working folder with the
    archive rules (index and cluster jobs alike)."""
    if (archive is None) == (path is None):
        raise InvalidRequest("send either a zip file in 'archive' or a server-side 'path'")
    jobs = state.jobs
    settings = state.settings.jobs
    if path is not None:
        root, opened = held_folder(path, settings.allowed_roots)
        return f"path:{root}", opened, None
    assert archive is not None
    folder = jobs.folders.create(prefix) if jobs.folders else None
    if folder is None:
        raise InvalidRequest("this service has no working folder for uploads")
    dest = folder.path
    try:
        upload = dest / "upload.zip"
        try:
            with upload.open("wb") as out:
                shutil.copyfileobj(archive.file, out, 1 << 20)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise InsufficientStorage(f"the disk holding job uploads is full ({exc})") from exc
            raise
        tree = dest / "tree"
        extract_zip(
            upload,
            tree,
            max_entries=settings.max_entries,
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_ratio=settings.max_ratio,
            reserve=folder.reserve,
        )
        upload.unlink()
        held = PhotoTree.held(archive_root(tree).resolve())
    except BaseException:
        folder.remove()
        raise
    return f"zip:{archive.filename or 'upload.zip'}", held, folder


@router.post("/index", status_code=202)
def submit_index_job(
    state: State,
    archive: Annotated[UploadFile | None, File(description="zip of <subject_id>/<image>")] = None,
    path: Annotated[str | None, Form(description="a folder under an allowed root")] = None,
) -> JobOut:
    """Enroll a folder per subject in bulk; answers at once with a job to poll."""
    source, tree, folder = job_source(state, archive, path, "upload")
    return JobOut(**state.jobs.submit(source, tree, folder).to_dict())


@router.get("/{job_id}")
def get_job(job_id: str, state: State) -> JobOut:
    """Progress (done, total, images/s, ETA) and, when finished, the summary."""
    return JobOut(**state.jobs.describe(job_id))


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: str, state: State) -> None:
    """Forget a job now (a running one is cancelled); a cluster job's thumbnails and
    embeddings are deleted with it."""
    state.jobs.delete(job_id)


@router.get("/{job_id}/report", response_class=FileResponse)
def get_job_report(job_id: str, state: State) -> FileResponse:
    """The full report of a finished job: every file behind each count (the job's record
    keeps a sample); kept as long as the job is."""
    return FileResponse(
        state.jobs.get(job_id).report_file(),
        media_type="application/json",
        filename=f"job-{job_id}-report.json",
    )


@router.get("")
def list_jobs(
    state: State,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[JobOut]:
    """A page of the jobs since the service started, newest first."""
    return [JobOut(**record) for record in state.jobs.describe_all(offset, limit)]


export_router = APIRouter(prefix="/v1/gallery", tags=["gallery"], dependencies=[IsAdmin])


@export_router.get("/export", response_class=FileResponse)
def export_gallery(state: State) -> FileResponse:
    """A consistent backup of the gallery's store (SQLite), taken while the service runs."""
    source = embedded_folder(state.settings.gallery)
    if state.jobs.folders is None:
        raise InvalidRequest("this service has no working folder for exports")
    folder = state.jobs.folders.create("export")  # removed after sending, or at the next start
    try:
        target = folder.path / "gallery.sqlite3"
        export_store(source, target)
    except BaseException:
        folder.remove()
        raise
    return FileResponse(
        target,
        media_type="application/vnd.sqlite3",
        filename="marginface-gallery.sqlite3",
        background=BackgroundTask(folder.remove),
    )
