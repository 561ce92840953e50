"""Evaluation protocols, pure numpy: detection recall, landmark error, verification accuracy.

Shared by the tests, the benchmark scripts, the CLI and training (which imports it; never the
reverse).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) against every box in b (M, 4), boxes as x1, y1, x2, y2."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_detections(gt: np.ndarray, pred: np.ndarray, iou_threshold: float) -> np.ndarray:
    """For each ground-truth box, the index of its greedily matched prediction, or -1."""
    out = np.full(len(gt), -1, dtype=np.int64)
    if len(gt) == 0 or len(pred) == 0:
        return out
    ious = iou_matrix(gt, pred)
    taken: set[int] = set()
    for flat in np.argsort(-ious, axis=None):
        g, p = divmod(int(flat), ious.shape[1])
        if ious[g, p] < iou_threshold:
            break
        if out[g] < 0 and p not in taken:
            out[g] = p
            taken.add(p)
    return out


def interocular_nme(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Mean 5-point error per face, divided by the distance between the ground-truth eye centres."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 5, 2)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 5, 2)
    interocular = np.linalg.norm(gt[:, 0] - gt[:, 1], axis=1)
    errors = np.linalg.norm(pred - gt, axis=2).mean(axis=1)
    return errors / np.maximum(interocular, 1e-9)


@dataclass(frozen=True)
class Pair:
    """Two image paths and whether they show the same person."""

    a: Path
    b: Path
    same: bool
    fold: int


def read_lfw_pairs(pairs_file: Path, images_dir: Path) -> list[Pair]:
    """Parse LFW's View-2 pairs.txt (first line: folds and pairs per class per fold)."""
    lines = [ln.split() for ln in pairs_file.read_text().splitlines() if ln.strip()]
    folds, per_class = int(lines[0][0]), int(lines[0][1])
    pairs = []

    def path(name: str, number: str) -> Path:
        return images_dir / name / f"{name}_{int(number):04d}.jpg"

    for i, parts in enumerate(lines[1:]):
        fold = i // (2 * per_class)
        if fold >= folds:
            break
        if len(parts) == 3:
            pairs.append(Pair(path(parts[0], parts[1]), path(parts[0], parts[2]), True, fold))
        elif len(parts) == 4:
            pairs.append(Pair(path(parts[0], parts[1]), path(parts[2], parts[3]), False, fold))
        else:
            raise ValueError(f"line {i + 2} of {pairs_file} is neither 3 nor 4 fields: {parts}")
    return pairs


def balanced_pairs(pairs: list[Pair], limit: int) -> list[Pair]:
    """``limit`` pairs (a multiple of 20): an equal share of each of the 10 folds, half
    same-person and half different-person (each fold of pairs.txt lists its same pairs first,
    so the first N of a fold would all be same pairs)."""
    per_class = limit // 20
    chosen = []
    for fold in range(10):
        for same in (True, False):
            chosen += [p for p in pairs if p.fold == fold and p.same == same][:per_class]
    return chosen


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs judged right when score >= threshold means 'same'."""
    return float(((np.asarray(scores) >= threshold) == np.asarray(same, dtype=bool)).mean())


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold with the highest accuracy on these pairs, and that accuracy.

    Candidates are midpoints between sorted scores, so the choice does not depend on a grid.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same_b = np.asarray(same, dtype=bool)
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_same = scores[order], same_b[order]
    u = np.unique(sorted_scores)
    candidates = np.concatenate([[u[0] - 1e-6], (u[1:] + u[:-1]) / 2, [u[-1] + 1e-6]])
    below = np.searchsorted(sorted_scores, candidates, side="left")  # rejected: scores < t
    impostors_below = np.concatenate([[0], np.cumsum(~sorted_same)])
    genuine_below = np.concatenate([[0], np.cumsum(sorted_same)])
    correct = impostors_below[below] + (sorted_same.sum() - genuine_below[below])
    i = int(np.argmax(correct))
    return float(candidates[i]), float(correct[i] / len(scores))


def kfold_accuracy(
    scores: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> tuple[float, float, list[float]]:
    """LFW protocol: for each fold, pick the threshold on the other folds, test on this one.

    Returns mean accuracy, standard deviation, and the per-fold thresholds.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    accs, thresholds = [], []
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        t, _ = best_threshold(scores[train], same[train])
        thresholds.append(t)
        accs.append(accuracy_at(scores[test], same[test], t))
    return float(np.mean(accs)), float(np.std(accs)), thresholds


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """The lowest cosine threshold whose false-accept rate on these impostor pairs is <= far.

    Raises ValueError when the data cannot support the FAR: fewer than 1/far impostor pairs means
    not one false accept can be observed at that rate.
    """
    scores = np.sort(np.asarray(impostor_scores, dtype=np.float64))[::-1]
    n = len(scores)
    if not 0.0 < far < 1.0:
        raise ValueError(f"FAR must be in (0, 1), got {far}")
    if n * far < 1.0:
        raise ValueError(
            f"FAR {far:g} needs at least {int(np.ceil(1 / far))} impostor pairs, have {n}"
        )
    allowed = int(np.floor(far * n))  # false accepts we may keep
    # accept score >= t: put t just above the (allowed+1)-th highest impostor score
    return float(np.nextafter(scores[allowed], np.inf))


def far_at(impostor_scores: np.ndarray, threshold: float) -> float:
    """Fraction of impostor pairs accepted at this threshold."""
    return float((np.asarray(impostor_scores) >= threshold).mean())


def tar_at(genuine_scores: np.ndarray, threshold: float) -> float:
    """Fraction of genuine pairs accepted at this threshold."""
    return float((np.asarray(genuine_scores) >= threshold).mean())


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, threshold) at every distinct score, from strict to lenient."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each score value
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    tar = np.r_[0.0, tp / max(1, y.sum())]
    far = np.r_[0.0, fp / max(1, (~y).sum())]
    thresholds = np.r_[np.inf, s[distinct]]
    return far, tar, thresholds


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve."""
    far, tar, _ = roc_curve(scores, same)
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> float:
    """The error rate where false accepts and false rejects are equal (interpolated)."""
    far, tar, _ = roc_curve(scores, same)
    frr = 1.0 - tar
    i = int(np.argmax(far >= frr))
    if i == 0:
        return float(far[0])
    # linear interpolation between points i-1 and i of (far - frr)
    d0, d1 = far[i - 1] - frr[i - 1], far[i] - frr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def verification_report(
    scores: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray,
    fars: tuple[float, ...] = (1e-1, 1e-2, 1e-3),
) -> dict[str, object]:
    """The LFW-style report: 10-fold accuracy, best-threshold accuracy, EER, AUC, TAR at FARs."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    mean, std, fold_thresholds = kfold_accuracy(scores, same, folds)
    best_t, best_acc = best_threshold(scores, same)
    impostors, genuine = scores[~same], scores[same]
    tar: dict[str, object] = {}
    for far in fars:
        try:
            t = threshold_at_far(impostors, far)
            tar[f"{far:.0e}"] = {"tar": tar_at(genuine, t), "threshold": t}
        except ValueError as exc:
            tar[f"{far:.0e}"] = {"tar": None, "reason": str(exc)}
    return {
        "pairs": len(scores),
        "kfold_accuracy_mean": mean,
        "kfold_accuracy_std": std,
        "kfold_thresholds": fold_thresholds,
        "best_threshold": best_t,
        "best_threshold_accuracy": best_acc,
        "eer": equal_error_rate(scores, same),
        "roc_auc": roc_auc(scores, same),
        "tar_at_far": tar,
    }


# ---- open-set identification (1:N with strangers)


def open_set_split(
    people: Mapping[str, Sequence[T]],
    *,
    enrolled: int,
    gallery_photos: int,
    probes_per_person: int,
) -> tuple[dict[str, list[T]], list[tuple[str, T]]]:
    """The usual open-set split of folder-per-person data: the first ``enrolled`` people (in
    name order) are enrolled with their first ``gallery_photos`` items; every person gives up
    to ``probes_per_person`` probes from the items not enrolled (strangers: from the start).
    Returns (gallery: person -> items, probes: (person, item))."""
    names = sorted(people)
    gallery = {n: list(people[n][:gallery_photos]) for n in names[:enrolled]}
    probes: list[tuple[str, T]] = []
    for name in names:
        start = gallery_photos if name in gallery else 0
        probes += [(name, item) for item in people[name][start:][:probes_per_person]]
    return gallery, probes


def open_set_search(
    gallery: Mapping[str, np.ndarray],
    probes: Sequence[tuple[str, np.ndarray]],
    *,
    top_k: int = 5,
) -> tuple[list[tuple[float, bool]], list[bool], list[float]]:
    """Search each probe embedding against the enrolled people (a person's score: their best
    face's cosine). Returns what ``identification_report`` takes: (top-1 score, top-1 right) and
    rank-k hit per mated probe, and the top-1 score per non-mated probe. An empty gallery (no
    enrolled face) gives no mated results and top-1 scores of -1."""
    names = [n for n, v in gallery.items() if len(v)]
    mated: list[tuple[float, bool]] = []
    rank_k: list[bool] = []
    non_mated: list[float] = []
    for person, vector in probes:
        if names:
            best = np.array([float(np.max(gallery[n] @ vector)) for n in names])
            order = np.argsort(-best)
            top_score, top_name = float(best[order[0]]), names[int(order[0])]
        else:
            order, top_score, top_name = np.array([], dtype=int), -1.0, ""
        if person in gallery:
            mated.append((top_score, top_name == person))
            rank_k.append(person in {names[int(i)] for i in order[:top_k]})
        else:
            non_mated.append(top_score)
    return mated, rank_k, non_mated


def identification_report(
    mated_top: list[tuple[float, bool]],
    mated_rank5: list[bool],
    non_mated_top: list[float],
    fpirs: tuple[float, ...] = (1e-1, 1e-2),
) -> dict[str, object]:
    """Rank-1/rank-5 rates of enrolled people; DIR at FPIR for people who are not enrolled.

    mated_top: (top-1 score, top-1 is the right person) per probe of an enrolled person;
    non_mated_top: top-1 score per probe of a person who is not enrolled.
    """
    scores = np.array([s for s, _ in mated_top])
    right = np.array([r for _, r in mated_top], dtype=bool)
    report: dict[str, object] = {
        "mated_probes": len(mated_top),
        "non_mated_probes": len(non_mated_top),
        "rank1": float(right.mean()) if len(right) else None,
        "rank5": float(np.mean(mated_rank5)) if mated_rank5 else None,
    }
    dirs: dict[str, dict[str, object]] = {}
    for fpir in fpirs:
        try:
            t = threshold_at_far(np.asarray(non_mated_top), fpir)
        except ValueError as exc:
            dirs[f"{fpir:.0e}"] = {"dir": None, "reason": str(exc)}
            continue
        hit = (right & (scores >= t)).mean() if len(right) else float("nan")
        dirs[f"{fpir:.0e}"] = {"dir": float(hit), "threshold": t}
    report["dir_at_fpir"] = dirs
    return report


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def person_photos(root: Path) -> dict[str, list[Path]]:
    """Folder per person: name -> photos, in a stable order (shorter names first: 2 < 10)."""
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        out[folder.name] = sorted(files, key=lambda p: (len(p.stem), p.stem))
    return out


def folder_identification(
    embed: Callable[[Path], np.ndarray | None],
    gallery_root: Path,
    probe_root: Path | None = None,
    *,
    enrolled: int = 12,
    gallery_photos: int = 5,
    probes_per_person: int = 20,
    top_k: int = 5,
) -> dict[str, object]:
    """Open-set identification on folder-per-person photos (``marginface eval identify``).

    With ``probe_root`` every person of ``gallery_root`` is enrolled with all photos and every
    photo under ``probe_root`` is a probe; without it ``gallery_root`` is split by
    ``open_set_split``. ``embed`` gives a photo's embedding, or None when it has no usable face
    (counted, not searched). An empty gallery gives a report, not an error."""
    people = person_photos(gallery_root)
    if probe_root is not None:
        split_gallery = people
        probes = [(n, p) for n, ps in person_photos(probe_root).items() for p in ps]
    else:
        split_gallery, probes = open_set_split(
            people,
            enrolled=enrolled,
            gallery_photos=gallery_photos,
            probes_per_person=probes_per_person,
        )
    unusable = 0
    gallery: dict[str, np.ndarray] = {}
    for name, photos in split_gallery.items():
        vectors = [v for v in map(embed, photos) if v is not None]
        unusable += len(photos) - len(vectors)
        if vectors:
            gallery[name] = np.stack(vectors)
    embedded: list[tuple[str, np.ndarray]] = []
    for name, photo in probes:
        vector = embed(photo)
        if vector is None:
            unusable += 1
        else:
            embedded.append((name, vector))
    # a person none of whose photos could be enrolled is a stranger to the gallery
    mated, rank_k, non_mated = open_set_search(gallery, embedded, top_k=top_k)
    report = identification_report(mated, rank_k, non_mated)
    report.update(
        {
            "enrolled_people": len(gallery),
            "people": len({n for n, _ in probes} | set(split_gallery)),
            "photos_without_usable_face": unusable,
        }
    )
    return report
