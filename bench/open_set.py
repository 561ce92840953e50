"""Open-set identification on LFW: how an identify answer should be decided.

Protocol (documented in docs/benchmarks.md, "Open-set identification"): every LFW person with
two photos or more is enrolled with their first photo (``enrolled=1``), or with their first
``min(5, photos - 1)`` photos (``enrolled=5``); their other photos are genuine probes; every
person with a single photo is a stranger probe. Each photo's face nearest the centre, embedded
once and cached by ``bench/cluster_faces.py`` (runs/cluster/marginface_lfw.npz).

Rules, each a score per enrolled subject and a decision on the best subject:
- ``per_face`` (today's): the subject's best face; a match when it reaches the threshold.
- ``per_subject_mean``: the mean of the subject's faces (a fusion of its evidence).
- ``per_subject_top2``: the mean of the subject's two best faces.
- ``+ margin m``: the best subject must also beat the runner-up subject by m (else the answer
  is ``ambiguous``, not a match).

Reported: DIR (rank-1 detection and identification rate: genuine probes matched to the right
subject) at FPIR 1e-2 and 1e-3 (the share of strangers matched to anyone; the threshold is
chosen on the strangers for each rule), and at the service's own default threshold (the
calibrated cosine for ``identify_far``) the DIR, the FPIR and the share answered ``ambiguous``.

Usage: nice -n 10 python bench/open_set.py [--margins 0 0.02 0.05 0.1]   (prints JSON)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster_faces import load  # noqa: E402

Fusion = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
FPIRS = (1e-2, 1e-3)


def split(
    labels: np.ndarray, files: np.ndarray, enrolled: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gallery rows, their subject numbers, genuine probe rows, stranger rows)."""
    order = np.lexsort((files, labels))
    _, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    gallery, owner, genuine, strangers = [], [], [], []
    subject = 0
    for s, n in zip(start, count, strict=True):
        rows = order[s : s + n]
        if n == 1:
            strangers.append(rows[0])
            continue
        k = min(enrolled, n - 1)
        gallery.extend(rows[:k])
        owner.extend([subject] * k)
        genuine.extend(rows[k:])
        subject += 1
    return (np.array(gallery), np.array(owner), np.array(genuine), np.array(strangers))


def fuse_max(scores: np.ndarray, owner: np.ndarray, subjects: int) -> np.ndarray:
    """(probes, subjects): each subject's best face."""
    out = np.full((scores.shape[0], subjects), -2.0, dtype=np.float32)
    np.maximum.at(out.T, owner, scores.T)
    return out


def fuse_mean(scores: np.ndarray, owner: np.ndarray, subjects: int) -> np.ndarray:
    """(probes, subjects): the mean of each subject's faces."""
    sums = np.zeros((subjects, scores.shape[0]), dtype=np.float64)
    np.add.at(sums, owner, scores.T)
    return (sums / np.bincount(owner, minlength=subjects)[:, None]).T.astype(np.float32)


def fuse_top2(scores: np.ndarray, owner: np.ndarray, subjects: int) -> np.ndarray:
    """(probes, subjects): the mean of each subject's two best faces (one face: that face)."""
    best = fuse_max(scores, owner, subjects)
    masked = scores.copy()
    # remove each subject's best face once, then take the best of the rest
    first = np.zeros_like(masked, dtype=bool)
    for s in range(subjects):
        cols = np.flatnonzero(owner == s)
        if cols.size > 1:
            first[np.arange(scores.shape[0]), cols[np.argmax(scores[:, cols], axis=1)]] = True
    masked[first] = -2.0
    second = fuse_max(masked, owner, subjects)
    single = np.bincount(owner, minlength=subjects) == 1
    second[:, single] = best[:, single]
    return (best + second) / 2


FUSIONS: dict[str, Fusion] = {
    "per_face": fuse_max,
    "per_subject_mean": fuse_mean,
    "per_subject_top2": fuse_top2,
}


def top_two(subject_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best subject, its score, the runner-up's score) per probe."""
    part = np.argpartition(-subject_scores, 1, axis=1)[:, :2]
    two = np.take_along_axis(subject_scores, part, axis=1)
    swap = two[:, 1] > two[:, 0]
    best = np.where(swap, part[:, 1], part[:, 0])
    return best, two.max(axis=1), two.min(axis=1)


def threshold_at(stranger_best: np.ndarray, passes: np.ndarray, fpir: float) -> float:
    """The lowest threshold that accepts at most ``fpir`` of the strangers."""
    allowed = int(np.floor(fpir * stranger_best.size))
    accepted = np.sort(stranger_best[passes])[::-1]
    if accepted.size <= allowed:
        return -1.0
    return float(np.nextafter(accepted[allowed], np.float32(2.0)))


def evaluate(
    emb: np.ndarray,
    labels: np.ndarray,
    files: np.ndarray,
    enrolled: int,
    margins: list[float],
    service_threshold: float,
) -> dict[str, object]:
    """Every rule and margin for one enrollment variant."""
    gallery, owner, genuine, strangers = split(labels, files, enrolled)
    subjects = int(owner.max()) + 1
    truth = {labels[g]: o for g, o in zip(gallery, owner, strict=True)}
    genuine_subject = np.array([truth[labels[p]] for p in genuine])
    out: dict[str, object] = {
        "subjects": subjects,
        "gallery_faces": int(gallery.size),
        "genuine_probes": int(genuine.size),
        "stranger_probes": int(strangers.size),
        "rules": {},
    }
    g = emb[gallery]
    for rule, fuse in FUSIONS.items():
        if enrolled == 1 and rule != "per_face":
            continue  # one face per subject: every fusion is the face itself
        g_best, g_s1, g_s2 = top_two(fuse(emb[genuine] @ g.T, owner, subjects))
        s_best, s_s1, s_s2 = top_two(fuse(emb[strangers] @ g.T, owner, subjects))
        del s_best
        right = g_best == genuine_subject
        rows = {}
        for m in margins:
            g_ok, s_ok = (g_s1 - g_s2) >= m, (s_s1 - s_s2) >= m
            row: dict[str, float] = {}
            for fpir in FPIRS:
                t = threshold_at(s_s1, s_ok, fpir)
                row[f"dir_at_fpir_{fpir:g}"] = round(float((right & g_ok & (g_s1 >= t)).mean()), 4)
                row[f"threshold_at_fpir_{fpir:g}"] = round(t, 4)
            t = service_threshold
            row["service_threshold"] = round(t, 4)
            row["dir_at_service_threshold"] = round(float((right & g_ok & (g_s1 >= t)).mean()), 4)
            row["fpir_at_service_threshold"] = round(float((s_ok & (s_s1 >= t)).mean()), 5)
            row["genuine_ambiguous_at_service_threshold"] = round(
                float(((g_s1 >= t) & ~g_ok).mean()), 4
            )
            row["genuine_wrong_match_at_service_threshold"] = round(
                float((~right & g_ok & (g_s1 >= t)).mean()), 4
            )
            rows[f"margin_{m:g}"] = row
        out["rules"][rule] = rows  # type: ignore[index]
    return out


def main() -> None:
    """Run the protocol and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins", type=float, nargs="*", default=[0.0, 0.02, 0.05, 0.08, 0.1])
    parser.add_argument("--enrolled", type=int, nargs="*", default=[1, 5])
    parser.add_argument("--identify-far", type=float, default=None, help="default: the setting")
    args = parser.parse_args()
    from service.calibration import threshold_for_far
    from service.models import resolve_model
    from service.settings import Settings

    settings = Settings(device="cpu")
    far = args.identify_far if args.identify_far is not None else settings.identify_far
    manifest, _ = resolve_model(settings.models_dir, settings.embedder.model)
    service_threshold, used_far = threshold_for_far(manifest.calibration, far)
    started, cpu = time.perf_counter(), time.process_time()
    d = load("lfw")
    emb, labels, files = d["emb"].astype(np.float32), d["labels"], d["files"]
    result = {
        "data": "LFW, the face nearest the centre of each photo (bench/cluster_faces.py)",
        "faces": int(emb.shape[0]),
        "model": manifest.name,
        "identify_far": used_far,
        "variants": {
            f"enrolled_{k}": evaluate(emb, labels, files, k, args.margins, service_threshold)
            for k in args.enrolled
        },
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
