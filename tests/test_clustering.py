"""The clustering core: the k-NN graph, Chinese whispers, the scores, and a folder walk."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.clustering import (
    FoundFace,
    chinese_whispers,
    cluster_faces,
    create,
    score_clustering,
)
from service.gallery.neighbours import knn_graph
from tests.conftest import ROOT, lfw


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


CLI_OPTIONS = ["--processes", "0", "--no-progress", "--models-dir", str(ROOT / "models")]


def faces_at(vectors: np.ndarray, files: list[str]) -> list[FoundFace]:
    return [FoundFace(f, (0.0, 0.0, 1.0, 1.0), 0.9, v) for f, v in zip(files, vectors, strict=True)]


def test_faces_of_one_photo_are_never_put_in_one_cluster() -> None:
    """Was: a group photo's faces that look alike (three guardsmen of one honour guard) were
    linked into one cluster; the faces of one photo are different people (cannot-link)."""
    x, _ = two_groups(n=6)
    # group 0: six faces, three of them from one photo; group 1: six faces of six photos
    files = ["guard.jpg"] * 3 + [f"a{i}.jpg" for i in range(3)] + [f"b{i}.jpg" for i in range(6)]
    result = cluster_faces(faces_at(x, files), threshold=0.5)
    for c in result.clusters:
        photos = [files[i] for i in c.faces]
        assert len(photos) == len(set(photos)), photos
    assert sorted(len(c.members) for c in result.clusters) == [4, 6]  # one guard stays
    assert len(result.alone) == 2


def test_the_guardsmen_of_one_lfw_photo_stay_apart_in_marginface_cluster(tmp_path: Path) -> None:
    """The issue's example, through the real CLI: Vladimir_Putin_0007 shows Putin in front of
    three guardsmen of an honour guard (blurred, quality 0.6-0.7) whose faces are alike enough
    to link at the automatic FAR; they were one cluster."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for person, n in [("Vladimir_Putin", 7), ("Vladimir_Putin", 1), ("Vladimir_Putin", 2)]:
        shutil.copy(lfw(person, n), photos / f"{person}_{n}.jpg")
    for person in ("Colin_Powell", "Serena_Williams"):
        for n in (1, 2):
            shutil.copy(lfw(person, n), photos / f"{person}_{n}.jpg")
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "cluster", str(photos), "--json", *CLI_OPTIONS],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    guard_photo = [f for f in out["alone"] if f["file"] == "Vladimir_Putin_7.jpg"]
    in_clusters = [[m["file"] for m in c["members"]] for c in out["clusters"]]
    assert sum(f == "Vladimir_Putin_7.jpg" for c in in_clusters for f in c) + len(guard_photo) == 4
    for files in in_clusters:
        assert len(files) == len(set(files)), in_clusters
