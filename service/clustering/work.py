"""A cluster job's live result: the clusters an operator reviews, corrects and names.

It holds the job's faces and embeddings in memory and their thumbnails in the job's working
folder, and nothing else: the photos themselves are deleted once their faces are found. The
operator merges clusters, removes a wrong face from one, says a member is not the subject its
cluster was named (``not_this_person``: a negative example of that subject, the face leaves the
cluster, and no naming of the review puts it there again), and names a cluster (or a face left
alone) into the gallery (``name``: the faces' embeddings go through the gallery's one write path,
nothing is detected again). Naming is a move: a cluster named again leaves the subject it was
named before (its faces there are erased, and that subject too when the naming made it and it is
left empty), so its faces are never in two subjects; and a cluster's name follows the subject:
once the subject is deleted, the cluster is unnamed.

Reading the review (``view``, ``cluster``) with a ``Suggester`` says, for each cluster not yet
named, which gallery subject it looks like (``looks_like``): computed at each read, because the
gallery changes after the job ran, from a few sampled members decided as an identify decides;
a subject a member was said not to be (``not_this_person``, kept per cluster in ``refused``,
also after the face left it) is never suggested for that cluster.

Deleting the job (or its expiry) calls ``erase``: the folder with the thumbnails goes
and the embeddings are dropped. Cluster numbers are stable: a merge keeps the first number and
retires the second.

With several replicas the review is shared through the job board (``share``): the replica that
ran the job publishes the review state (the faces, their embeddings and the clusters) with the
job's last record, any replica rebuilds it from there (``from_shared``), every review reads the
board's state first and every change is written back, and ``erase`` takes it off the board. The
thumbnails are files in the job's working folder: another replica serves them where the
replicas share ``jobs.work_dir``.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.clustering.clusters import Clustering, describe, face_view
from service.clustering.faces import FoundFace
from service.errors import (
    ClusterNotFound,
    FaceNotFound,
    InvalidRequest,
    JobNotFound,
    SubjectNotFound,
)
from service.gallery import Gallery, NewFace
from service.identification import LooksLike
from service.subject_id import check_subject_id

#: the key of a job board record that holds its shared review state
REVIEW_KEY = "review"
#: members of a cluster compared with the gallery for its "looks like" (the representative
#: and the ones closest to the cluster's centre): a review read stays cheap
LOOKS_LIKE_SAMPLE = 5


class Suggester(Protocol):
    """What suggests the gallery subject a cluster looks like
    (``service.recognition.Recognition.looks_like``)."""

    def __call__(
        self, groups: Sequence[tuple[np.ndarray, Collection[str]]]
    ) -> list[LooksLike | None]:
        """For each (members' embeddings, subjects refused), the subject they look like."""
        ...


class ReviewBoard(Protocol):
    """The part of the shared job board (``service.jobs.JobBoard``) a review is kept on."""

    def publish(self, record: dict[str, Any]) -> None:
        """Insert or update one job's record."""

    def fetch(self, job_id: str) -> dict[str, Any] | None:
        """One job's record, or None."""


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
    #: cannot-link from the review: face -> the subjects the operator said it is not
    not_subject: dict[int, list[str]] = field(default_factory=dict)
    #: cluster -> the subjects a member of it was said not to be: never suggested for it
    refused: dict[int, list[str]] = field(default_factory=dict)
    last_cluster: int = -1  # numbers are never reused: a face named alone gets a new one
    revision: int = 0  # of the review state: each change to it counts one
    board: ReviewBoard | None = field(default=None, repr=False)
    job_id: str = ""
    #: the model that embedded its faces: naming enrolls them as that model's, so a gallery
    #: switched to another model since refuses them (model_mismatch) ("": not recorded)
    model_id: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _naming: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def of(
        cls,
        result: Clustering,
        thumbnails: Path | None,
        gallery: Gallery | None = None,
        *,
        model_id: str = "",
    ) -> ClusterWork:
        """From a finished clustering; thumbnails and chips are written to ``thumbnails`` (the
        job's folder) and dropped from memory; names are checked against ``gallery``'s
        subjects."""
        if thumbnails is not None:
            thumbnails.mkdir(parents=True, exist_ok=True)
            for i, face in enumerate(result.faces):
                if face.thumbnail:
                    (thumbnails / f"{i}.jpg").write_bytes(face.thumbnail)
                if face.chip:
                    (thumbnails / f"{i}.chip.jpg").write_bytes(face.chip)
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
            model_id=model_id,
        )

    def share(self, board: ReviewBoard, job_id: str) -> dict[str, Any]:
        """Keep this review on ``board`` under ``job_id`` from now on; the state to publish
        with the job's record (under REVIEW_KEY)."""
        with self._lock:
            self.board, self.job_id = board, job_id
            return self._state()

    def _state(self) -> dict[str, Any]:
        vectors = np.stack([f.embedding for f in self.faces]).astype("<f4") if self.faces else None
        return {
            "revision": self.revision,
            "faces": [
                {
                    "file": f.file,
                    "box": list(f.box),
                    "quality": f.quality,
                    "det_score": f.det_score,
                    "sha256": f.sha256,
                }
                for f in self.faces
            ],
            "dim": 0 if vectors is None else int(vectors.shape[1]),
            "embeddings": "" if vectors is None else base64.b64encode(vectors.tobytes()).decode(),
            "threshold": self.threshold,
            "far": self.far,
            "algorithm": self.algorithm,
            "model_id": self.model_id,
            "thumbnails": None if self.thumbnails is None else str(self.thumbnails),
            **self._review(),
        }

    def _review(self) -> dict[str, Any]:
        """What a review changes (JSON keys are strings)."""
        return {
            "groups": {str(n): m for n, m in self.groups.items()},
            "alone": self.alone,
            "named": {str(n): s for n, s in self.named.items()},
            "enrolled": {str(n): f for n, f in self.enrolled.items()},
            "made": {str(n): m for n, m in self.made.items()},
            "not_subject": {str(n): s for n, s in self.not_subject.items()},
            "refused": {str(n): s for n, s in self.refused.items()},
            "last_cluster": self.last_cluster,
        }

    def _load_review(self, state: dict[str, Any]) -> None:
        self.revision = int(state["revision"])
        self.groups = {int(n): list(m) for n, m in state["groups"].items()}
        self.alone = list(state["alone"])
        self.named = {int(n): s for n, s in state["named"].items()}
        self.enrolled = {int(n): list(f) for n, f in state["enrolled"].items()}
        self.made = {int(n): bool(m) for n, m in state["made"].items()}
        self.not_subject = {int(n): list(s) for n, s in state.get("not_subject", {}).items()}
        self.refused = {int(n): list(s) for n, s in state.get("refused", {}).items()}
        self.last_cluster = int(state["last_cluster"])

    @classmethod
    def from_shared(cls, state: dict[str, Any], board: ReviewBoard, job_id: str) -> ClusterWork:
        """A review another replica published (``share``), kept on the same board."""
        n, dim = len(state["faces"]), int(state["dim"])
        vectors = np.frombuffer(base64.b64decode(state["embeddings"]), dtype="<f4")
        vectors = vectors.reshape(n, dim) if n else np.zeros((0, dim), np.float32)
        faces = [
            FoundFace(
                f["file"], tuple(f["box"]), f["quality"], vectors[i], f["det_score"], f["sha256"]
            )
            for i, f in enumerate(state["faces"])
        ]
        thumbnails = state.get("thumbnails")
        work = cls(
            faces,
            {},
            [],
            float(state["threshold"]),
            state["far"],
            state["algorithm"],
            None if thumbnails is None else Path(thumbnails),
            board=board,
            job_id=job_id,
            model_id=str(state.get("model_id", "")),
        )
        work._load_review(state)
        return work

    def _record(self) -> dict[str, Any]:
        """The job's record on the board; JobNotFound when it or its review is gone (the job
        was deleted, or expired, through another replica)."""
        assert self.board is not None
        record = self.board.fetch(self.job_id)
        if record is None or REVIEW_KEY not in record:
            raise JobNotFound(f"no job with id {self.job_id!r} (deleted or expired)")
        return record

    def pull(self) -> None:
        """Take the board's review state if another replica changed it; JobNotFound when the
        review is gone from the board (no-op without a board)."""
        with self._lock:
            self._pull()

    def _pull(self) -> None:
        if self.board is None:
            return
        state = self._record()[REVIEW_KEY]
        if int(state["revision"]) != self.revision:
            self._load_review(state)

    def _push(self) -> None:
        """Write this replica's change back to the board (under the lock)."""
        if self.board is None:
            return
        record = self._record()
        self.revision += 1
        record[REVIEW_KEY] = self._state()
        self.board.publish(record)

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
            "looks_like": None,
        }

    def _pending(
        self, views: list[dict[str, Any]]
    ) -> list[tuple[dict[str, Any], np.ndarray, set[str]]]:
        """What a suggestion needs for each view of a cluster not yet named (under the lock):
        its sampled members' embeddings (the representative first, then the closest to the
        centre) and the subjects it must never be said to look like (those a member, present
        or gone, was said not to be)."""
        pending = []
        for v in views:
            if v["subject_id"] is not None:
                continue
            first = v["representative"]["face"]
            rest = [m["face"] for m in v["members"] if m["face"] != first]
            sample = [first, *rest[: LOOKS_LIKE_SAMPLE - 1]]
            refused = set(self.refused.get(v["cluster"], []))
            for i in self.groups.get(v["cluster"], []):
                refused.update(self.not_subject.get(i, []))
            vectors = np.stack([self.faces[i].embedding for i in sample])
            pending.append((v, vectors, refused))
        return pending

    @staticmethod
    def _suggest(
        pending: list[tuple[dict[str, Any], np.ndarray, set[str]]], looks_like: Suggester | None
    ) -> None:
        """Fill in the views' ``looks_like`` (outside the lock: it searches the gallery)."""
        if looks_like is None or not pending:
            return
        found = looks_like([(vectors, refused) for _, vectors, refused in pending])
        for (view, _, _), s in zip(pending, found, strict=True):
            view["looks_like"] = None if s is None else {
                "subject_id": s.subject_id,
                "name": s.name,
                "similarity": round(s.similarity, 6),
                "agreeing": s.agreeing,
                "checked": s.checked,
                "far": s.far,
                "threshold": {"value": round(s.threshold, 6), "source": s.source},
            }  # fmt: skip

    def _face(self, i: int, similarity: float | None = None) -> dict[str, Any]:
        return face_view(self.faces, i, similarity)

    def view(self, looks_like: Suggester | None = None) -> dict[str, Any]:
        """Every cluster (largest first) and the faces alone; with ``looks_like``, each
        cluster not yet named says which gallery subject it looks like (computed now: the
        gallery changes after the job ran)."""
        with self._lock:
            self._pull()
            self._prune_names()
            ordered = sorted(self.groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            clusters = [self._view(n, m) for n, m in ordered]
            pending = self._pending(clusters) if looks_like is not None else []
            out = {
                "faces": len(self.faces),
                "clusters": clusters,
                "alone": [self._face(i) for i in sorted(self.alone)],
                "threshold": round(self.threshold, 6),
                "far": self.far,
                "algorithm": self.algorithm,
            }
        self._suggest(pending, looks_like)
        return out

    def cluster(self, cluster: int, looks_like: Suggester | None = None) -> dict[str, Any]:
        """One cluster's view (with its ``looks_like``, as ``view``); ClusterNotFound."""
        with self._lock:
            self._pull()
            self._prune_names()
            view = self._view(cluster, self._group(cluster))
            pending = self._pending([view]) if looks_like is not None else []
        self._suggest(pending, looks_like)
        return view

    def merge(self, into: int, other: int, looks_like: Suggester | None = None) -> dict[str, Any]:
        """Move ``other``'s faces into ``into``; ``other`` is retired (the subjects refused
        for it are refused for ``into``)."""
        if into == other:
            raise InvalidRequest("merge needs two different clusters")
        with self._lock:
            self._pull()
            target, source = self._group(into), self._group(other)
            target.extend(source)
            del self.groups[other]
            self.named.pop(other, None)
            for subject in self.refused.pop(other, []):
                if subject not in self.refused.setdefault(into, []):
                    self.refused[into].append(subject)
            self._push()
            view = self._view(into, target)
            pending = self._pending([view]) if looks_like is not None else []
        self._suggest(pending, looks_like)
        return view

    def remove(
        self, cluster: int, face: int, looks_like: Suggester | None = None
    ) -> dict[str, Any] | None:
        """Take one face out of a cluster (it joins the faces alone); the cluster's view, or
        None when it had one face left and is gone."""
        with self._lock:
            self._pull()
            members = self._group(cluster)
            if face not in members:
                raise ClusterNotFound(
                    f"face {face} is not in cluster {cluster}", cluster=cluster, face=face
                )
            members.remove(face)
            self.alone.append(face)
            if not members:
                del self.groups[cluster]
            self._push()
            if not members:
                return None
            view = self._view(cluster, members)
            pending = self._pending([view]) if looks_like is not None else []
        self._suggest(pending, looks_like)
        return view

    def name(
        self, cluster: int, subject_id: str, name: str | None, gallery: Gallery, model_id: str
    ) -> dict[str, Any]:
        """Enroll the cluster's faces as ``subject_id`` (created, with ``name``, if new; else
        extended): their embeddings, boxes and photo hashes, nothing detected again. Named
        before as another subject: a move (the faces it put there are erased, and that
        subject too when this naming made it and it is left empty). InvalidSubjectId before
        ClusterNotFound: the request is wrong whatever the cluster."""
        check_subject_id(subject_id)
        with self._naming:  # one naming of this job at a time: a move is read-then-write
            with self._lock:
                self._pull()
                self._prune_names()
                members = [
                    i for i in self._group(cluster)
                    if subject_id not in self.not_subject.get(i, [])
                ]  # fmt: skip
                if not members:
                    raise InvalidRequest(
                        f"every face of cluster {cluster} was marked as not {subject_id!r}",
                        cluster=cluster,
                    )
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
                subject_id,
                faces,
                model_id=self.model_id or model_id,
                chips=self._chips(members),
                create_name=name or subject_id,
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
                self._push()
        return {
            "subject_id": subject_id,
            "cluster": cluster,
            "face_ids": created,
            "already_present": sum(1 for _, new in results if not new),
        }

    def _chips(self, members: list[int]) -> list[bytes] | None:
        """The chips the job cut of these faces (in its folder, as the thumbnails), or None
        when it has not every one (chips were off when it ran, or this replica does not share
        the job's folder): the faces are enrolled, their chips are not kept."""
        if self.thumbnails is None:
            return None
        try:
            return [(self.thumbnails / f"{i}.chip.jpg").read_bytes() for i in members]
        except OSError:
            return None

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
            self._pull()
            if face not in self.alone:
                raise ClusterNotFound(f"face {face} is not a face alone", face=face)
            self.last_cluster = max([*self.groups, *self.named, self.last_cluster]) + 1
            cluster = self.last_cluster
            self.alone.remove(face)
            self.groups[cluster] = [face]
            self._push()
        try:
            return self.name(cluster, subject_id, name, gallery, model_id)
        except BaseException:
            with self._lock:  # not named: it is alone again
                with contextlib.suppress(JobNotFound):
                    self._pull()
                self.groups.pop(cluster, None)
                if face not in self.alone:
                    self.alone.append(face)
                with contextlib.suppress(JobNotFound):
                    self._push()
            raise

    def not_this_person(
        self,
        cluster: int,
        face: int,
        subject_id: str | None,
        gallery: Gallery,
        model_id: str,
    ) -> dict[str, Any]:
        """The operator says a member of a cluster is not ``subject_id`` (default: the name
        the cluster was given): its embedding is kept as a negative example of that subject
        (identify stops naming the subject for faces like it), the face leaves the cluster (it
        joins the faces alone), the gallery face a naming enrolled from it is erased from the
        subject, and no naming of this review puts it into that subject again (cannot-link).
        ClusterNotFound, InvalidRequest (no subject to say it is not), SubjectNotFound."""
        with self._naming:  # reads and changes what the namings enrolled
            with self._lock:
                self._pull()
                self._prune_names()
                members = self._group(cluster)
                if face not in members:
                    raise ClusterNotFound(
                        f"face {face} is not in cluster {cluster}", cluster=cluster, face=face
                    )
                subject = subject_id if subject_id is not None else self.named.get(cluster)
                if subject is None:
                    raise InvalidRequest(
                        f"cluster {cluster} is not named: say which subject face {face} is not"
                    )
                check_subject_id(subject)
                found = self.faces[face]
                enrolled = list(self.enrolled.get(cluster, [])) if (
                    self.named.get(cluster) == subject
                ) else []  # fmt: skip
            gallery.get_subject(subject)  # SubjectNotFound before anything changes
            erased = self._erase_enrolled(gallery, subject, found, enrolled)
            negative, _ = gallery.add_negative(
                subject, found.embedding, model_id=self.model_id or model_id, source="face"
            )
            with self._lock:
                self._pull()
                self.not_subject.setdefault(face, [])
                if subject not in self.not_subject[face]:
                    self.not_subject[face].append(subject)
                if subject not in self.refused.setdefault(cluster, []):
                    self.refused[cluster].append(subject)
                members = self.groups.get(cluster, [])
                if face in members:
                    members.remove(face)
                    self.alone.append(face)
                    if not members:
                        del self.groups[cluster]
                if erased is not None and cluster in self.enrolled:
                    self.enrolled[cluster] = [f for f in self.enrolled[cluster] if f != erased]
                self._push()
        return {
            "subject_id": subject,
            "cluster": cluster,
            "face": face,
            "negative_id": negative.id,
            "erased_face_id": erased,
        }

    @staticmethod
    def _erase_enrolled(
        gallery: Gallery, subject_id: str, found: FoundFace, enrolled: list[int]
    ) -> int | None:
        """Erase the gallery face a naming of this cluster enrolled from ``found`` into
        ``subject_id`` (the same photo and box among the faces it created); its id, or None."""
        if not enrolled:
            return None
        box = [round(v, 2) for v in found.box]
        for record in gallery.list_faces(subject_id):
            same_box = all(abs(a - b) <= 0.01 for a, b in zip(record.box, box, strict=True))
            if record.id in enrolled and record.image_sha256 == found.sha256 and same_box:
                with contextlib.suppress(FaceNotFound):
                    gallery.delete_face(record.id)
                return record.id
        return None

    def thumbnail(self, face: int) -> Path:
        """The file of one face's thumbnail; ClusterNotFound when the job has none."""
        path = self.thumbnails / f"{face}.jpg" if self.thumbnails is not None else None
        if path is None or not (0 <= face < len(self.faces)) or not path.is_file():
            raise ClusterNotFound(f"this job has no thumbnail of face {face}", face=face)
        return path

    def erase(self) -> None:
        """Drop the embeddings and the thumbnails, here and on the board (the caller removes
        the rest of the job's folder)."""
        with self._lock:
            self.faces = []
            self.groups = {}
            self.alone = []
            if self.thumbnails is not None:
                shutil.rmtree(self.thumbnails, ignore_errors=True)
            if self.board is not None:
                record = self.board.fetch(self.job_id)
                if record is not None and REVIEW_KEY in record:
                    del record[REVIEW_KEY]
                    self.board.publish(record)
