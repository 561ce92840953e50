"""Moving from CompreFace: copy a running CompreFace's subjects and example images, through
CompreFace's own REST API (list subjects, list examples page by page, download each example
image), into this gallery through ``Recognition.enroll`` (the one enrollment path).

Resumable: each example done is appended to a state file (JSON lines, flushed per line) and
skipped when the command runs again; an image already enrolled for its subject is a no-op
anyway (same sha256). The report says, per example, what happened and why.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode
from urllib.request import Request, urlopen

from service.api.compreface.collection import FaceCollection
from service.errors import MarginFaceError
from service.recognition import Recognition

#: outcomes of one example (the report's counts)
OUTCOMES = (
    "imported",  # a new face in the gallery
    "already_enrolled",  # the same image was already enrolled for this subject
    "done_before",  # listed in the state file: copied by an earlier run
    "no_image",  # CompreFace kept no image for it (save_images_to_db off): nothing to embed
    "refused",  # the image is not usable here (no face, not an image, ...): see the reason
    "download_failed",  # CompreFace did not answer for it: run the command again
)


class CompreFaceUnavailable(MarginFaceError):
    """CompreFace did not answer a listing (wrong URL, wrong key, down): nothing to resume from."""

    code = "compreface_unavailable"
    status = 502


class DownloadFailed(Exception):
    """One example's image could not be fetched (the run goes on; a later run retries it)."""


class CompreFaceSource:
    """The part of CompreFace's REST API the import reads, with its recognition key (plain
    urllib: no client library needed for three GET routes)."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 60.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise CompreFaceUnavailable(f"CompreFace's URL must be http(s)://..., got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def _get(self, path: str, **params: Any) -> bytes:
        url = self.base_url + path + (f"?{urlencode(params)}" if params else "")
        request = Request(url, headers={"x-api-key": self.api_key})
        with urlopen(request, timeout=self.timeout_s) as response:
            body: bytes = response.read()
            return body

    def _json(self, path: str, **params: Any) -> Any:
        try:
            return json.loads(self._get(path, **params))
        except HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise CompreFaceUnavailable(
                f"CompreFace answered {exc.code} to {path}: {detail}", status=exc.code
            ) from exc
        except (URLError, OSError, ValueError) as exc:
            raise CompreFaceUnavailable(f"CompreFace did not answer {path}: {exc}") from exc

    def subjects(self) -> list[str]:
        """Every subject's name."""
        return [str(s) for s in self._json("/api/v1/recognition/subjects")["subjects"]]

    def examples(self, page_size: int = 100) -> Iterator[tuple[str, str]]:
        """(image id, subject) of every example, page by page."""
        page = 0
        while True:
            body = self._json("/api/v1/recognition/faces", page=page, size=page_size)
            for face in body["faces"]:
                yield str(face["image_id"]), str(face["subject"])
            page += 1
            if page >= int(body.get("total_pages", 0)):
                return

    def image(self, image_id: str) -> bytes:
        """An example's image (empty when CompreFace kept none); DownloadFailed."""
        try:
            return self._get(f"/api/v1/recognition/faces/{quote(image_id, safe='')}/img")
        except (URLError, OSError) as exc:  # HTTPError is a URLError
            raise DownloadFailed(str(exc)) from exc


@dataclass
class ImportReport:
    """What the import did, example by example."""

    subjects_created: list[str] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        """Examples per outcome."""
        found = Counter(e["outcome"] for e in self.examples)
        return {k: found.get(k, 0) for k in OUTCOMES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "examples": len(self.examples),
            **self.counts,
            "subjects_created": self.subjects_created,
            "seconds": round(self.seconds, 2),
            "complete": self.counts["download_failed"] == 0,
            "items": self.examples,
        }


def import_compreface(
    rec: Recognition,
    source: CompreFaceSource,
    state_path: Path,
    *,
    page_size: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Copy every subject and example of ``source`` into ``rec``'s gallery (see the module)."""
    started = time.perf_counter()
    report = ImportReport()
    done = _read_state(state_path)
    faces = FaceCollection(rec.gallery)
    for name in source.subjects():  # subjects without examples come across too
        if faces.find(name) is None:
            faces.create(name)
            report.subjects_created.append(name)
    examples = list(source.examples(page_size))
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with state_path.open("a", encoding="utf-8") as state:
        for i, (image_id, subject) in enumerate(examples):
            item = {"image_id": image_id, "subject": subject}
            if image_id in done:
                item["outcome"] = "done_before"
            else:
                item.update(_copy(rec, faces, source, image_id, subject, report))
                if item["outcome"] != "download_failed":
                    state.write(json.dumps({"image_id": image_id, **item}) + "\n")
                    state.flush()
            report.examples.append(item)
            if progress is not None:
                progress(i + 1, len(examples))
    report.seconds = time.perf_counter() - started
    return report


def _copy(
    rec: Recognition,
    faces: FaceCollection,
    source: CompreFaceSource,
    image_id: str,
    subject: str,
    report: ImportReport,
) -> dict[str, str]:
    """Download and enroll one example; its outcome (and reason, face id)."""
    try:
        data = source.image(image_id)
    except DownloadFailed as exc:
        return {"outcome": "download_failed", "reason": str(exc)[:300]}
    if not data:
        return {"outcome": "no_image", "reason": "CompreFace kept no image for this example"}
    target = faces.find(subject)
    if target is None:
        target = faces.create(subject)
        report.subjects_created.append(subject)
    try:
        # CompreFace accepted this image as one face: its largest face is that face
        ((face_id, created, _),) = rec.enroll(target.id, [data], policy="largest")
    except MarginFaceError as exc:
        return {"outcome": "refused", "reason": f"{exc.code}: {exc.message}"}
    outcome = "imported" if created else "already_enrolled"
    return {"outcome": outcome, "face_id": str(face_id)}


def _read_state(path: Path) -> set[str]:
    """Image ids an earlier run finished (a torn last line is ignored: it is redone)."""
    if not path.is_file():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(str(json.loads(line)["image_id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return done
