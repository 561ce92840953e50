"""The faces of a folder tree of photos, found with the indexer's parallel read, decode, detect
and batched embed (``service.indexer.analysis_pool``), for clustering.

Which faces: ``all`` (a photo library: every face the detector finds that passes the validity
rule and the ``min_quality`` floor, so a group photo gives each person a face) or ``central``
(one face per photo, the one nearest the centre, as the evaluation protocols take it, e.g. LFW).
Files are read through ``PhotoTree.walk``: links are never followed, and a file over the upload
limit is not read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from service.calibration import central_face
from service.errors import MarginFaceError
from service.indexer import PipelineWorker, analysis_pool
from service.photo_tree import FileTooLarge, LinkSkipped, PhotoTree
from service.settings import Settings
from service.vision.chip import chip_jpeg
from service.vision.image import decode_image
from service.vision.pipeline import FacePipeline

Which = Literal["all", "central"]
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class FoundFace:
    """One face of one photo: where it is, how good it is, and its embedding."""

    file: str
    box: tuple[float, float, float, float]
    quality: float
    embedding: np.ndarray = field(repr=False)
    det_score: float = 1.0
    sha256: str = ""  # of the photo: a face named into the gallery keeps it, as enrollments do
    thumbnail: bytes | None = field(default=None, repr=False)  # JPEG of the aligned crop
    #: the face chip (``service.vision.chip``) a naming keeps in the gallery: the photo is
    #: deleted once its faces are found, so it is cut now (privacy.keep_face_chips)
    chip: bytes | None = field(default=None, repr=False)


@dataclass
class FoundFaces:
    """Every face found, and the photos that gave none (with why)."""

    faces: list[FoundFace] = field(default_factory=list)
    photos: int = 0
    without_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    passed_over: list[str] = field(default_factory=list)  # "name: why" (special, too deep)

    @property
    def embeddings(self) -> np.ndarray:
        """(n, d) float32, in ``faces`` order."""
        if not self.faces:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([f.embedding for f in self.faces]).astype(np.float32)


@dataclass(frozen=True)
class _Rules:
    which: Which
    min_quality: float
    max_pixels: int
    thumbnails: bool = False
    chips: bool = False


def thumbnail(pipeline: FacePipeline, image: np.ndarray, landmarks: np.ndarray) -> bytes:
    """The aligned crop as a small JPEG (what the console shows of a cluster's faces)."""
    import cv2

    crop = pipeline.align(image, landmarks)
    ok, data = cv2.imencode(".jpg", crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    return bytes(data) if ok else b""


def faces_of(
    pipeline: FacePipeline, name: str, data: bytes, rules: _Rules
) -> list[FoundFace] | str:
    """The faces of one photo, or why there are none ('unreadable: ...' or 'no face')."""
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, max_pixels=rules.max_pixels)
    except MarginFaceError as exc:
        return f"unreadable: {exc.message}"
    if rules.which == "central":
        chosen, _ = central_face(pipeline, image)
        faces = pipeline.embed_detections(image, [chosen]) if chosen is not None else []
    else:
        faces = pipeline.analyze(image)
    out = []
    for f in faces:
        q = f.quality.score if f.quality is not None else 1.0
        if rules.which == "all" and q < rules.min_quality:
            continue
        box = (float(f.box[0]), float(f.box[1]), float(f.box[2]), float(f.box[3]))
        thumb = thumbnail(pipeline, image, f.landmarks) if rules.thumbnails else None
        chip = chip_jpeg(image, box) if rules.chips else None
        out.append(
            FoundFace(
                name,
                box,
                round(float(q), 4),
                f.embedding.astype(np.float32),
                det_score=float(f.score),
                sha256=sha,
                thumbnail=thumb,
                chip=chip,
            )
        )
    return out or "no face"


def _faces_in_worker(name: str, data: bytes, rules: _Rules) -> list[FoundFace] | str:
    assert PipelineWorker.pipeline is not None, "the worker process was not started"
    return faces_of(PipelineWorker.pipeline, name, data, rules)


def find_faces(
    root: Path | PhotoTree,
    settings: Settings,
    pipeline: FacePipeline,
    *,
    which: Which = "all",
    thumbnails: bool = False,
    chips: bool = False,
    processes: int = 0,
    threads: int = 2,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
) -> FoundFaces:
    """Every face under ``root`` (any depth; a folder, or a tree opened earlier: a job's, which
    this closes when done), in a stable order of files."""
    rules = _Rules(which, settings.min_quality, settings.limits.max_image_pixels, thumbnails, chips)
    found = FoundFaces()
    tree = root if isinstance(root, PhotoTree) else PhotoTree(root)
    tree.max_file_bytes = settings.limits.max_upload_bytes
    with tree:
        photos, found.skipped = tree.walk()
        found.passed_over = [f"{name}: {why}" for why, name in tree.passed_over]
        found.photos = len(photos)
        pool = analysis_pool(settings, processes=processes, threads=threads)
        with pool:

            def submit() -> Iterator[tuple[str, Future[list[FoundFace] | str]]]:
                for photo in photos:
                    try:
                        data = tree.read(photo)
                    except (LinkSkipped, FileTooLarge, OSError) as exc:
                        failed: Future[list[FoundFace] | str] = Future()
                        failed.set_result(f"unreadable: {exc}")
                        yield photo.name, failed
                        continue
                    if processes:
                        yield photo.name, pool.submit(_faces_in_worker, photo.name, data, rules)
                    else:
                        yield photo.name, pool.submit(faces_of, pipeline, photo.name, data, rules)

            window: deque[tuple[str, Future[list[FoundFace] | str]]] = deque()
            limit = max(processes, threads) * 8
            done = 0

            def take() -> None:
                nonlocal done
                name, future = window.popleft()
                result = future.result()
                if isinstance(result, str):
                    (found.without_face if result == "no face" else found.unreadable).append(
                        name if result == "no face" else f"{name}: {result}"
                    )
                else:
                    found.faces.extend(result)
                done += 1
                if progress is not None:
                    progress(done, len(photos))

            for item in submit():
                if cancel is not None and cancel():
                    break
                window.append(item)
                if len(window) >= limit:
                    take()
            while window:
                take()
    return found
