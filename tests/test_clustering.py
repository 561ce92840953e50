"""The clustering core: the k-NN graph, Chinese whispers, the scores, and a folder walk."""

from __future__ import annotations

import numpy as np
import pytest

from service.clustering import chinese_whispers, create, score_clustering
from service.gallery.neighbours import knn_graph


def two_groups(noise: float = 0.05, n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, 64))
    x = np.repeat(centres, n, axis=0) + rng.normal(size=(2 * n, 64)) * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat([0, 1], n)


def test_scores_of_known_clusterings() -> None:
    truth = np.array([0, 0, 0, 1, 1])
    perfect = score_clustering(np.array([5, 5, 5, 7, 7]), truth)
    assert perfect.pairwise_f1 == 1.0 and perfect.bcubed_f == 1.0 and perfect.clusters == 2
    merged = score_clustering(np.zeros(5, int), truth)
    assert merged.pairwise_recall == 1.0 and merged.pairwise_precision == pytest.approx(4 / 10)
    # BCubed precision: 3 faces see 3/5 of their cluster as theirs, 2 see 2/5
    assert merged.bcubed_precision == pytest.approx((3 * 3 / 5 + 2 * 2 / 5) / 5)
    alone = score_clustering(np.arange(5), truth)
    assert alone.pairwise_recall == 0.0 and alone.bcubed_precision == 1.0
    assert alone.bcubed_recall == pytest.approx((3 * 1 / 3 + 2 * 1 / 2) / 5)


def test_the_graph_keeps_only_near_pairs_once() -> None:
    x, truth = two_groups()
    graph = knn_graph(x, k=5, threshold=0.5)
    assert graph.edges > 0 and (graph.a < graph.b).all()
    assert (truth[graph.a] == truth[graph.b]).all()  # no edge across the groups
    assert len(set(zip(graph.a.tolist(), graph.b.tolist(), strict=True))) == graph.edges


def test_chinese_whispers_is_not_fooled_by_one_bridge_that_joins_components() -> None:
    x, truth = two_groups()
    graph = knn_graph(x, k=10, threshold=0.5)
    # one stray edge between the groups (a look-alike pair)
    bridged = type(graph)(
        graph.size,
        np.append(graph.a, 0),
        np.append(graph.b, 39),
        np.append(graph.weight, np.float32(0.6)),
    )
    whispers = score_clustering(chinese_whispers(bridged), truth)
    components = score_clustering(create("connected-components")(bridged, 0), truth)
    assert whispers.bcubed_f == 1.0 and whispers.clusters == 2
    assert components.clusters == 1  # single linkage merges the two people


def test_an_unknown_algorithm_is_a_loud_error() -> None:
    with pytest.raises(KeyError, match="chinese-whispers"):
        create("k-means")


def test_the_automatic_far_follows_the_number_of_faces() -> None:
    from service.clustering import auto_far, edge_threshold
    from service.errors import InvalidRequest
    from service.models import load_manifest
    from tests.conftest import ROOT

    calibration = load_manifest(ROOT / "models" / "sface-2021dec").calibration
    assert auto_far(10) == 1e-3 and auto_far(10_000) == pytest.approx(1e-5)
    small, large = edge_threshold(calibration, None, 50), edge_threshold(calibration, None, 13_233)
    assert small[1] == 1e-3 and large[1] == 1e-6 and large[0] > small[0]  # more faces: stricter
    assert edge_threshold(calibration, None, 10**9)[1] == 1e-6  # never past the calibration
    assert edge_threshold(calibration, 1e-4, 10**6)[1] == 1e-4  # a FAR asked for is kept
    with pytest.raises(InvalidRequest):
        edge_threshold(calibration, 1e-9, 100)
