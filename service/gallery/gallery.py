"""The gallery: the one write path of the service, over a store (``store.Store``, the source of
truth) and an index derived from it (``vector_index.KeptIndex``).

Routes, the CLI, the batch indexer and jobs change a gallery only through ``Gallery``, so each
promise is kept here, once:
- every write commits to the store first, then the index follows (``sync.IndexSync``: a failed
  index write is repaired, never lost; reconcile, the index check and the upkeep live there);
- kept face chips and photos are written and erased under the same lock as their faces' rows
  (an erased face never leaves its chip or photo behind);
- a batch job never re-creates a subject deleted while it runs (``add_many``'s ``creatable``);
- identification returns ``top_k`` distinct subjects, no score outside [-1, 1] (``search``);
- every write reports what it touched (``on_write``: the audit trail's targets).
``embedded`` and ``distributed`` open what only one of them needs; ``backends`` picks one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np

from service.gallery.headroom import DiskReserve, with_headroom
from service.gallery.records import (
    FaceRecord,
    Negative,
    NegativeSource,
    NewFace,
    Subject,
)
from service.gallery.search import Candidate, nearest_subjects
from service.gallery.servable import check_servable
from service.gallery.store import Store
from service.gallery.switch import ModelSwitch
from service.gallery.sync import IndexSync
from service.gallery.vector_index import KeptIndex
from service.images import ImageVault
from service.subject_id import check_subject_id

log = logging.getLogger(__name__)

WriteObserver = Callable[[str, dict[str, Any]], None]
#: negative examples ("not this person") a subject may hold: every identify compares a probe
#: with the negatives of its few candidate subjects, so the bound keeps that cheap
NEGATIVES_PER_SUBJECT = 100


class Gallery:
    """Subjects and faces, searchable by cosine similarity; thread-safe."""

    def __init__(
        self,
        store: Store,
        index: KeptIndex,
        *,
        images: ImageVault | None = None,
        on_write: WriteObserver | None = None,
        upkeep_interval_s: float | None = None,
        reserve: DiskReserve | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        # private, both: every write goes through this class
        self._store = store
        self._index = index
        self._reserve = reserve  # disk kept back so that a delete succeeds on a full disk
        self.images = images
        self.on_write = on_write
        self._lock = threading.RLock()  # writes, with their photos, one at a time per process
        self._sync = IndexSync(store, index, reserve, on_close)  # the index follows the store
        store.on_quarantine = self._sync.remove  # a face that fails a check leaves the index
        #: moving to another model (gallery migrate-model): staged embeddings, switch, purge
        self.models = ModelSwitch(store, index, self._lock, self._sync, self._wrote)  # type: ignore[arg-type]
        if images is not None:
            images.bind(store.gallery_id)  # ConfigError: another gallery's folder
            # photos of faces no longer held (a crash left them half-done); every face held
            # counts, quarantined and other models' too (re-embedding needs them)
            images.sweep(store.all_face_ids)
        if upkeep_interval_s is not None:
            self.start_upkeep(upkeep_interval_s)

    def start_upkeep(self, interval_s: float) -> None:
        """Run the upkeep in a thread until ``close`` (``backends.open_gallery`` always does):
        erased embeddings leave the disk within moments, whoever opened the gallery."""
        self._sync.start(interval_s)

    @property
    def model_id(self) -> str:
        """The embedding model this gallery is pinned to."""
        return self._store.model_id

    @property
    def embedding_dim(self) -> int:
        """The size of its embeddings."""
        return self._store.embedding_dim

    def check_model(self, model_id: str) -> None:
        """Raise ModelMismatch unless embeddings of ``model_id`` belong here."""
        self._store.check_model(model_id)

    def _wrote(self, action: str, **targets: Any) -> None:
        if self.on_write is not None:
            self.on_write(action, targets)

    # ---- the write path: the store commits, then the index follows

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """This process's write lock, then the index's guard (a save sees whole writes)."""
        with self._lock, self._index.guard():
            yield

    def _enroll(
        self, subject_id: str, faces: list[NewFace], create_name: str | None
    ) -> list[tuple[int, bool]]:
        with self._writing():
            results = self._store.add_faces(subject_id, faces, create_name=create_name)
            self._sync.add(
                [(fid, f.embedding) for (fid, new), f in zip(results, faces, strict=True) if new]
            )
        return results

    def _enroll_many(
        self, items: list[tuple[str, NewFace]], creatable: frozenset[str] | None
    ) -> list[tuple[str, int | None, bool]]:
        with self._writing():
            results = self._store.add_faces_many(items, creatable=creatable)
            pairs = zip(results, items, strict=True)
            self._sync.add(
                [(i, f.embedding) for (_, i, new), (_, f) in pairs if new and i is not None]
            )
        return results

    def _import_faces(self, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
        if faces:
            with self._writing():
                self._store.import_faces(faces)
                self._sync.add([(f.id, vector) for f, vector in faces])

    def _erase_face(self, face_id: int) -> str:
        with self._writing():
            # a delete succeeds on a full disk: the reserve is given back for it
            subject_id = with_headroom(self._reserve, partial(self._store.delete_face, face_id))
            self._sync.remove([face_id])
        return subject_id

    def _erase_subject(self, subject_id: str) -> list[int]:
        with self._writing():
            face_ids = with_headroom(self._reserve, partial(self._store.delete_subject, subject_id))
            self._sync.remove(face_ids)
        return face_ids

    def _erase_negative(self, subject_id: str, negative_id: int) -> None:
        with self._writing():
            with_headroom(
                self._reserve, partial(self._store.delete_negative, subject_id, negative_id)
            )
            self._sync.erased()

    # ---- subjects

    def create_subject(self, subject_id: str, name: str, metadata: dict[str, Any]) -> Subject:
        """Create a subject (no faces yet); SubjectExists, InvalidRequest for a name or
        metadata the service could not serve back, InvalidSubjectId."""
        check_subject_id(subject_id)
        check_servable(subject_id, name, metadata)
        with self._writing():
            subject = self._store.create_subject(subject_id, name, metadata)
        self._wrote("subject_created", subject_id=subject_id)
        return subject

    def get_subject(self, subject_id: str) -> Subject:
        """One subject; SubjectNotFound, InvalidSubjectId."""
        return self._store.get_subject(check_subject_id(subject_id))

    def list_subjects(
        self, offset: int, limit: int, search: str | None = None
    ) -> tuple[list[Subject], int]:
        """A page of subjects and the total."""
        return self._store.list_subjects(offset, limit, search)

    def update_subject(
        self, subject_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Subject:
        """Rename or change metadata; SubjectNotFound, InvalidRequest (as create_subject)."""
        check_subject_id(subject_id)
        check_servable(subject_id, name, metadata)
        with self._writing():
            subject = self._store.update_subject(subject_id, name, metadata)
        self._wrote("subject_updated", subject_id=subject_id)
        return subject

    def delete_subject(self, subject_id: str) -> int:
        """Erase a subject (``erase_subject``); the number of faces removed."""
        return len(self.erase_subject(subject_id))

    def erase_subject(self, subject_id: str) -> list[int]:
        """Erase a subject, its faces and what was kept of them; the erased face ids. The id is
        not checked against the rule: one an earlier release let in can still be erased."""
        with self._lock:
            face_ids = self._erase_subject(subject_id)
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
            results = self._enroll(subject_id, faces, create_name)
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
            results = self._enroll_many(items, creatable)
            self._keep([fid if new else None for _, fid, new in results], None, chips)
        self._wrote("faces_added", face_ids=[fid for _, fid, c in results if c and fid is not None])
        return results

    def _keep(
        self, face_ids: list[int | None], photos: list[bytes] | None, chips: list[bytes] | None
    ) -> None:
        """Keep the photos and chips of the faces just created (None: not created); on any
        failure those faces are erased too (all or nothing; the caller holds the lock)."""
        if self.images is None:
            return
        try:
            self.images.keep(face_ids, photos, chips)
        except BaseException:
            for fid in face_ids:
                if fid is not None:
                    self._erase_face(fid)
            raise

    def delete_face(self, face_id: int) -> str:
        """Erase one face and its kept photo and chip; its subject id. FaceNotFound."""
        with self._lock:
            subject_id = self._erase_face(face_id)
            if self.images is not None:
                self.images.delete([face_id])
        self._wrote("face_deleted", subject_id=subject_id, face_id=face_id)
        return subject_id

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        """The faces of one subject; InvalidSubjectId."""
        return self._store.list_faces(check_subject_id(subject_id))

    def face_owner(self, face_id: int) -> str | None:
        """The subject id a usable face belongs to, or None."""
        found = self._store.owners([face_id]).get(face_id)
        return found[0] if found else None

    def known_images(self) -> set[tuple[str, str]]:
        """(subject id, image sha256) of every enrolled face."""
        return self._store.known_images()

    def existing_subjects(self, subject_ids: list[str]) -> set[str]:
        """Which of these subject ids exist now."""
        return self._store.existing_subjects(subject_ids)

    def counts(self) -> tuple[int, int]:
        """(subjects, faces)."""
        return self._store.counts()

    def face_photo(self, face_id: int) -> bytes:
        """The kept photo of a face; FaceNotFound when photos are not kept or this one is not."""
        return ImageVault.photo_of(self.images, face_id)

    def face_chip(self, face_id: int) -> bytes:
        """The kept chip of a face (JPEG, ``service.vision.chip``): its example image and what
        re-embedding it needs. FaceNotFound when chips are not kept or this one is not."""
        return ImageVault.chip_of(self.images, face_id)

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
        with self._writing():
            negative, created = self._store.add_negative(
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
        return self._store.list_negatives(check_subject_id(subject_id))

    def delete_negative(self, subject_id: str, negative_id: int) -> None:
        """Erase one negative example of a subject; NegativeNotFound."""
        with self._lock:
            self._erase_negative(subject_id, negative_id)
        self._wrote("negative_deleted", subject_id=subject_id, negative_id=negative_id)

    def negatives_of(self, subject_ids: list[str], *, model_id: str) -> dict[str, np.ndarray]:
        """subject id -> (n, dim) embeddings of its negatives (of the gallery's model: else
        ModelMismatch), for those of ``subject_ids`` that have any."""
        self.check_model(model_id)
        if not subject_ids:
            return {}
        return self._store.negatives_of(subject_ids)

    def iter_negatives(self, batch: int) -> Iterator[list[tuple[Negative, np.ndarray]]]:
        """Every negative example with its embedding, in pages (copying a gallery)."""
        return self._store.iter_negatives(batch)

    def import_negatives(self, negatives: list[tuple[Negative, np.ndarray]]) -> None:
        """Insert negative examples as they are (a copy of another gallery)."""
        if negatives:
            with self._writing():
                self._store.import_negatives(negatives)

    # ---- search

    def search(self, embeddings: np.ndarray, *, top_k: int, model_id: str) -> list[list[Candidate]]:
        """For each probe, the top-k distinct subjects by their best face's cosine similarity
        (``search.nearest_subjects`` widens the face search until it has them)."""
        self.check_model(model_id)
        if len(embeddings) == 0:
            return []
        queries = np.ascontiguousarray(embeddings, dtype=np.float32)
        return nearest_subjects(self._store, self._index, queries, top_k, self._sync.repair)

    def subject_embeddings(
        self, subject_id: str, *, model_id: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of one subject's usable faces; SubjectNotFound, ModelMismatch,
        InvalidSubjectId."""
        check_subject_id(subject_id)
        self.check_model(model_id)
        self._store.get_subject(subject_id)
        return self._store.embeddings_of(subject_id)

    # ---- copying a gallery (backend migration, bulk loads of benchmarks)

    def face_ids(self) -> np.ndarray:
        """Every usable face id, sorted."""
        return self._store.face_ids()

    def iter_subjects(self, batch: int) -> Iterator[list[Subject]]:
        """Every subject, in pages."""
        return self._store.iter_subjects(batch)

    def iter_faces(self, batch: int) -> Iterator[list[tuple[FaceRecord, np.ndarray]]]:
        """Every face with its stored embedding, in id order, in pages."""
        return self._store.iter_faces(batch)

    def import_subjects(self, subjects: list[Subject]) -> None:
        """Insert subjects as they are (ids and creation times kept): a copy of another
        gallery."""
        with self._writing():
            self._store.import_subjects(subjects)
        self._wrote("subjects_imported", subject_ids=[s.id for s in subjects])

    def import_faces(self, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
        """Insert faces as they are (face ids kept) and index them: a copy of another gallery
        of the same model (ModelMismatch otherwise)."""
        for record, _ in faces[:1]:
            self.check_model(record.model_id)
        with self._lock:
            self._import_faces(faces)
        self._wrote("faces_imported", face_ids=[f.id for f, _ in faces])

    def repair_index(self) -> None:
        """Rebuild the index from the store off the request path (searches keep the live one)."""
        self._sync.repair()

    # ---- integrity and upkeep

    def integrity(self) -> dict[str, Any]:
        """Quarantined faces, how the index compares with the store, other models' faces."""
        return self._sync.integrity()

    def verify(self) -> dict[str, Any]:
        """Check every stored embedding now, then report (``marginface gallery verify``)."""
        self._store.verify_all()
        return self.integrity()

    def reconcile(self) -> dict[str, int]:
        """Bring the index in line with the store: {"replayed", "removed", "faces"}."""
        return self._sync.reconcile()

    def stats(self) -> dict[str, Any]:
        """Sizes and the index in use, for /readyz (raises when not ready: ``IndexSync``)."""
        return self._sync.stats()

    def wait_for_work(self, timeout_s: float) -> bool:
        """Block until upkeep is due or the timeout passes; True when it is due."""
        return self._sync.wait_for_work(timeout_s)

    def wait_until_indexed(self, timeout_s: float) -> bool:
        """Block until no index build is pending; False on timeout."""
        return self._index.wait_until_indexed(timeout_s)

    def flush(self) -> bool:
        """Upkeep now (the upkeep thread calls it; tests may too); True when more is due."""
        return self._sync.upkeep()

    def close(self) -> None:
        """Stop the upkeep, persist what is pending, release the index and the store."""
        self._sync.close()
