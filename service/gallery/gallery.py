"""The gallery: the one write path of the service, over a backend (``backend.GalleryBackend``).

Routes, the CLI, the batch indexer and jobs change a gallery only through ``Gallery``, so each
promise is kept here, once:
- kept face chips and photos are written and erased under the same lock as their faces' rows
  (an erased face never leaves its chip or photo behind; those of faces a crash left half-done
  are swept at start);
- a batch job never re-creates a subject deleted while it runs (``add_many``'s ``creatable``);
- identification returns ``top_k`` distinct subjects (the face search widens until it has them
  or the gallery is exhausted), and no score outside [-1, 1] leaves it (a corrupted index is
  repaired, its results dropped);
- every write reports what it touched (``on_write``: the audit trail's targets).
What differs between SQLite + FAISS and PostgreSQL + Milvus lives in the backends.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.gallery.backend import GalleryBackend
from service.gallery.records import (
    FaceRecord,
    Negative,
    NegativeSource,
    NewFace,
    Quarantined,
    Subject,
)
from service.images import ImageVault
from service.subject_id import check_subject_id

log = logging.getLogger(__name__)

#: a score further than this outside [-1, 1] cannot come from unit vectors: the index is corrupt
SCORE_SLACK = 1e-3
#: subject metadata: what the service stores must be what it can serve back
METADATA_MAX_BYTES = 16 * 1024
METADATA_MAX_DEPTH = 32
WriteObserver = Callable[[str, dict[str, Any]], None]
#: negative examples ("not this person") a subject may hold: every identify compares a probe
#: with the negatives of its few candidate subjects, so the bound keeps that cheap
NEGATIVES_PER_SUBJECT = 100


def _depth(value: Any) -> int:
    """Nesting depth of JSON-like data, without recursion (a hostile value can be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > METADATA_MAX_DEPTH:
            return level
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, level + 1) for v in item)
    return deepest


def check_servable(subject_id: str, name: str | None, metadata: dict[str, Any] | None) -> None:
    """Refuse (InvalidRequest, 422) what could be stored but never served back: text that is
    not valid UTF-8 (a lone surrogate), metadata nested deeper than METADATA_MAX_DEPTH or larger
    than METADATA_MAX_BYTES encoded, values JSON cannot encode (NaN, infinities)."""
    from service.errors import InvalidRequest

    for label, text in (("id", subject_id), ("name", name)):
        if text is not None:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidRequest(
                    f"the subject's {label} is not valid text ({exc.reason})"
                ) from exc
    if metadata is None:
        return
    if _depth(metadata) > METADATA_MAX_DEPTH:
        raise InvalidRequest(f"metadata is nested deeper than {METADATA_MAX_DEPTH} levels")
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"metadata cannot be stored as JSON text ({exc})") from exc
    if len(encoded) > METADATA_MAX_BYTES:
        raise InvalidRequest(f"metadata is {len(encoded)} bytes encoded, over {METADATA_MAX_BYTES}")


@dataclass(frozen=True)
class Candidate:
    """A subject that resembles a probe, with its best-matching face."""

    subject_id: str
    name: str
    face_id: int
    score: float


class Gallery:
    """Subjects and faces, searchable by cosine similarity; thread-safe."""

    def __init__(
        self,
        backend: GalleryBackend,
        *,
        images: ImageVault | None = None,
        on_write: WriteObserver | None = None,
    ) -> None:
        self._backend = backend  # private: every write goes through this class
        self.images = images
        self.on_write = on_write
        self._lock = threading.RLock()  # writes, with their photos, one at a time per process
        if images is not None:
            images.sweep(self._held_faces)

    def _held_faces(self) -> set[int]:
        """Every face id the store holds, quarantined ones and other models' included (their
        photos are what re-enrolling or re-embedding them needs)."""
        return self._backend.all_face_ids()

    @property
    def model_id(self) -> str:
        """The embedding model this gallery is pinned to."""
        return self._backend.model_id

    @property
    def embedding_dim(self) -> int:
        """The size of its embeddings."""
        return self._backend.embedding_dim

    def check_model(self, model_id: str) -> None:
        """Raise ModelMismatch unless embeddings of ``model_id`` belong here."""
        self._backend.check_model(model_id)

    def _wrote(self, action: str, **targets: Any) -> None:
        if self.on_write is not None:
            self.on_write(action, targets)

    # ---- subjects

    def create_subject(self, subject_id: str, name: str, metadata: dict[str, Any]) -> Subject:
        """Create a subject (no faces yet); SubjectExists, InvalidRequest for a name or
        metadata the service could not serve back, InvalidSubjectId."""
        check_subject_id(subject_id)
        check_servable(subject_id, name, metadata)
        with self._lock:
            subject = self._backend.create_subject(subject_id, name, metadata)
        self._wrote("subject_created", subject_id=subject_id)
        return subject

    def get_subject(self, subject_id: str) -> Subject:
        """One subject; SubjectNotFound, InvalidSubjectId."""
        return self._backend.get_subject(check_subject_id(subject_id))

    def list_subjects(
        self, offset: int, limit: int, search: str | None = None
    ) -> tuple[list[Subject], int]:
        """A page of subjects and the total."""
        return self._backend.list_subjects(offset, limit, search)

    def update_subject(
        self, subject_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Subject:
        """Rename or change metadata; SubjectNotFound, InvalidRequest (as create_subject)."""
        check_subject_id(subject_id)
        check_servable(subject_id, name, metadata)
        with self._lock:
            subject = self._backend.update_subject(subject_id, name, metadata)
        self._wrote("subject_updated", subject_id=subject_id)
        return subject

    def delete_subject(self, subject_id: str) -> int:
        """Erase a subject, its faces and their kept photos; the number of faces removed."""
        return len(self.erase_subject(subject_id))

    def erase_subject(self, subject_id: str) -> list[int]:
        """Erase a subject, its faces and their kept photos; the erased face ids. The id is
        looked up as it is, not checked against the rule: an id an earlier release let in
        (a job's ``name\\n``) can still be erased."""
        with self._lock:
            face_ids = self._backend.delete_subject(subject_id)
            if self.images is not None:
                self.images.delete(face_ids)
        self._wrote("subject_deleted", subject_id=subject_id, face_ids=face_ids)
        return face_ids

    # ---- faces

    def add_faces(
        self,
        subject_id: str,
        faces: list[NewFace],
        *,
        model_id: str,
        photos: list[bytes] | None = None,
        chips: list[bytes] | None = None,
        create_name: str | None = None,
    ) -> list[tuple[int, bool]]:
        """Enroll faces (all or nothing); (face id, created) per face, an image already
        enrolled for the subject is not added again. ``photos`` and ``chips`` (one per face)
        are kept as far as the vault keeps them (privacy.keep_images, keep_face_chips), with
        their new faces in the same locked step; one that cannot be written undoes the
        enrollment. ModelMismatch, SubjectNotFound, InsufficientStorage, InvalidSubjectId."""
        check_subject_id(subject_id)
        self.check_model(model_id)
        with self._lock:
            results = self._backend.add_faces(subject_id, faces, create_name=create_name)
            self._keep([fid if new else None for fid, new in results], photos, chips)
        self._wrote("faces_added", subject_id=subject_id, face_ids=[f for f, c in results if c])
        return results

    def add_many(
        self,
        items: list[tuple[str, NewFace]],
        *,
        model_id: str,
        creatable: frozenset[str] | None = None,
        chips: list[bytes] | None = None,
    ) -> list[tuple[str, int | None, bool]]:
        """Batch indexing: faces of many subjects in one transaction. A missing subject is
        created only if ``creatable`` is None or holds it; the faces of one that is not come
        back with face id None (a subject deleted while a job runs is not re-created).
        ``chips`` (one per item) are kept as ``add_faces`` keeps them: all or nothing.
        InvalidSubjectId (the indexer refuses such folders first), InsufficientStorage."""
        for subject_id, _ in items:
            check_subject_id(subject_id)
        self.check_model(model_id)
        if not items:
            return []
        with self._lock:
            results = self._backend.add_faces_many(items, creatable=creatable)
            self._keep([fid if new else None for _, fid, new in results], None, chips)
        self._wrote("faces_added", face_ids=[fid for _, fid, c in results if c and fid is not None])
        return results

    def _keep(
        self,
        face_ids: list[int | None],
        photos: list[bytes] | None,
        chips: list[bytes] | None,
    ) -> None:
        """Keep the photos and chips of the faces just created (None: not created), as far as
        the vault keeps them; on any failure the created faces are erased with whatever was
        written, and the error raised (the caller holds the lock)."""
        vault = self.images
        if vault is None:
            return
        kinds = [
            (put, data)
            for put, keep, data in ((vault.put, vault.keeps_photos, photos),
                                    (vault.put_chip, vault.keeps_chips, chips))
            if keep and data is not None
        ]  # fmt: skip
        created = [fid for fid in face_ids if fid is not None]
        try:
            for put, data in kinds:
                for fid, item in zip(face_ids, data, strict=True):
                    if fid is not None:
                        put(fid, item)
        except BaseException:
            for fid in created:  # all or nothing: the faces go with their photos and chips
                self._backend.delete_face(fid)
            vault.delete(created)
            raise

    def delete_face(self, face_id: int) -> str:
        """Erase one face and its kept photo and chip; its subject id. FaceNotFound."""
        with self._lock:
            subject_id = self._backend.delete_face(face_id)
            if self.images is not None:
                self.images.delete([face_id])
        self._wrote("face_deleted", subject_id=subject_id, face_id=face_id)
        return subject_id

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        """The faces of one subject; InvalidSubjectId."""
        return self._backend.list_faces(check_subject_id(subject_id))

    def face_owner(self, face_id: int) -> str | None:
        """The subject id a usable face belongs to, or None."""
        found = self._backend.owners([face_id]).get(face_id)
        return found[0] if found else None

    def known_images(self) -> set[tuple[str, str]]:
        """(subject id, image sha256) of every enrolled face."""
        return self._backend.known_images()

    def existing_subjects(self, subject_ids: list[str]) -> set[str]:
        """Which of these subject ids exist now."""
        return self._backend.existing_subjects(subject_ids)

    def counts(self) -> tuple[int, int]:
        """(subjects, faces)."""
        return self._backend.counts()

    def face_photo(self, face_id: int) -> bytes:
        """The kept photo of a face; FaceNotFound when photos are not kept or this one is not."""
        if self.images is None or not self.images.keeps_photos:
            from service.errors import FaceNotFound

            raise FaceNotFound(
                f"no photo is kept for face {face_id}: privacy.keep_images is off (the default)"
            )
        return self.images.get(face_id)

    def face_chip(self, face_id: int) -> bytes:
        """The kept chip of a face (JPEG bytes, ``service.vision.chip``): its example image and
        what re-embedding it needs. FaceNotFound when chips are not kept or this one is not."""
        if self.images is None or not self.images.keeps_chips:
            from service.errors import FaceNotFound

            raise FaceNotFound(
                f"no face chip is kept for face {face_id}: privacy.keep_face_chips is off"
            )
        return self.images.chip(face_id)

    # ---- negative examples ("not this person")

    def add_negative(
        self,
        subject_id: str,
        embedding: np.ndarray | None = None,
        *,
        model_id: str,
        source: NegativeSource,
        face_id: int | None = None,
    ) -> tuple[Negative, bool]:
        """Remember that a face is not ``subject_id``: ``embedding`` (a probe's, or a cluster
        job face's, of ``model_id``), or gallery face ``face_id``'s stored embedding (copied,
        and erased with that face). At most NEGATIVES_PER_SUBJECT per subject; (negative,
        created): a face already marked is not stored twice. SubjectNotFound, FaceNotFound,
        ModelMismatch, InvalidRequest (a face of the subject itself), TooManyNegatives,
        InvalidSubjectId."""
        check_subject_id(subject_id)
        self.check_model(model_id)
        if embedding is None and face_id is None:
            raise ValueError("a negative needs an embedding or a gallery face id")
        with self._lock:
            negative, created = self._backend.add_negative(
                subject_id, embedding, source=source, face_id=face_id,
                limit=NEGATIVES_PER_SUBJECT,
            )  # fmt: skip
        if created:
            self._wrote("negative_added", subject_id=subject_id, negative_id=negative.id,
                        source=source, copied_face_id=face_id)  # fmt: skip
        return negative, created

    def list_negatives(self, subject_id: str) -> list[Negative]:
        """A subject's negative examples, oldest first (no embeddings); SubjectNotFound,
        InvalidSubjectId."""
        return self._backend.list_negatives(check_subject_id(subject_id))

    def delete_negative(self, subject_id: str, negative_id: int) -> None:
        """Erase one negative example of a subject; NegativeNotFound."""
        with self._lock:
            self._backend.delete_negative(subject_id, negative_id)
        self._wrote("negative_deleted", subject_id=subject_id, negative_id=negative_id)

    def negatives_of(self, subject_ids: list[str], *, model_id: str) -> dict[str, np.ndarray]:
        """subject id -> (n, dim) embeddings of its negatives, of ``model_id`` only (the
        gallery's: ModelMismatch otherwise), for those of ``subject_ids`` that have any; one
        query (per 500 subjects)."""
        self.check_model(model_id)
        if not subject_ids:
            return {}
        return self._backend.negatives_of(subject_ids)

    def iter_negatives(self, batch: int) -> Iterator[list[tuple[Negative, np.ndarray]]]:
        """Every negative example with its embedding, in pages (copying a gallery)."""
        return self._backend.iter_negatives(batch)

    def import_negatives(self, negatives: list[tuple[Negative, np.ndarray]]) -> None:
        """Insert negative examples as they are: a copy of another gallery."""
        with self._lock:
            self._backend.import_negatives(negatives)

    # ---- search

    def search(self, embeddings: np.ndarray, *, top_k: int, model_id: str) -> list[list[Candidate]]:
        """For each probe, the top-k distinct subjects by their best face's cosine similarity.

        The face search starts at ``4 * top_k + 8`` faces and doubles for the probes that have
        fewer than ``top_k`` subjects, until they do or the gallery has no more faces."""
        self.check_model(model_id)
        if len(embeddings) == 0:
            return []
        queries = np.ascontiguousarray(embeddings, dtype=np.float32)
        results: list[list[Candidate] | None] = [None] * len(queries)
        todo = list(range(len(queries)))
        k = top_k * 4 + 8
        while todo:
            reachable = self._backend.searchable()
            scores, ids = self._backend.search(queries[todo], k)
            owners = self._backend.owners(sorted({int(i) for i in ids.ravel() if i >= 0}))
            again = []
            for row, q in enumerate(todo):
                ranked = self._rank(scores[row], ids[row], owners, top_k)
                exhausted = k >= reachable or int((ids[row] >= 0).sum()) < k
                if len(ranked) >= top_k or exhausted:
                    results[q] = ranked
                else:
                    again.append(q)
            todo, k = again, k * 2
        return [r or [] for r in results]

    def _rank(
        self,
        scores: np.ndarray,
        ids: np.ndarray,
        owners: dict[int, tuple[str, str]],
        top_k: int,
    ) -> list[Candidate]:
        best: dict[str, Candidate] = {}
        corrupt = False
        for score, fid in zip(scores, ids, strict=True):
            if fid < 0 or int(fid) not in owners:
                continue
            if not np.isfinite(score) or abs(float(score)) > 1.0 + SCORE_SLACK:
                corrupt = True
                continue
            sid, name = owners[int(fid)]
            if sid not in best:
                value = float(min(1.0, max(-1.0, float(score))))
                best[sid] = Candidate(sid, name, int(fid), value)
        if corrupt:
            log.error("the index returned scores no unit vectors can have: rebuilding it")
            self._backend.repair()
        return sorted(best.values(), key=lambda c: -c.score)[:top_k]

    def subject_embeddings(
        self, subject_id: str, *, model_id: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of one subject's usable faces; SubjectNotFound, ModelMismatch,
        InvalidSubjectId."""
        check_subject_id(subject_id)
        self.check_model(model_id)
        self._backend.get_subject(subject_id)
        return self._backend.embeddings_of(subject_id)

    # ---- copying a gallery (backend migration, bulk loads of benchmarks)

    def face_ids(self) -> np.ndarray:
        """Every usable face id, sorted."""
        return self._backend.face_ids()

    def iter_subjects(self, batch: int) -> Iterator[list[Subject]]:
        """Every subject, in pages."""
        return self._backend.iter_subjects(batch)

    def iter_faces(self, batch: int) -> Iterator[list[tuple[FaceRecord, np.ndarray]]]:
        """Every face with its stored embedding, in id order, in pages."""
        return self._backend.iter_faces(batch)

    def import_subjects(self, subjects: list[Subject]) -> None:
        """Insert subjects as they are (ids and creation times kept): a copy of another
        gallery. SubjectExists-like integrity errors when one is already here."""
        with self._lock:
            self._backend.import_subjects(subjects)
        self._wrote("subjects_imported", subject_ids=[s.id for s in subjects])

    def import_faces(self, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
        """Insert faces as they are (face ids kept) and index them: a copy of another gallery
        of the same model (ModelMismatch otherwise)."""
        for record, _ in faces[:1]:
            self.check_model(record.model_id)
        with self._lock:
            self._backend.import_faces(faces)
        self._wrote("faces_imported", face_ids=[f.id for f, _ in faces])

    def repair_index(self) -> None:
        """Rebuild the index from the store off the request path (searches keep the live one)."""
        self._backend.repair()

    # ---- integrity and upkeep

    def integrity(self) -> dict[str, Any]:
        """Quarantined faces and how the index compares with the store."""
        check = self._backend.check_index()
        quarantined: list[Quarantined] = self._backend.quarantined()
        return {
            "quarantined": [q.face_id for q in quarantined],
            "quarantine": [
                {"face_id": q.face_id, "subject_id": q.subject_id, "reason": q.reason, "at": q.at}
                for q in quarantined
            ],
            "index": {
                "faces": check.faces,
                "indexed": check.indexed,
                "missing": check.missing,
                "extra": check.extra,
                "consistent": check.consistent,
            },
            "other_models": self._backend.other_models(),
        }

    def verify(self) -> dict[str, Any]:
        """Check every stored embedding now, then report (``marginface gallery verify``)."""
        self._backend.verify()
        return self.integrity()

    def reconcile(self) -> dict[str, int]:
        """Bring the index in line with the store."""
        return self._backend.reconcile()

    def stats(self) -> dict[str, Any]:
        """Sizes for /readyz."""
        return self._backend.stats()

    def wait_for_work(self, timeout_s: float) -> bool:
        """Block until upkeep is due (an erasure to push to disk) or the timeout passes; True
        when it is due."""
        return self._backend.wait_for_work(timeout_s)

    def wait_until_indexed(self, timeout_s: float) -> bool:
        """Block until no index build is pending; False on timeout."""
        return self._backend.wait_until_indexed(timeout_s)

    def flush(self) -> bool:
        """Upkeep now (persist the index, purge erased rows from logs); True when more is due."""
        return self._backend.maintain()

    def close(self) -> None:
        """Persist and release everything."""
        self._backend.close()
