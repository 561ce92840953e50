"""The k-nearest-neighbour graph of a set of embeddings, for clustering (FAISS lives here only).

Clustering never compares all pairs: each face is linked to at most its ``k`` most similar
faces, found by an exact inner-product search in blocks (a flat index: for unit vectors of
128 to 512 dimensions the search is BLAS-bound and 100k faces take tens of seconds on two
cores, with memory of the vectors plus one block of results).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True)
class NeighbourGraph:
    """Undirected weighted edges (``a < b``, cosine similarity ``weight``), each pair once."""

    size: int
    a: np.ndarray
    b: np.ndarray
    weight: np.ndarray

    @property
    def edges(self) -> int:
        """How many edges the graph holds."""
        return int(self.a.size)


def knn_graph(
    vectors: np.ndarray, *, k: int, threshold: float, block: int = 8192
) -> NeighbourGraph:
    """Each vector linked to its ``k`` nearest others whose cosine is at least ``threshold``.

    ``vectors`` are unit rows (n, d); a pair found from both ends is kept once."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = x.shape[0]
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return NeighbourGraph(n, empty, empty, np.zeros(0, dtype=np.float32))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    kk = min(k + 1, n)  # the first hit is the vector itself
    rows, cols, sims = [], [], []
    for start in range(0, n, block):
        scores, ids = index.search(x[start : start + block], kk)
        src = np.repeat(np.arange(start, start + len(ids), dtype=np.int64), kk)
        dst = ids.reshape(-1).astype(np.int64)
        w = scores.reshape(-1)
        keep = (dst >= 0) & (dst != src) & (w >= threshold)
        rows.append(src[keep])
        cols.append(dst[keep])
        sims.append(w[keep])
    src, dst, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    key = a * n + b
    _, first = np.unique(key, return_index=True)
    return NeighbourGraph(n, a[first], b[first], np.clip(w[first], -1.0, 1.0).astype(np.float32))
