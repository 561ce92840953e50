"""The contract between the gallery and the backends that hold it: what a gallery does, not how
FAISS or Milvus do it.

A backend keeps subjects and faces durable (a store, the source of truth) and finds the nearest
faces to a probe (an index derived from the store); it keeps the two in step on its own (the
embedded backend: SQLite + FAISS in this process; the distributed one: PostgreSQL + Milvus
shared by replicas). ``service.gallery.gallery.Gallery`` is the only caller: every write of the
service goes through it, and it adds what no backend should repeat (kept photos, the audit
targets, top-k over distinct subjects, the score guard).

A new backend is one module with a class that fills this protocol and a line in
``service.gallery.backends`` that registers its opener.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from service.gallery.records import (
    FaceRecord,
    IndexCheck,
    Negative,
    NegativeSource,
    NewFace,
    Quarantined,
    Subject,
)
from service.gallery.sql import SqlStore
from service.gallery.staging import ModelPin


class GalleryBackend(Protocol):
    """Durable subjects and faces, and nearest-neighbour search over their embeddings.

    Every write is committed before it returns and reaches the index (at once, or, when the
    index failed, by a repair the backend schedules itself: an acknowledged face is never
    lost). Reads of embeddings are verified (checksum, unit norm): a face that fails is
    quarantined, reported, and never returned or compared.
    """

    @property
    def store(self) -> SqlStore:
        """The source of truth (what a model switch rewrites: service.gallery.staging)."""

    #: set by every erasure: upkeep then pushes erased rows out of the store's logs
    erasure_pending: threading.Event

    @property
    def model_id(self) -> str:
        """The embedding model the gallery is pinned to."""

    @property
    def embedding_dim(self) -> int:
        """The size of its embeddings."""

    def check_model(self, model_id: str) -> None:
        """Raise ModelMismatch unless embeddings of ``model_id`` belong here."""

    # ---- subjects

    def create_subject(self, subject_id: str, name: str, metadata: dict[str, Any]) -> Subject:
        """Insert a subject; SubjectExists when taken."""

    def get_subject(self, subject_id: str) -> Subject:
        """One subject with its face count; SubjectNotFound."""

    def existing_subjects(self, subject_ids: list[str]) -> set[str]:
        """Which of these subject ids exist now."""

    def list_subjects(
        self, offset: int, limit: int, search: str | None = None
    ) -> tuple[list[Subject], int]:
        """A page ordered by creation, and the total."""

    def update_subject(
        self, subject_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Subject:
        """Rename or change metadata; SubjectNotFound."""

    def delete_subject(self, subject_id: str) -> list[int]:
        """Erase a subject and its faces from store and index (also on a full disk); the
        deleted face ids. SubjectNotFound."""

    # ---- faces

    def add_faces(
        self, subject_id: str, faces: list[NewFace], *, create_name: str | None = None
    ) -> list[tuple[int, bool]]:
        """Insert faces in one transaction; (face id, created) per face. SubjectNotFound unless
        ``create_name``; InsufficientStorage on a full disk (nothing kept)."""

    def add_faces_many(
        self, items: list[tuple[str, NewFace]], *, creatable: frozenset[str] | None = None
    ) -> list[tuple[str, int | None, bool]]:
        """Faces of many subjects in one transaction (batch indexing); a missing subject is
        created only when ``creatable`` is None or holds it, else its faces come back with id
        None."""

    def delete_face(self, face_id: int) -> str:
        """Erase one face (also on a full disk); its subject id. FaceNotFound."""

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        """The faces of a subject; SubjectNotFound."""

    def known_images(self) -> set[tuple[str, str]]:
        """Every (subject id, image sha256) enrolled."""

    def face_ids(self) -> np.ndarray:
        """Every usable face id, sorted."""

    def embeddings_of(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of a subject's usable faces, verified."""

    # ---- negative examples ("not this person"): in the store only, never in the index

    def add_negative(
        self,
        subject_id: str,
        embedding: np.ndarray | None,
        *,
        source: NegativeSource,
        face_id: int | None,
        limit: int,
    ) -> tuple[Negative, bool]:
        """Store a negative example of a subject (``embedding``, or a copy of gallery face
        ``face_id``'s); (negative, created). SubjectNotFound, FaceNotFound, InvalidRequest,
        TooManyNegatives."""

    def list_negatives(self, subject_id: str) -> list[Negative]:
        """A subject's negative examples, oldest first; SubjectNotFound."""

    def delete_negative(self, subject_id: str, negative_id: int) -> None:
        """Erase one negative example (also on a full disk); NegativeNotFound."""

    def negatives_of(self, subject_ids: list[str]) -> dict[str, np.ndarray]:
        """subject id -> embeddings of its negatives of the gallery's model (verified), for
        those of ``subject_ids`` that have any."""

    # ---- search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest faces per query by cosine: (scores, face ids), each (n, k); missing
        neighbours have id -1. May include faces deleted a moment ago: see ``owners``."""

    def owners(self, face_ids: list[int]) -> dict[int, tuple[str, str]]:
        """face id -> (subject id, name) for the faces that exist and are usable now."""

    def searchable(self) -> int:
        """How many faces a search can reach (widening past it finds nothing more)."""

    # ---- integrity and upkeep

    def check_index(self) -> IndexCheck:
        """How the index compares with the store right now."""

    def reconcile(self) -> dict[str, int]:
        """Bring the index in line with the store (replay what it lacks, drop what the store
        no longer has): {"replayed", "removed", "faces"}."""

    def repair(self) -> None:
        """Rebuild the index from the store, off the request path (e.g. it returned a score
        no unit vectors can have)."""

    def verify(self) -> list[Quarantined]:
        """Check every stored embedding now; quarantine the ones that fail; all quarantined."""

    def other_models(self) -> dict[str, int]:
        """model id -> faces stored with another model's embeddings (kept, never compared)."""

    def all_face_ids(self) -> set[int]:
        """Every stored face id, whatever its state or model."""

    def quarantined(self) -> list[Quarantined]:
        """Faces set aside because their stored embedding failed its check."""

    def maintain(self) -> bool:
        """Periodic upkeep (persist the index, replay missed writes, purge erased rows from
        logs, scheduled builds); True when more work is due soon."""

    def wait_for_work(self, timeout_s: float) -> bool:
        """Sleep until upkeep is due (an erasure to push to disk) or the timeout passes; True
        when upkeep is due."""

    def wait_until_indexed(self, timeout_s: float) -> bool:
        """Block until no index build or repair is pending; False on timeout."""

    def stats(self) -> dict[str, Any]:
        """Sizes and the index in use, for /readyz."""

    # ---- copying between backends

    def iter_subjects(self, batch: int) -> Iterator[list[Subject]]:
        """Every subject, in pages."""

    def iter_faces(self, batch: int) -> Iterator[list[tuple[FaceRecord, np.ndarray]]]:
        """Every face with its embedding, in id order, in pages."""

    def iter_negatives(self, batch: int) -> Iterator[list[tuple[Negative, np.ndarray]]]:
        """Every negative example with its embedding, in pages."""

    def import_negatives(self, negatives: list[tuple[Negative, np.ndarray]]) -> None:
        """Insert negative examples as they are (after their subjects and faces)."""

    def import_subjects(self, subjects: list[Subject]) -> None:
        """Insert subjects as they are (ids and creation times kept)."""

    def import_faces(self, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
        """Insert faces as they are (face ids kept) and index them."""

    def counts(self) -> tuple[int, int]:
        """(subjects, faces)."""

    # ---- moving to another model

    def _guard(self) -> AbstractContextManager[Any]:
        """Held around a store write and its index write."""

    def build_index(self, target: ModelPin, ids: np.ndarray, vectors: np.ndarray) -> Any:
        """An index of another model's embeddings, built beside the live one."""

    def adopt_index(self, index: Any) -> None:
        """Search ``index`` (from ``build_index``) from now on; the store has switched."""

    def close(self) -> None:
        """Persist what is pending and release connections."""
