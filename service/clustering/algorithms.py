"""Graph clustering of faces: Chinese whispers (the default) and connected components.

Chinese whispers (Biemann 2006; dlib's ``chinese_whispers``, which face_recognition's clustering
example uses) gives each node its own label, then repeatedly lets each node take the label with
the largest total edge weight among its neighbours. It needs no number of clusters, runs in
time linear in the edges, and a single stray edge between two people does not merge them the
way it does in connected components (single linkage). This version is vectorised over all
edges and semi-synchronous: each round a random half of the nodes updates at once, which
avoids the two-colour oscillation of a fully synchronous update and keeps a round one sort of
the edge list (about a second for 100k faces with 30 neighbours). The algorithm was chosen by
measurement: see docs/benchmarks.md, "Clustering".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.gallery.neighbours import NeighbourGraph

Algorithm = Callable[[NeighbourGraph, int], np.ndarray]
_ALGORITHMS: dict[str, Algorithm] = {}


def register(name: str, algorithm: Algorithm) -> None:
    """Add a graph clustering algorithm under ``name`` (loud on a duplicate)."""
    if name in _ALGORITHMS:
        raise ValueError(f"clustering algorithm {name!r} is already registered")
    _ALGORITHMS[name] = algorithm


def create(name: str) -> Algorithm:
    """The algorithm registered as ``name``; a KeyError lists the known ones."""
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown clustering algorithm {name!r}; known: {available()}") from None


def available() -> list[str]:
    """The registered names."""
    return sorted(_ALGORITHMS)


def compact(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k-1, largest cluster first (ties by first member)."""
    _, first, inverse, counts = np.unique(
        labels, return_index=True, return_inverse=True, return_counts=True
    )
    order = np.lexsort((first, -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse].astype(np.int64)


def chinese_whispers(graph: NeighbourGraph, seed: int = 0, rounds: int = 40) -> np.ndarray:
    """One label per node (see the module docstring); isolated nodes keep their own."""
    n = graph.size
    labels = np.arange(n, dtype=np.int64)
    if graph.edges == 0:
        return labels
    src = np.concatenate([graph.a, graph.b])
    dst = np.concatenate([graph.b, graph.a])
    weight = np.concatenate([graph.weight, graph.weight]).astype(np.float64)
    rng = np.random.default_rng(seed)
    quiet = 0
    for _ in range(rounds):
        key = src * n + labels[dst]
        unique, inverse = np.unique(key, return_inverse=True)
        sums = np.bincount(inverse, weights=weight)
        node, label = unique // n, unique % n
        noise = rng.random(sums.size) * 1e-9  # ties broken at random, not by label order
        order = np.lexsort((-(sums + noise), node))
        head = order[np.r_[True, node[order][1:] != node[order][:-1]]]
        best = labels.copy()
        best[node[head]] = label[head]
        move = (rng.random(n) < 0.5) & (best != labels)
        labels[move] = best[move]
        quiet = quiet + 1 if not move.any() else 0
        if quiet >= 3 or (best == labels).all():
            break
    return compact(labels)


def connected_components(graph: NeighbourGraph, seed: int = 0) -> np.ndarray:
    """Single linkage on the thresholded graph: any chain of edges joins (the baseline)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as components

    n = graph.size
    matrix = coo_matrix((np.ones(graph.edges), (graph.a, graph.b)), shape=(n, n))
    _, labels = components(matrix, directed=False)
    return compact(labels.astype(np.int64))


register("chinese-whispers", chinese_whispers)
register("connected-components", connected_components)
