"""A cluster job's live result: the clusters an operator reviews, corrects and names.

It holds the job's faces and embeddings in memory and their thumbnails in the job's working
folder, and nothing else: the photos themselves are deleted once their faces are found. The
operator merges clusters, removes a wrong face from one, and names a cluster into the gallery
(``name``: the faces' embeddings go through the gallery's one write path, nothing is detected
again). Deleting the job (or its expiry) calls ``erase``: the folder with the thumbnails goes
and the embeddings are dropped. Cluster numbers are stable: a merge keeps the first number and
retires the second.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.clustering.clusters import Clustering, describe, face_view
from service.clustering.faces import FoundFace
from service.errors import ClusterNotFound, InvalidRequest
from service.gallery import Gallery, NewFace
from service.subject_id import check_subject_id


@dataclass
class ClusterWork:
    """The reviewable clusters of one job (thread-safe)."""

    faces: list[FoundFace]
    groups: dict[int, list[int]]
    alone: list[int]
    threshold: float
    far: float | None
    algorithm: str
    thumbnails: Path | None
    named: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def of(cls, result: Clustering, thumbnails: Path | None) -> ClusterWork:
        """From a finished clustering; thumbnails are written to ``thumbnails`` (the job's
        folder) and dropped from memory."""
        if thumbnails is not None:
            thumbnails.mkdir(parents=True, exist_ok=True)
            for i, face in enumerate(result.faces):
                if face.thumbnail:
                    (thumbnails / f"{i}.jpg").write_bytes(face.thumbnail)
        faces = [
            FoundFace(f.file, f.box, f.quality, f.embedding, f.det_score, f.sha256)
            for f in result.faces
        ]
        groups = {n: c.faces for n, c in enumerate(result.clusters)}
        return cls(
            faces,
            groups,
            list(result.alone),
            result.threshold,
            result.far,
            result.algorithm,
            thumbnails,
        )

    def _group(self, cluster: int) -> list[int]:
        members = self.groups.get(cluster)
        if members is None:
            raise ClusterNotFound(f"this job has no cluster {cluster}", cluster=cluster)
        return members

    def _view(self, n: int, members: list[int]) -> dict[str, Any]:
        sub = [self.faces[i] for i in members]
        embeddings = np.stack([f.embedding for f in sub])
        c = describe(sub, embeddings, list(range(len(members))))
        return {
            "cluster": n,
            "size": len(members),
            "cohesion": round(c.cohesion, 4),
            "representative": self._face(members[c.representative]),
            "members": [self._face(members[m.face], m.similarity) for m in c.members],
            "subject_id": self.named.get(n),
        }

    def _face(self, i: int, similarity: float | None = None) -> dict[str, Any]:
        return face_view(self.faces, i, similarity)

    def view(self) -> dict[str, Any]:
        """Every cluster (largest first) and the faces alone."""
        with self._lock:
            ordered = sorted(self.groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            return {
                "faces": len(self.faces),
                "clusters": [self._view(n, m) for n, m in ordered],
                "alone": [self._face(i) for i in sorted(self.alone)],
                "threshold": round(self.threshold, 6),
                "far": self.far,
                "algorithm": self.algorithm,
            }

    def cluster(self, cluster: int) -> dict[str, Any]:
        """One cluster's view; ClusterNotFound."""
        with self._lock:
            return self._view(cluster, self._group(cluster))

    def merge(self, into: int, other: int) -> dict[str, Any]:
        """Move ``other``'s faces into ``into``; ``other`` is retired."""
        if into == other:
            raise InvalidRequest("merge needs two different clusters")
        with self._lock:
            target, source = self._group(into), self._group(other)
            target.extend(source)
            del self.groups[other]
            self.named.pop(other, None)
            return self._view(into, target)

    def remove(self, cluster: int, face: int) -> dict[str, Any] | None:
        """Take one face out of a cluster (it joins the faces alone); the cluster's view, or
        None when it had one face left and is gone."""
        with self._lock:
            members = self._group(cluster)
            if face not in members:
                raise ClusterNotFound(
                    f"face {face} is not in cluster {cluster}", cluster=cluster, face=face
                )
            members.remove(face)
            self.alone.append(face)
            if not members:
                del self.groups[cluster]
                return None
            return self._view(cluster, members)

    def name(
        self, cluster: int, subject_id: str, name: str | None, gallery: Gallery, model_id: str
    ) -> dict[str, Any]:
        """Enroll the cluster's faces as ``subject_id`` (created, with ``name``, if new; else
        extended): their embeddings, boxes and photo hashes, nothing detected again.
        InvalidSubjectId before ClusterNotFound: the request is wrong whatever the cluster."""
        check_subject_id(subject_id)
        with self._lock:
            members = list(self._group(cluster))
        faces = [
            NewFace(
                embedding=self.faces[i].embedding,
                box=self.faces[i].box,
                det_score=self.faces[i].det_score,
                image_sha256=self.faces[i].sha256,
            )
            for i in members
        ]
        results = gallery.add_faces(
            subject_id, faces, model_id=model_id, create_name=name or subject_id
        )
        with self._lock:
            self.named[cluster] = subject_id
        return {
            "subject_id": subject_id,
            "cluster": cluster,
            "face_ids": [fid for fid, created in results if created],
            "already_present": sum(1 for _, created in results if not created),
        }

    def thumbnail(self, face: int) -> Path:
        """The file of one face's thumbnail; ClusterNotFound when the job has none."""
        path = self.thumbnails / f"{face}.jpg" if self.thumbnails is not None else None
        if path is None or not (0 <= face < len(self.faces)) or not path.is_file():
            raise ClusterNotFound(f"this job has no thumbnail of face {face}", face=face)
        return path

    def erase(self) -> None:
        """Drop the embeddings (the caller removes the folder with the thumbnails)."""
        with self._lock:
            self.faces = []
            self.groups = {}
            self.alone = []
