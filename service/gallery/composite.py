"""What both shipped backends share: a SQL store (the source of truth) and an index derived from
it, written store first, index second. Subclasses say how the index is written, searched and
kept in step (``_index_add``, ``_index_remove``, ``search`` and the upkeep methods), whether
writes need a lock (``_guard``) and how an erasure gets disk headroom (``_erase``)."""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import numpy as np

from service.gallery.records import (
    FaceRecord,
    Negative,
    NegativeSource,
    NewFace,
    Quarantined,
    Subject,
)
from service.gallery.sql import SqlStore

T = TypeVar("T")


class StoreWithIndex(ABC):
    """A ``GalleryBackend`` made of a ``SqlStore`` and a derived index (see the subclasses)."""

    #: set by every erasure: upkeep then pushes erased rows out of the store's logs
    erasure_pending: threading.Event

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        store.on_quarantine = self._unindex  # a face that fails a check leaves the index

    @property
    def model_id(self) -> str:
        """The embedding model the gallery is pinned to."""
        return self.store.model_id

    @property
    def embedding_dim(self) -> int:
        """Size of its embeddings."""
        return self.store.embedding_dim

    # ---- hooks

    def _guard(self) -> AbstractContextManager[Any]:
        """Held around a store write and its index write (none needed by default)."""
        return contextlib.nullcontext()

    def _erase(self, delete: Callable[[], T]) -> T:
        """Run a delete; a backend may retry it with headroom it keeps for erasure."""
        return delete()

    @abstractmethod
    def _index_add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Index committed faces (a failure must not lose them: schedule a repair)."""

    @abstractmethod
    def _index_remove(self, ids: list[int]) -> None:
        """Drop deleted faces from the index."""

    # ---- reads, straight from the store

    def check_model(self, model_id: str) -> None:
        """Raise ModelMismatch unless embeddings of ``model_id`` belong here."""
        self.store.check_model(model_id)

    def get_subject(self, subject_id: str) -> Subject:
        """One subject with its face count; SubjectNotFound."""
        return self.store.get_subject(subject_id)

    def existing_subjects(self, subject_ids: list[str]) -> set[str]:
        """Which of these subject ids exist now."""
        return self.store.existing_subjects(subject_ids)

    def list_subjects(
        self, offset: int, limit: int, search: str | None = None
    ) -> tuple[list[Subject], int]:
        """A page of subjects and the total."""
        return self.store.list_subjects(offset, limit, search)

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        """The faces of a subject."""
        return self.store.list_faces(subject_id)

    def known_images(self) -> set[tuple[str, str]]:
        """Every (subject id, image sha256) enrolled."""
        return self.store.known_images()

    def face_ids(self) -> np.ndarray:
        """Every usable face id, sorted."""
        return self.store.face_ids()

    def embeddings_of(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of a subject's usable faces, verified (a face that fails now
        is quarantined and taken out of the index too)."""
        return self.store.embeddings_of(subject_id)

    def owners(self, face_ids: list[int]) -> dict[int, tuple[str, str]]:
        """face id -> (subject id, name) of existing, usable faces."""
        return self.store.owners(face_ids)

    def other_models(self) -> dict[str, int]:
        """Faces of another model, by model id."""
        return self.store.other_models()

    def all_face_ids(self) -> set[int]:
        """Every stored face id."""
        return self.store.all_face_ids()

    def quarantined(self) -> list[Quarantined]:
        """Faces set aside."""
        return self.store.quarantined()

    def counts(self) -> tuple[int, int]:
        """(subjects, faces)."""
        return self.store.counts()

    def iter_subjects(self, batch: int) -> Iterator[list[Subject]]:
        """Every subject, in pages."""
        return self.store.iter_subjects(batch)

    def iter_faces(self, batch: int) -> Iterator[list[tuple[FaceRecord, np.ndarray]]]:
        """Every face with its embedding, in pages."""
        return self.store.iter_faces(batch)

    def list_negatives(self, subject_id: str) -> list[Negative]:
        """A subject's negative examples."""
        return self.store.list_negatives(subject_id)

    def negatives_of(self, subject_ids: list[str]) -> dict[str, np.ndarray]:
        """The negatives of these subjects of the gallery's model, by subject."""
        return self.store.negatives_of(subject_ids)

    def iter_negatives(self, batch: int) -> Iterator[list[tuple[Negative, np.ndarray]]]:
        """Every negative example with its embedding, in pages."""
        return self.store.iter_negatives(batch)

    # ---- writes: the store commits, then the index follows

    def create_subject(self, subject_id: str, name: str, metadata: dict[str, Any]) -> Subject:
        """Insert a subject; SubjectExists."""
        with self._guard():
            return self.store.create_subject(subject_id, name, metadata)

    def update_subject(
        self, subject_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Subject:
        """Rename or change metadata."""
        with self._guard():
            return self.store.update_subject(subject_id, name, metadata)

    def delete_subject(self, subject_id: str) -> list[int]:
        """Erase a subject's rows, then its vectors."""
        with self._guard():
            ids = self._erase(lambda: self.store.delete_subject(subject_id))
            self._index_remove(ids)
            return ids

    def delete_face(self, face_id: int) -> str:
        """Erase one face's row, then its vector."""
        with self._guard():
            subject_id = self._erase(lambda: self.store.delete_face(face_id))
            self._index_remove([face_id])
            return subject_id

    def add_faces(
        self, subject_id: str, faces: list[NewFace], *, create_name: str | None = None
    ) -> list[tuple[int, bool]]:
        """Commit the faces, then index the new ones."""
        with self._guard():
            results = self.store.add_faces(subject_id, faces, create_name=create_name)
            self._index_new(
                [(fid, f) for (fid, created), f in zip(results, faces, strict=True) if created]
            )
            return results

    def add_faces_many(
        self, items: list[tuple[str, NewFace]], *, creatable: frozenset[str] | None = None
    ) -> list[tuple[str, int | None, bool]]:
        """Commit a batch of faces of many subjects, then index the new ones."""
        if not items:
            return []
        with self._guard():
            results = self.store.add_faces_many(items, creatable=creatable)
            new = [
                (fid, face)
                for (_, fid, created), (_, face) in zip(results, items, strict=True)
                if created and fid is not None
            ]
            self._index_new(new)
            return results

    def add_negative(
        self,
        subject_id: str,
        embedding: np.ndarray | None,
        *,
        source: NegativeSource,
        face_id: int | None,
        limit: int,
    ) -> tuple[Negative, bool]:
        """Store a negative example (not indexed: only identify's veto reads them)."""
        with self._guard():
            return self.store.add_negative(
                subject_id, embedding, source=source, face_id=face_id, limit=limit
            )

    def delete_negative(self, subject_id: str, negative_id: int) -> None:
        """Erase one negative example; upkeep then pushes it out of the store's logs."""
        with self._guard():
            self._erase(lambda: self.store.delete_negative(subject_id, negative_id))
            self.erasure_pending.set()

    def import_negatives(self, negatives: list[tuple[Negative, np.ndarray]]) -> None:
        """Insert negative examples as they are."""
        if negatives:
            with self._guard():
                self.store.import_negatives(negatives)

    def _index_new(self, new: list[tuple[int, NewFace]]) -> None:
        if not new:
            return
        ids = np.array([fid for fid, _ in new], dtype=np.int64)
        self._index_add(ids, np.stack([f.embedding for _, f in new]).astype(np.float32))

    def import_subjects(self, subjects: list[Subject]) -> None:
        """Insert subjects as they are."""
        with self._guard():
            self.store.import_subjects(subjects)

    def import_faces(self, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
        """Insert faces as they are, then index them."""
        if not faces:
            return
        with self._guard():
            self.store.import_faces(faces)
            ids = np.array([f.id for f, _ in faces], dtype=np.int64)
            self._index_add(ids, np.stack([v for _, v in faces]).astype(np.float32))

    def verify(self) -> list[Quarantined]:
        """Check every stored embedding; quarantined faces leave the index."""
        return self.store.verify_all()

    def _unindex(self, face_ids: list[int]) -> None:
        with self._guard():
            self._index_remove(face_ids)
