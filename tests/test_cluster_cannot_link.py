"""The cannot-link bench's helpers (bench/cluster_cannot_link.py): the rule switched off by
giving each face a file of its own, faces that share a cluster with their own photo, which
clusters changed, and the central face as the service picks it."""

from __future__ import annotations

import numpy as np

from bench.cluster_cannot_link import (
    apart,
    central_row,
    changed,
    clusters_of,
    iou,
    with_own_photo,
)
from service.clustering import FoundFace, cluster_faces
from service.vision.detection import DetectedFace, nearest_to_centre


def alike(n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors close to one another: one person, as far as the graph can tell."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=64) + rng.normal(size=(n, 64)) * 0.05
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_apart_switches_the_cannot_link_rule_off_and_nothing_else() -> None:
    files = ["group.jpg"] * 3 + ["a.jpg", "b.jpg"]
    faces = [
        FoundFace(f, (0.0, 0.0, 0.0, 0.0), 1.0, v) for f, v in zip(files, alike(5), strict=True)
    ]
    on = cluster_faces(faces, threshold=0.5)
    # with the rule: one face of the group photo joins a.jpg and b.jpg, two are left alone
    assert [len(c.members) for c in on.clusters] == [3] and len(on.alone) == 2
    renamed = [
        FoundFace(f, x.box, x.quality, x.embedding)
        for f, x in zip(apart(files), faces, strict=True)
    ]
    off = cluster_faces(renamed, threshold=0.5)
    assert [len(c.members) for c in off.clusters] == [5] and off.alone == []
    assert len(set(apart(files))) == len(files)


def test_with_own_photo_marks_faces_whose_cluster_holds_their_photo_twice() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 3])
    photo = np.array([7, 7, 8, 7, 9, 7, 7])
    # cluster 0 holds photo 7 twice; cluster 1 holds photo 7 once; 2 and 3 are alone
    assert with_own_photo(labels, photo).tolist() == [True, True, False, False, False, False, False]
    assert with_own_photo(np.zeros(0, int), np.zeros(0, int)).tolist() == []


def test_changed_counts_clusters_found_in_one_clustering_only() -> None:
    before = np.array([0, 0, 0, 1, 1, 2])  # {0,1,2} {3,4}, 5 alone
    after = np.array([0, 0, 5, 1, 1, 2])  # {0,1} {3,4}, 2 and 5 alone
    assert clusters_of(before) == {frozenset({0, 1, 2}), frozenset({3, 4})}
    assert changed(before, after) == {
        "clusters_before_only": 1,
        "clusters_after_only": 1,
        "clusters_unchanged": 1,
        "faces_in_changed_clusters": 3,
    }
    assert changed(before, before)["faces_in_changed_clusters"] == 0


def test_central_row_is_the_service_s_nearest_to_centre() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        xy = rng.uniform(0, 200, size=(4, 2))
        boxes = np.concatenate([xy, xy + 40], axis=1)
        faces = [DetectedFace(tuple(b), np.zeros((5, 2)), 0.9) for b in boxes.tolist()]
        chosen = nearest_to_centre(faces, 250, 250)
        assert faces[central_row(boxes, 250, 250)] is chosen
    assert central_row(np.zeros((0, 4)), 250, 250) == -1


def test_iou_tells_one_face_found_twice_from_two_faces() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == 50 / 150
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
