"""Moving a gallery to another recognizer without re-enrolling anyone (``marginface gallery
migrate-model``).

Every face is re-embedded by the target model from what the gallery kept of it (its face chip,
else its kept photo): the image is detected again with the target's pipeline and the face that
overlaps the stored box best is embedded. The results are staged in the store a batch at a
time (``service.gallery.staging``), beside the live gallery, which keeps serving its current
model: a killed migration resumes where it stopped, and nothing is written twice. Faces that
cannot be re-embedded are listed with the reason, never dropped. When every face is done the
gallery switches (``Gallery.models.switch``): the new index is built and verified first, then
store and index switch with writes held. A rollback is a migration back to the previous model:
its embeddings were staged at the switch, so only faces enrolled since are re-embedded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidRequest, MarginFaceError, ModelError, ModelNotCalibrated
from service.evaluation import iou_matrix
from service.gallery.records import FaceRecord
from service.gallery.staging import ModelPin, ModelStaging
from service.images import ImageVault
from service.models import Manifest, list_models, resolve_model
from service.settings import Settings
from service.vision.chip import face_box_in_chip
from service.vision.image import decode_image
from service.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

#: a re-detected face must overlap the stored box (or its place in the chip) at least this much
MIN_IOU = 0.3
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Target:
    """The model a gallery moves to."""

    manifest: Manifest

    @property
    def pin(self) -> ModelPin:
        """What the gallery will be pinned to."""
        m = self.manifest
        assert m.embedding_dim is not None
        return ModelPin(m.model_id, m.sha256, m.embedding_dim)


def target_model(settings: Settings, name: str, *, allow_uncalibrated: bool = False) -> Target:
    """The registered model ``name`` (weights verified), refused without a calibration unless
    ``allow_uncalibrated`` (identify could not judge its scores). A threshold alone is not one:
    an exported model carries a placeholder until ``marginface calibrate`` measures it."""
    known = {m.name for m in list_models(settings.models_dir) if m.embedding_dim is not None}
    if name not in known:
        raise InvalidRequest(
            f"{name!r} is not a registered recognizer (known: {', '.join(sorted(known))})",
            known=sorted(known),
        )
    manifest, _ = resolve_model(settings.models_dir, name)
    if manifest.embedding_dim is None:
        raise ModelError(f"{name} is not a recognizer (no embedding size in its manifest)")
    if manifest.calibration is None and not allow_uncalibrated:
        raise ModelNotCalibrated(
            f"{name} has no calibrated thresholds (run `marginface calibrate`), so identify "
            "could not judge its scores; allow it explicitly to migrate anyway "
            "(--allow-uncalibrated, or allow_uncalibrated: true)"
        )
    return Target(manifest)


def model_named(settings: Settings, model_id: str) -> str:
    """The registry name of the model whose id is ``model_id`` (a rollback's target)."""
    for manifest in list_models(settings.models_dir):
        if manifest.model_id == model_id:
            return manifest.name
    raise ModelError(
        f"the gallery's previous model {model_id} is not in the registry at "
        f"{settings.models_dir}: restore its folder (manifest and weights) to roll back"
    )


class Reembedder:
    """Embeds a stored face again with the target pipeline, from its kept chip or photo."""

    def __init__(self, pipeline: FacePipeline, vault: ImageVault | None, *, photos: bool) -> None:
        self.pipeline = pipeline
        self.vault = vault
        self.photos = photos  # kept photos are read only where privacy.keep_images said so

    def sources(self, face: FaceRecord) -> list[tuple[str, Callable[[], bytes]]]:
        """What is kept of a face to re-embed it from, best first: (kind, reader). The kept
        photo is the original; the chip a JPEG of its face (what is kept by default)."""
        vault = self.vault
        if vault is None:
            return []
        found: list[tuple[str, Callable[[], bytes]]] = []
        if self.photos and vault.has(face.id):
            found.append(("photo", lambda: vault.get(face.id)))
        if vault.has_chip(face.id):
            found.append(("chip", lambda: vault.chip(face.id)))
        return found

    def embed(self, face: FaceRecord) -> np.ndarray | str:
        """The face's embedding by the target model, or why there is none."""
        sources = self.sources(face)
        if not sources:
            return "nothing kept to re-embed it from (no face chip, no kept photo)"
        reason = ""
        for kind, read in sources:
            try:
                image = decode_image(read())
            except MarginFaceError as exc:
                reason = f"its kept {kind} cannot be read ({exc.message})"
                continue
            x1, y1, x2, y2 = (float(v) for v in face.box)
            box: tuple[float, float, float, float] = (x1, y1, x2, y2)
            if kind == "chip":
                box = face_box_in_chip(box, image.shape[0])
            found = self.pipeline.analyze(image)
            if found:
                overlap = iou_matrix(np.array([box]), np.array([f.box for f in found]))[0]
                best = int(np.argmax(overlap))
                if overlap[best] >= MIN_IOU:
                    return found[best].embedding
            reason = f"the new pipeline finds no face where it was in its kept {kind}"
        return reason


def dry_run(staging: ModelStaging, reembedder: Reembedder, target: Target) -> dict[str, Any]:
    """How many faces a migration to ``target`` can re-embed, by source, without embedding."""
    counts = {"chip": 0, "photo": 0, "nothing_kept": 0}
    after = -1
    while True:
        page = staging.to_embed(target.pin.model_id, after, 1000)
        if not page:
            break
        for face in page:
            kinds = [k for k, _ in reembedder.sources(face)]
            counts[kinds[0] if kinds else "nothing_kept"] += 1
        after = page[-1].id
    progress = staging.progress(target.pin.model_id)
    return {
        "to": target.pin.model_id,
        "from": staging.pin.model_id,
        "dry_run": True,
        **progress,
        "to_embed": sum(counts.values()),
        "from_chip": counts["chip"],
        "from_photo": counts["photo"],
        "cannot_migrate": counts["nothing_kept"],
    }


def stage_all(
    staging: ModelStaging,
    reembedder: Reembedder,
    target: Target,
    *,
    batch: int = 32,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Re-embed every face that still needs it and stage the results, a batch per
    transaction (resumable: what is staged is skipped next time, what failed is tried again)."""
    pin = target.pin
    started = time.monotonic()
    state = staging.progress(pin.model_id)
    total, done = state["faces"], state["on_target"] + state["staged"]  # failed: tried again
    embedded = failed = 0
    after = -1
    while stop is None or not stop.is_set():
        page = staging.to_embed(pin.model_id, after, batch)
        if not page:
            break
        good: list[tuple[int, np.ndarray]] = []
        bad: list[tuple[int, str]] = []
        for face in page:
            result = reembedder.embed(face)
            if isinstance(result, str):
                bad.append((face.id, result))
            else:
                good.append((face.id, result))
        embedded += staging.stage(pin, good)
        staging.record_failures(pin.model_id, bad)
        failed += len(bad)
        done += len(page)
        after = page[-1].id
        if progress is not None:
            progress(done, total)
    return {
        "embedded": embedded,
        "failed_now": failed,
        "seconds": round(time.monotonic() - started, 2),
        **staging.progress(pin.model_id),
    }
