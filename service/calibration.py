"""Calibrated operating points: run labelled pairs through the pipeline, measure thresholds by FAR.

``marginface calibrate`` writes the result into the model's manifest, which is then the single
source of truth for thresholds (the service never hard-codes one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from service.errors import InvalidRequest, NoFace
from service.evaluation import Pair, best_threshold, kfold_accuracy, threshold_at_far
from service.models import Calibration
from service.vision.detection import DetectedFace, DetectorOptions, nearest_to_centre
from service.vision.image import decode_image
from service.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

STANDARD_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# Second chance for faces the default detector settings miss (blur, profile): documented, counted.
FALLBACK_OPTIONS = DetectorOptions(score_threshold=0.2, min_face_px=8, upscale_below_px=500)


def far_key(far: float) -> str:
    """How a FAR is written as a manifest key: '1e-03'."""
    return f"{far:.0e}"


@dataclass
class PairScores:
    """Cosine scores of labelled pairs and what the pipeline did to get them."""

    scores: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    images: int
    fallback_detections: list[str] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    embeddings: dict[Path, np.ndarray] = field(default_factory=dict, repr=False)


FacePick = Literal["central", "choice"]


def face_embedding(
    pipeline: FacePipeline, image: np.ndarray, pick: FacePick = "central"
) -> tuple[np.ndarray | None, bool]:
    """The embedding of the image's face by ``pick``: ``central``, the face nearest the image
    centre (LFW's labelled person: the protocol), or ``choice``, the face verify would use
    (``FacePipeline.choose_face``: validity, quality and size).

    Returns (embedding or None, whether the fallback detector settings were needed).
    """
    if pick == "choice":
        for options, fallback in ((None, False), (FALLBACK_OPTIONS, True)):
            try:
                return pipeline.choose_face(image, options=options).face.embedding, fallback
            except NoFace:
                continue
        return None, True
    face, fallback = central_face(pipeline, image)
    if face is None:
        return None, True
    return pipeline.embed_detections(image, [face])[0].embedding, fallback


def central_face(pipeline: FacePipeline, image: np.ndarray) -> tuple[DetectedFace | None, bool]:
    """The evaluation protocol's face: nearest the centre, with one documented second pass.

    Returns (face or None, whether the fallback detector settings were needed).
    """
    for options, fallback in ((None, False), (FALLBACK_OPTIONS, True)):
        detections = pipeline.detect(image, options)
        if detections:
            return nearest_to_centre(detections, image.shape[1], image.shape[0]), fallback
    return None, True


def score_pairs(
    pipeline: FacePipeline,
    pairs: list[Pair],
    *,
    progress: bool = True,
    pick: FacePick = "central",
) -> PairScores:
    """Embed each image once (cached) and score every pair; a faceless image scores -1."""
    cache: dict[Path, np.ndarray | None] = {}
    fallback: list[str] = []

    unique = sorted({p.a for p in pairs} | {p.b for p in pairs})
    for path in tqdm(unique, desc="embedding", unit="img", disable=not progress):
        vector, used_fallback = face_embedding(pipeline, decode_image(path.read_bytes()), pick)
        cache[path] = vector
        if used_fallback and vector is not None:
            fallback.append(str(path))
    no_face = [str(p) for p, v in cache.items() if v is None]
    scores = np.array(
        [
            -1.0
            if cache[p.a] is None or cache[p.b] is None
            else float(np.dot(cache[p.a], cache[p.b]))  # type: ignore[arg-type]
            for p in pairs
        ]
    )
    return PairScores(
        scores=scores,
        same=np.array([p.same for p in pairs]),
        folds=np.array([p.fold for p in pairs]),
        images=len(unique),
        fallback_detections=fallback,
        no_face=no_face,
        embeddings={p: v for p, v in cache.items() if v is not None},
    )


def cross_identity_scores(embeddings: dict[Path, np.ndarray], block: int = 2048) -> np.ndarray:
    """Scores of every pair of images of different people (identity = the image's folder name).

    LFW's 3,000 impostor pairs cannot pin down a FAR below 1e-3; the ~30 million cross-identity
    pairs among the same images support FARs down to 1e-6, which 1:N search needs.
    """
    paths = sorted(embeddings)
    ids = np.array([p.parent.name for p in paths])
    vecs = np.stack([embeddings[p] for p in paths]).astype(np.float32)
    chunks = []
    for start in range(0, len(paths), block):
        sims = vecs[start : start + block] @ vecs.T  # (b, N)
        rows = np.arange(start, min(start + block, len(paths)))
        upper = rows[:, None] < np.arange(len(paths))[None, :]  # each unordered pair once
        different = ids[rows][:, None] != ids[None, :]
        chunks.append(sims[upper & different])
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def calibrate(result: PairScores, dataset: str, *, all_cross_identity: bool = False) -> Calibration:
    """Thresholds for every FAR the impostor pairs can support, plus the best-accuracy one.

    With ``all_cross_identity`` the FAR thresholds rest on every pair of different people among
    the images (folder name = identity), not only on the listed impostor pairs.
    """
    impostors = result.scores[~result.same]
    source = "the impostor pairs of the pairs file"
    if all_cross_identity:
        impostors = cross_identity_scores(result.embeddings)
        source = f"all cross-identity pairs among the {len(result.embeddings)} images"
    by_far = {}
    for far in STANDARD_FARS:
        try:
            by_far[far_key(far)] = round(threshold_at_far(impostors, far), 6)
        except ValueError as exc:
            log.warning("skipping FAR %g: %s", far, exc)
    mean, std, _ = kfold_accuracy(result.scores, result.same, result.folds)
    best, _ = best_threshold(result.scores, result.same)
    return Calibration(
        dataset=dataset,
        pairs=len(result.scores),
        impostor_pairs=len(impostors),
        thresholds_by_far=by_far,
        best_accuracy_threshold=round(best, 6),
        kfold_accuracy_mean=round(mean, 6),
        kfold_accuracy_std=round(std, 6),
        impostor_source=source,
        images=result.images,
        images_without_face=len(result.no_face),
        images_via_fallback_detection=len(result.fallback_detections),
    )


def threshold_for_far(calibration: Calibration | None, far: float) -> tuple[float, float]:
    """The calibrated threshold for the strictest calibrated FAR that is <= the requested one.

    Returns (threshold, the calibrated FAR used). Raises an error the API reports as 422 when the
    model is not calibrated or the FAR is below what the calibration supports.
    """
    if not 0.0 < far < 1.0:
        raise InvalidRequest(f"far must be in (0, 1), got {far}")
    if calibration is None or not calibration.thresholds_by_far:
        raise InvalidRequest("this model has no calibration; pass threshold= instead of far=")
    table = sorted((float(k), v) for k, v in calibration.thresholds_by_far.items())
    usable = [(f, t) for f, t in table if f <= far * (1 + 1e-9)]
    if not usable:
        raise InvalidRequest(
            f"far={far:g} is below the lowest FAR the calibration supports ({table[0][0]:g}, "
            f"from {calibration.impostor_pairs} impostor pairs of {calibration.dataset})"
        )
    chosen_far, threshold = usable[-1]
    return float(threshold), chosen_far


def calibrated_far(calibration: Calibration | None, score: float) -> float | None:
    """The calibrated FAR a cosine reaches: the strictest calibrated operating point whose
    threshold it is at or above (how often a stranger scores as high, per comparison); None
    without a calibration or below its loosest point."""
    if calibration is None:
        return None
    reached = [float(k) for k, t in calibration.thresholds_by_far.items() if score >= t]
    return min(reached, default=None)


def read_pairs_csv(path: Path) -> list[Pair]:
    """A CSV of image_a,image_b,same (1/0, yes/no, true/false); paths relative to the CSV."""
    import csv

    truthy, falsy = {"1", "yes", "true", "same"}, {"0", "no", "false", "different"}
    pairs = []
    with path.open() as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            flag = str(row.get("same", "")).strip().lower()
            if flag not in truthy | falsy or not row.get("image_a") or not row.get("image_b"):
                raise ValueError(
                    f"row {i + 2} of {path}: need image_a,image_b,same (1/0 or yes/no)"
                )
            pairs.append(
                Pair(
                    path.parent / row["image_a"],
                    path.parent / row["image_b"],
                    flag in truthy,
                    i % 10,
                )
            )
    return pairs
