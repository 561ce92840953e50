"""The contract of a gallery's store: subjects, faces and negative examples, durable, the source
of truth (an index is derived from it). ``SqlStore`` fills it for SQLite and PostgreSQL.

Every write is committed before it returns and advances the store's generation. Every read of
embeddings is verified (checksum, unit norm): a face that fails is quarantined, reported to
``on_quarantine`` (the gallery takes it out of its index) and never returned or compared.
Only ``service.gallery.gallery.Gallery`` writes a store: it adds the index, the kept face data
and the audit that a write needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from service.gallery.records import (
    FaceRecord,
    Negative,
    NegativeSource,
    NewFace,
    Quarantined,
    Subject,
)


class Store(Protocol):
    """Durable subjects and faces of one embedding model (see the module docstring)."""

    model_id: str
    embedding_dim: int
    #: random, made when the gallery is created (its images folder is bound to it)
    gallery_id: str
    on_quarantine: Callable[[list[int]], None] | None

    def check_pin(self, cur: Any = None) -> None:
        """ModelMismatch when the gallery was switched to another model since this store was
        opened (another replica, or migrate-model)."""
        ...

    def check_model(self, model_id: str) -> None:
        """Raise ModelMismatch unless embeddings of ``model_id`` belong here."""
        ...

    # ---- subjects

    def create_subject(self, subject_id: str, name: str, metadata: dict[str, Any]) -> Subject:
        """Insert a subject; SubjectExists."""
        ...

    def get_subject(self, subject_id: str) -> Subject:
        """One subject with its face count; SubjectNotFound."""
        ...

    def existing_subjects(self, subject_ids: Sequence[str]) -> set[str]:
        """Which of these subject ids exist now."""
        ...

    def list_subjects(
        self, offset: int, limit: int, search: str | None = None
    ) -> tuple[list[Subject], int]:
        """A page ordered by creation, and the total."""
        ...

    def update_subject(
        self, subject_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Subject:
        """Rename or change metadata; SubjectNotFound."""
        ...

    def delete_subject(self, subject_id: str) -> list[int]:
        """Delete a subject, its faces and negatives; the deleted face ids. SubjectNotFound."""
        ...

    # ---- faces

    def add_faces(
        self, subject_id: str, faces: list[NewFace], *, create_name: str | None = None
    ) -> list[tuple[int, bool]]:
        """Insert faces in one transaction; (face id, created) per face."""
        ...

    def add_faces_many(
        self, items: list[tuple[str, NewFace]], *, creatable: frozenset[str] | None = None
    ) -> list[tuple[str, int | None, bool]]:
        """Faces of many subjects in one transaction (batch indexing)."""
        ...

    def delete_face(self, face_id: int) -> str:
        """Delete one face; its subject id. FaceNotFound."""
        ...

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        """The faces of a subject; SubjectNotFound."""
        ...

    def known_images(self) -> set[tuple[str, str]]:
        """Every (subject id, image sha256) enrolled."""
        ...

    def owners(self, face_ids: list[int]) -> dict[int, tuple[str, str]]:
        """face id -> (subject id, name) of the faces that exist and are usable now."""
        ...

    def counts(self) -> tuple[int, int]:
        """(subjects, faces)."""
        ...

    # ---- embeddings (verified)

    def face_ids(self) -> np.ndarray:
        """Every usable face id, sorted (what the index must hold)."""
        ...

    def all_face_ids(self) -> set[int]:
        """Every stored face id, whatever its state or model."""
        ...

    def embeddings_of(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of a subject's usable faces."""
        ...

    def embeddings_by_id(self, face_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of those ids that exist and are usable, sorted by id."""
        ...

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Every usable (face id, embedding) and the generation read before them."""
        ...

    def generation(self) -> int:
        """A counter every write advances."""
        ...

    def content_digest(self) -> int | None:
        """The sum of every stored checksum (None: this dialect keeps none)."""
        ...

    # ---- negative examples ("not this person")

    def add_negative(
        self,
        subject_id: str,
        embedding: np.ndarray | None,
        *,
        source: NegativeSource,
        face_id: int | None,
        limit: int,
    ) -> tuple[Negative, bool]:
        """Store a negative example; (negative, created)."""
        ...

    def list_negatives(self, subject_id: str) -> list[Negative]:
        """A subject's negative examples, oldest first; SubjectNotFound."""
        ...

    def delete_negative(self, subject_id: str, negative_id: int) -> None:
        """Erase one negative example; NegativeNotFound."""
        ...

    def negatives_of(self, subject_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """subject id -> embeddings of its negatives of the gallery's model."""
        ...

    # ---- integrity

    def quarantined(self) -> list[Quarantined]:
        """Faces set aside because their stored embedding failed its check."""
        ...

    def verify_all(self) -> list[Quarantined]:
        """Check every stored embedding now; all quarantined faces."""
        ...

    def other_models(self) -> dict[str, int]:
        """model id -> faces stored with another model's embeddings."""
        ...

    def record_weights(self, model_id: str, model_sha256: str) -> None:
        """Remember the full sha256 of the gallery's model's weights."""
        ...

    # ---- copying between galleries

    def iter_subjects(self, batch: int) -> Iterator[list[Subject]]:
        """Every subject, in pages."""
        ...

    def iter_faces(self, batch: int) -> Iterator[list[tuple[FaceRecord, np.ndarray]]]:
        """Every face with its embedding, in id order, in pages."""
        ...

    def iter_negatives(self, batch: int) -> Iterator[list[tuple[Negative, np.ndarray]]]:
        """Every negative example with its embedding, in pages."""
        ...

    def import_subjects(self, subjects: list[Subject]) -> None:
        """Insert subjects as they are."""
        ...

    def import_faces(self, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
        """Insert faces as they are (face ids kept)."""
        ...

    def import_negatives(self, negatives: list[tuple[Negative, np.ndarray]]) -> None:
        """Insert negative examples as they are."""
        ...

    # ---- upkeep

    def purge_logs(self) -> bool:
        """After deletes: push erased rows out of logs; False to retry later."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
