"""The contract of a gallery's index: nearest faces by cosine over unit embeddings, keyed by
face id, derived from the store (which stays the source of truth).

``VectorIndex`` is what an index does; FAISS (``index.FaissIndex``, which can also save, load
and rebuild itself) and Milvus (``milvus.MilvusIndex``) fill it. ``KeptIndex`` adds what a
gallery needs to keep one in step with its store: a guard held around each write, a repair
when it missed a write, periodic upkeep. The embedded gallery keeps FAISS in
``live_index.LiveFaissIndex`` (a file beside the store, builds off the request path); Milvus
keeps itself, so ``MilvusIndex`` fills ``KeptIndex`` directly.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from service.gallery.staging import ModelPin


class VectorIndex(Protocol):
    """Face ids and their unit embeddings, searched by inner product (= cosine)."""

    @property
    def ntotal(self) -> int:
        """How many vectors a search can reach."""
        ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors under their face ids."""
        ...

    def remove(self, ids: list[int]) -> None:
        """Drop face ids (absent ones are ignored)."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, face ids) per query, each (n, k); missing neighbours have id -1."""
        ...

    def ids(self) -> np.ndarray:
        """Every face id held, sorted."""
        ...

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (face id, vector) held, sorted by id (agreement checks)."""
        ...

    def describe(self) -> str:
        """What index is in use, for /readyz."""
        ...


class KeptIndex(VectorIndex, Protocol):
    """An index as a gallery keeps it in step with its store (see the module docstring).

    ``add`` and ``remove`` may raise: the store already holds the write, so the gallery logs
    it, calls ``repair`` and reconciles the index with the store at its next upkeep."""

    def guard(self) -> AbstractContextManager[Any]:
        """Held around a store write and its index write, so a save sees whole writes."""
        ...

    def repair(self) -> None:
        """The index missed a write or returned impossible scores: rebuild what the index
        itself can rebuild, off the request path."""
        ...

    def maintain(self) -> None:
        """Periodic upkeep of the index itself (persist it, seal segments, scheduled builds);
        BackendUnavailable when it cannot be reached (the gallery reconciles later)."""
        ...

    def wait_until_indexed(self, timeout_s: float) -> bool:
        """Block until no build or repair is pending; False on timeout."""
        ...

    def details(self) -> dict[str, Any]:
        """The backend and index in use, for /readyz (``backend``, ``index_factory``, ...)."""
        ...

    def build_for(self, target: ModelPin, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        """An index of another model's embeddings (a gallery moving to ``target``), built
        beside this one, which keeps serving (service.gallery.staging)."""
        ...

    def adopt(self, index: VectorIndex) -> None:
        """Serve ``index`` (from ``build_for``) from now on: the store has just switched to
        its model. The old model's vectors leave (file, collection)."""
        ...

    def close(self) -> None:
        """Persist what is pending and release the index."""
        ...
