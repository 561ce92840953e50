"""A cluster job's live result: the clusters an operator reviews, corrects and names.

It holds the job's faces and embeddings in memory and their thumbnails in the job's working
folder, and nothing else: the photos themselves are deleted once their faces are found. The
operator merges clusters, removes a wrong face from one, and names a cluster (or a face left
alone) into the gallery (``name``: the faces' embeddings go through the gallery's one write path,
nothing is detected again). Naming is a move: a cluster named again leaves the subject it was
named before (its faces there are erased, and that subject too when the naming made it and it is
left empty), so its faces are never in two subjects; and a cluster's name follows the subject:
once the subject is deleted, the cluster is unnamed.

Deleting the job (or its expiry) calls ``erase``: the folder with the thumbnails goes
and the embeddings are dropped. Cluster numbers are stable: a merge keeps the first number and
retires the second.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.clustering.clusters import Clustering, describe, face_view
from service.clustering.faces import FoundFace
from service.errors import ClusterNotFound, FaceNotFound, InvalidRequest, SubjectNotFound
from service.gallery import Gallery, NewFace


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
    gallery: Gallery | None = field(default=None, repr=False)  # whose subjects names follow
    named: dict[int, str] = field(default_factory=dict)
    enrolled: dict[int, list[int]] = field(default_factory=dict)  # face ids a naming created
    made: dict[int, bool] = field(default_factory=dict)  # the naming created the subject
    last_cluster: int = -1  # numbers are never reused: a face named alone gets a new one
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _naming: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def of(
        cls, result: Clustering, thumbnails: Path | None, gallery: Gallery | None = None
    ) -> ClusterWork:
        """From a finished clustering; thumbnails are written to ``thumbnails`` (the job's
        folder) and dropped from memory; names are checked against ``gallery``'s subjects."""
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
            gallery,
            last_cluster=len(groups) - 1,
        )

    def _group(self, cluster: int) -> list[int]:
        members = self.groups.get(cluster)
        if members is None:
            raise ClusterNotFound(f"this job has no cluster {cluster}", cluster=cluster)
        return members

    def _prune_names(self) -> None:
        """Forget the names whose subject is gone (deleted, erased): the name follows it."""
        if self.gallery is None or not self.named:
            return
        existing = self.gallery.existing_subjects(sorted(set(self.named.values())))
        for n in [n for n, s in self.named.items() if s not in existing]:
            del self.named[n]
            self.enrolled.pop(n, None)
            self.made.pop(n, None)

    def _view(self, n: int, members: list[int]) -> dict[str, Any]:
        sub = [self.faces[i] for i in members]
        embeddings = np.stack([f.embedding for f in sub])
        c = describe(sub, embeddings, list(range(len(members))))
        similarity = {m.face: m.similarity for m in c.members}
        return {
            "cluster": n,
            "size": len(members),
            "cohesion": round(c.cohesion, 4),
            "representative": self._face(members[c.representative], similarity[c.representative]),
            "members": [self._face(members[m.face], m.similarity) for m in c.members],
            "subject_id": self.named.get(n),
        }

    def _face(self, i: int, similarity: float | None = None) -> dict[str, Any]:
        return face_view(self.faces, i, similarity)

    def view(self) -> dict[str, Any]:
        """Every cluster (largest first) and the faces alone."""
        with self._lock:
            self._prune_names()
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
            self._prune_names()
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
        extended): their embeddings, boxes and photo hashes, nothing detected again. Named
        before as another subject: a move (the faces it put there are erased, and that
        subject too when this naming made it and it is left empty). ClusterNotFound."""
        with self._naming:  # one naming of this job at a time: a move is read-then-write
            with self._lock:
                self._prune_names()
                members = list(self._group(cluster))
                previous = self.named.get(cluster)
                before = list(self.enrolled.get(cluster, []))
            creates = subject_id not in gallery.existing_subjects([subject_id])
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
            created = [fid for fid, new in results if new]
            moved = previous is not None and previous != subject_id
            if previous is not None and moved:  # added first, then erased: never lost
                self._unname(gallery, previous, before, made=self.made.get(cluster, False))
            with self._lock:
                self.named[cluster] = subject_id
                self.enrolled[cluster] = created if moved else before + created
                if previous is None or moved:
                    self.made[cluster] = creates
        return {
            "subject_id": subject_id,
            "cluster": cluster,
            "face_ids": created,
            "already_present": sum(1 for _, new in results if not new),
        }

    @staticmethod
    def _unname(gallery: Gallery, subject_id: str, face_ids: list[int], *, made: bool) -> None:
        """Take a cluster's faces out of the subject it was named before."""
        for fid in face_ids:
            with contextlib.suppress(FaceNotFound):  # deleted meanwhile: nothing to move
                gallery.delete_face(fid)
        if made:
            try:
                if not gallery.list_faces(subject_id):
                    gallery.delete_subject(subject_id)
            except SubjectNotFound:
                pass

    def name_face(
        self, face: int, subject_id: str, name: str | None, gallery: Gallery, model_id: str
    ) -> dict[str, Any]:
        """Name one face left alone: it becomes a cluster of its own (a new number), named as
        ``name`` does. ClusterNotFound when the face is not alone."""
        with self._lock:
            if face not in self.alone:
                raise ClusterNotFound(f"face {face} is not a face alone", face=face)
            self.last_cluster = max([*self.groups, *self.named, self.last_cluster]) + 1
            cluster = self.last_cluster
            self.alone.remove(face)
            self.groups[cluster] = [face]
        try:
            return self.name(cluster, subject_id, name, gallery, model_id)
        except BaseException:
            with self._lock:  # not named: it is alone again
                self.groups.pop(cluster, None)
                self.alone.append(face)
            raise

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
