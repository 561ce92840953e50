"""The two halves of a gallery backend, as the Gallery sees them.

A store is the source of truth (subjects, faces, embeddings; SQLite or PostgreSQL); an index is
derived from it and answers nearest-neighbour searches (FAISS in-process, or Milvus shared by
several API replicas). Each backend implements both; the Gallery keeps them in step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.gallery.records import FaceRecord, NewFace, Subject


class FaceStore(Protocol):
    """Durable subjects and faces; every write is committed before it returns."""

    model_id: str
    embedding_dim: int

    def check_model(self, model_id: str) -> None:
        """Raise ModelMismatch unless embeddings of ``model_id`` belong here."""

    def generation(self) -> int:
        """A counter every write advances (the FAISS index records the one it reflects)."""

    def create_subject(self, subject_id: str, name: str, metadata: dict[str, Any]) -> Subject:
        """Insert a subject; SubjectExists when taken."""

    def get_subject(self, subject_id: str) -> Subject:
        """One subject with its face count; SubjectNotFound."""

    def list_subjects(
        self, offset: int, limit: int, search: str | None = None
    ) -> tuple[list[Subject], int]:
        """A page ordered by creation, and the total."""

    def update_subject(
        self, subject_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Subject:
        """Rename or change metadata; SubjectNotFound."""

    def delete_subject(self, subject_id: str) -> list[int]:
        """Delete a subject and its faces; the deleted face ids."""

    def add_faces(
        self, subject_id: str, faces: list[NewFace], *, create_name: str | None = None
    ) -> list[tuple[int, bool]]:
        """Insert faces in one transaction; (face id, created) per face."""

    def add_faces_many(self, items: list[tuple[str, NewFace]]) -> list[tuple[str, int, bool]]:
        """Faces of many subjects in one transaction (batch indexing)."""

    def known_images(self) -> set[tuple[str, str]]:
        """Every (subject id, image sha256) enrolled."""

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        """The faces of a subject; SubjectNotFound."""

    def delete_face(self, face_id: int) -> str:
        """Delete one face; its subject id. FaceNotFound."""

    def embeddings_of(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of one subject."""

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Every (face id, embedding), and the generation, read consistently."""

    def face_ids(self) -> np.ndarray:
        """Every face id, sorted (what reconcile compares with the index)."""

    def embeddings_by_id(self, face_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of those ids that still exist, sorted by id."""

    def subject_of_faces(self, face_ids: list[int]) -> dict[int, tuple[str, str]]:
        """face id -> (subject id, name), for search results."""

    def counts(self) -> tuple[int, int]:
        """(subjects, faces)."""

    def iter_subjects(self, batch: int) -> Iterator[list[Subject]]:
        """Every subject, in pages (copying a gallery between backends)."""

    def iter_faces(self, batch: int) -> Iterator[list[tuple[FaceRecord, np.ndarray]]]:
        """Every face with its embedding, in id order, in pages."""

    def import_subjects(self, subjects: list[Subject]) -> None:
        """Insert subjects as they are (ids and creation times kept)."""

    def import_faces(self, faces: list[tuple[FaceRecord, np.ndarray]]) -> None:
        """Insert faces as they are (face ids kept, so both backends answer alike)."""

    def purge_wal(self) -> bool:
        """After deletes: push erased rows out of logs and free pages; False to retry later."""

    def close(self) -> None:
        """Release the connection."""


class FaceIndex(Protocol):
    """Nearest neighbours by inner product over unit vectors (= cosine)."""

    #: True when the index outlives this process and other replicas write it too (Milvus):
    #: the gallery then reconciles it with the store instead of rebuilding it at start.
    shared: bool
    generation: int
    use_gpu: bool

    @property
    def ntotal(self) -> int:
        """Vectors in the index."""

    @property
    def wants_rebuild(self) -> bool:
        """Whether a rebuild from the store would switch to a better (trained) structure."""

    def describe(self) -> str:
        """The index structure in use, for /readyz."""

    def add(self, ids: np.ndarray, vectors: np.ndarray, generation: int) -> None:
        """Add (or replace) vectors under their face ids."""

    def remove(self, ids: list[int], generation: int) -> None:
        """Remove face ids; absent ones are ignored."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k); missing neighbours have id -1."""

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray, generation: int) -> None:
        """Replace the contents with exactly these vectors."""

    def ids(self) -> np.ndarray:
        """Every id in the index, sorted."""

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector), sorted by id (tests compare them with the store)."""

    def load(self, path: Path | None) -> bool:
        """Restore a persisted copy; False when there is none (then the gallery rebuilds)."""

    def save(self, path: Path | None) -> None:
        """Persist: a file for FAISS, a flush of written segments for Milvus."""

    def close(self) -> None:
        """Release connections."""
