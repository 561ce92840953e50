"""How well a clustering matches the truth: pairwise and BCubed precision, recall and F.

Pairwise counts pairs of faces put together (precision: of the pairs a clustering joins, how
many are one person; recall: of the same-person pairs, how many it joins); large clusters
dominate it. BCubed (Bagga and Baldwin 1998; Amigó et al. 2009) averages per face, so a
photo library's many small clusters count as much as its few large ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ClusterScores:
    """The figures docs/benchmarks.md reports for one clustering of one data set."""

    faces: int
    clusters: int
    true_clusters: int
    pairwise_precision: float
    pairwise_recall: float
    pairwise_f1: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f: float

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready, rounded."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def score_clustering(predicted: np.ndarray, truth: np.ndarray) -> ClusterScores:
    """Scores of ``predicted`` labels against ``truth`` labels (one per face, any integers)."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError("one predicted and one true label per face")
    _, p = np.unique(predicted, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    n = p.size
    _, cell = np.unique(p.astype(np.int64) * (t.max() + 1) + t, return_inverse=True)
    n_ij = np.bincount(cell).astype(np.float64)  # contingency cells, and each face's cell
    a = np.bincount(p).astype(np.float64)
    b = np.bincount(t).astype(np.float64)
    together = float((n_ij * (n_ij - 1)).sum() / 2)
    joined = float((a * (a - 1)).sum() / 2)
    same = float((b * (b - 1)).sum() / 2)
    pp = together / joined if joined else 1.0
    pr = together / same if same else 1.0
    face_cell = n_ij[cell]
    bp = float((face_cell / a[p]).mean()) if n else 0.0
    br = float((face_cell / b[t]).mean()) if n else 0.0
    return ClusterScores(
        faces=n,
        clusters=int(a.size),
        true_clusters=int(b.size),
        pairwise_precision=pp,
        pairwise_recall=pr,
        pairwise_f1=_f(pp, pr),
        bcubed_precision=bp,
        bcubed_recall=br,
        bcubed_f=_f(bp, br),
    )
