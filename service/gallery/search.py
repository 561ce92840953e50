"""Identification over a gallery: the top-k distinct subjects of each probe, by their best
face's cosine similarity, from any ``VectorIndex`` joined with the ``Store`` (a face deleted a
moment ago, or quarantined, is never returned)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.gallery.store import Store
from service.gallery.vector_index import VectorIndex

log = logging.getLogger(__name__)

#: a score further than this outside [-1, 1] cannot come from unit vectors: the index is corrupt
SCORE_SLACK = 1e-3


@dataclass(frozen=True)
class Candidate:
    """A subject that resembles a probe, with its best-matching face."""

    subject_id: str
    name: str
    face_id: int
    score: float


def nearest_subjects(
    store: Store,
    index: VectorIndex,
    queries: np.ndarray,
    top_k: int,
    on_corrupt: Callable[[], None],
) -> list[list[Candidate]]:
    """For each probe, the top-k distinct subjects. The face search starts at
    ``4 * top_k + 8`` faces and doubles for the probes that have fewer than ``top_k``
    subjects, until they do or the index has no more faces. ``on_corrupt`` is called when the
    index returned scores no unit vectors can have (those results are dropped)."""
    results: list[list[Candidate] | None] = [None] * len(queries)
    todo = list(range(len(queries)))
    k = top_k * 4 + 8
    while todo:
        reachable = index.ntotal
        scores, ids = index.search(queries[todo], k)
        owners = store.owners(sorted({int(i) for i in ids.ravel() if i >= 0}))
        again = []
        for row, q in enumerate(todo):
            ranked, corrupt = _rank(scores[row], ids[row], owners, top_k)
            if corrupt:
                log.error("the index returned scores no unit vectors can have: rebuilding it")
                on_corrupt()
            exhausted = k >= reachable or int((ids[row] >= 0).sum()) < k
            if len(ranked) >= top_k or exhausted:
                results[q] = ranked
            else:
                again.append(q)
        todo, k = again, k * 2
    return [r or [] for r in results]


def _rank(
    scores: np.ndarray, ids: np.ndarray, owners: dict[int, tuple[str, str]], top_k: int
) -> tuple[list[Candidate], bool]:
    """The best face per subject among one probe's hits, and whether a score was impossible."""
    best: dict[str, Candidate] = {}
    corrupt = False
    for score, fid in zip(scores, ids, strict=True):
        if fid < 0 or int(fid) not in owners:
            continue
        if not np.isfinite(score) or abs(float(score)) > 1.0 + SCORE_SLACK:
            corrupt = True
            continue
        sid, name = owners[int(fid)]
        if sid not in best:
            value = float(min(1.0, max(-1.0, float(score))))
            best[sid] = Candidate(sid, name, int(fid), value)
    return sorted(best.values(), key=lambda c: -c.score)[:top_k], corrupt
