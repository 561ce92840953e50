"""From faces to people: the k-NN graph at a calibrated threshold, clustered, then described.

The edge threshold is the recognizer's calibrated cosine for a false-accept rate
(``threshold_for_far``): the user picks how often two strangers may be linked, not a cosine.
With no FAR given, the FAR follows the number of faces (``auto_far``). Each cluster reports its
members (file, box, quality, similarity to the cluster's centre: the
normalised mean of its embeddings), a representative face (the member with the best similarity
x quality) and its cohesion (the mean similarity to the centre). Faces in no cluster of two or
more are ``alone``.

Faces of one photo are different people (a cannot-link constraint, as every photo tool has it):
their edges are dropped before clustering, and where a cluster still gathers two faces of one
photo through other faces, the one nearest the cluster's centre stays and the others are left
alone. A photo is its file: two copies of one photo are two files whose faces may well join.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.calibration import threshold_for_far
from service.clustering.algorithms import compact, create
from service.clustering.faces import FoundFace
from service.gallery.neighbours import NeighbourGraph, knn_graph
from service.models import Calibration

#: The FAR the edges are drawn at unless the caller says otherwise is set by the number of
#: faces: each face is compared with every other, so a per-pair FAR f gives about n * f false
#: links per face, which merge strangers. ``auto_far`` keeps that at AUTO_FALSE_LINKS_PER_FACE
#: (a Bonferroni-style correction), within what the model's calibration supports; measured in
#: docs/benchmarks.md, "Clustering" (a fixed 1e-4 over-merges LFW's 13,233 faces).
AUTO_FALSE_LINKS_PER_FACE = 0.1
LOOSEST_AUTO_FAR = 1e-3
DEFAULT_FAR: float | None = None  # None: auto_far
#: neighbours per face in the graph
DEFAULT_NEIGHBOURS = 30


@dataclass(frozen=True)
class Member:
    """One face of a cluster."""

    face: int
    similarity: float


@dataclass(frozen=True)
class Cluster:
    """One person, as far as the embeddings tell."""

    members: list[Member]
    representative: int
    cohesion: float
    centre: np.ndarray = field(repr=False)

    @property
    def faces(self) -> list[int]:
        """The members' face numbers."""
        return [m.face for m in self.members]


@dataclass
class Clustering:
    """The clusters (largest first), the faces left alone, and how they were made."""

    faces: list[FoundFace]
    clusters: list[Cluster]
    alone: list[int]
    labels: np.ndarray
    threshold: float
    far: float | None
    algorithm: str
    edges: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``marginface cluster --json`` prints and the cluster job stores."""

        def face(i: int, similarity: float | None = None) -> dict[str, Any]:
            return face_view(self.faces, i, similarity)

        return {
            "faces": len(self.faces),
            "clusters": [
                {
                    "cluster": n,
                    "size": len(c.members),
                    "cohesion": round(c.cohesion, 4),
                    "representative": face(
                        c.representative,
                        next(m.similarity for m in c.members if m.face == c.representative),
                    ),
                    "members": [face(m.face, m.similarity) for m in c.members],
                }
                for n, c in enumerate(self.clusters)
            ],
            "alone": [face(i) for i in self.alone],
            "threshold": round(self.threshold, 6),
            "far": self.far,
            "algorithm": self.algorithm,
            "edges": self.edges,
        }


def face_view(faces: list[FoundFace], i: int, similarity: float | None = None) -> dict[str, Any]:
    """One face as the CLI and the API show it (``similarity``: to its cluster's centre)."""
    f = faces[i]
    out: dict[str, Any] = {
        "face": i,
        "file": f.file,
        "box": [round(v, 1) for v in f.box],
        "quality": f.quality,
    }
    if similarity is not None:
        out["similarity"] = round(similarity, 4)
    return out


def auto_far(faces: int) -> float:
    """The per-pair FAR that allows about AUTO_FALSE_LINKS_PER_FACE false links per face."""
    return min(LOOSEST_AUTO_FAR, AUTO_FALSE_LINKS_PER_FACE / max(faces, 1))


def edge_threshold(
    calibration: Calibration | None, far: float | None, faces: int
) -> tuple[float, float]:
    """(cosine, the calibrated FAR it comes from) for the edges: ``far`` as asked (the strictest
    calibrated FAR at or below it; InvalidRequest below the calibration), or with None the
    automatic one for ``faces``, clamped to the strictest FAR the calibration supports."""
    if far is not None:
        return threshold_for_far(calibration, far)
    wanted = auto_far(faces)
    if calibration is not None and calibration.thresholds_by_far:
        wanted = max(wanted, min(float(k) for k in calibration.thresholds_by_far))
    return threshold_for_far(calibration, wanted)


def describe(faces: list[FoundFace], embeddings: np.ndarray, members: list[int]) -> Cluster:
    """A cluster's centre, members by similarity to it, representative and cohesion."""
    vectors = embeddings[members]
    centre = vectors.mean(axis=0)
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    sims = vectors @ centre
    order = np.argsort(-sims, kind="stable")
    ranked = [Member(members[i], float(sims[i])) for i in order]
    merit = [float(sims[i]) * faces[members[i]].quality for i in range(len(members))]
    return Cluster(
        members=ranked,
        representative=members[int(np.argmax(merit))],
        cohesion=float(sims.mean()),
        centre=centre.astype(np.float32),
    )


def without_same_photo_edges(graph: NeighbourGraph, photo: np.ndarray) -> NeighbourGraph:
    """The graph less its edges between two faces of one photo (``photo``: one id per face)."""
    keep = photo[graph.a] != photo[graph.b]
    return NeighbourGraph(graph.size, graph.a[keep], graph.b[keep], graph.weight[keep])


def keep_photos_apart(labels: np.ndarray, photo: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """``labels`` where no label holds two faces of one photo: of such faces, the one most
    similar to its cluster's centre keeps the label, the others get labels of their own."""
    out = labels.copy()
    fresh = int(labels.max()) + 1 if labels.size else 0
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if members.size < 2 or np.unique(photo[members]).size == members.size:
            continue
        centre = embeddings[members].mean(axis=0)
        sims = embeddings[members] @ centre
        kept: set[int] = set()
        for i in members[np.argsort(-sims, kind="stable")]:
            if int(photo[i]) in kept:
                out[i] = fresh
                fresh += 1
            else:
                kept.add(int(photo[i]))
    return out


def cluster_faces(
    faces: list[FoundFace],
    *,
    threshold: float,
    far: float | None = None,
    algorithm: str = "chinese-whispers",
    neighbours: int = DEFAULT_NEIGHBOURS,
    seed: int = 0,
) -> Clustering:
    """Cluster ``faces`` on their embeddings (edges at cosine >= ``threshold``; never two
    faces of one photo in one cluster)."""
    if not faces:
        return Clustering([], [], [], np.zeros(0, np.int64), threshold, far, algorithm, 0)
    embeddings = np.stack([f.embedding for f in faces]).astype(np.float32)
    _, photo = np.unique([f.file for f in faces], return_inverse=True)
    graph = without_same_photo_edges(
        knn_graph(embeddings, k=neighbours, threshold=threshold), photo
    )
    labels = create(algorithm)(graph, seed)
    labels = compact(keep_photos_apart(labels, photo, embeddings))
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(i)
    clusters, alone = [], []
    for members in groups.values():
        if len(members) == 1:
            alone.append(members[0])
        else:
            clusters.append(describe(faces, embeddings, members))
    clusters.sort(key=lambda c: (-len(c.members), c.members[0].face))
    return Clustering(
        faces, clusters, sorted(alone), labels, threshold, far, algorithm, graph.edges
    )
