"""Unsupervised grouping of faces into people: find the faces of a folder tree, link each to
its nearest neighbours above a calibrated threshold, cluster the graph, describe the clusters.
"""

from service.clustering.algorithms import available, chinese_whispers, create, register
from service.clustering.clusters import (
    DEFAULT_FAR,
    DEFAULT_NEIGHBOURS,
    Cluster,
    Clustering,
    auto_far,
    cluster_faces,
    edge_threshold,
)
from service.clustering.faces import FoundFace, FoundFaces, find_faces
from service.clustering.scores import ClusterScores, score_clustering

__all__ = [
    "DEFAULT_FAR",
    "DEFAULT_NEIGHBOURS",
    "Cluster",
    "ClusterScores",
    "Clustering",
    "FoundFace",
    "FoundFaces",
    "auto_far",
    "available",
    "chinese_whispers",
    "cluster_faces",
    "create",
    "edge_threshold",
    "find_faces",
    "register",
    "score_clustering",
]
