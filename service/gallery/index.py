"""The FAISS index over unit vectors (inner product = cosine); derived from the store, persisted.

This module and no other imports faiss.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)


class VectorIndex:
    """An ID-mapped FAISS index built from a factory string ("Flat" = exact cosine)."""

    def __init__(self, dim: int, factory: str = "Flat") -> None:
        self.dim = dim
        self.factory = factory
        self._index: Any = self._new()
        self.generation = -1

    def _new(self) -> Any:
        base = faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexIDMap2(base)

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return int(self._index.ntotal)

    @property
    def needs_training(self) -> bool:
        """Whether the factory (IVF, PQ) must be trained before adding."""
        return not faiss.downcast_index(self._index.index).is_trained

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray, generation: int) -> None:
        """Replace the contents with exactly these vectors (training the index when it needs it)."""
        fresh = self._new()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        base: Any = faiss.downcast_index(fresh.index)
        if not base.is_trained and len(vectors):
            base.train(vectors)
        if len(vectors):
            fresh.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._index = fresh
        self.generation = generation

    def add(self, ids: np.ndarray, vectors: np.ndarray, generation: int) -> None:
        """Add vectors under their face ids."""
        if self.needs_training:
            raise RuntimeError("index is not trained; rebuild it from the store first")
        self._index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32),
            np.ascontiguousarray(ids, dtype=np.int64),
        )
        self.generation = generation

    def remove(self, ids: list[int], generation: int) -> None:
        """Remove face ids (absent ids are ignored)."""
        if ids:
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
        self.generation = generation

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; missing slots have id -1."""
        k = max(1, min(k, max(self.ntotal, 1)))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0:
            n = len(queries)
            return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
        scores, ids = self._index.search(queries, k)
        return scores, ids

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) stored in the index, sorted by id (for store/index agreement checks)."""
        n = self.ntotal
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vecs = np.stack([self._index.reconstruct(int(i)) for i in ids])
        order = np.argsort(ids)
        return ids[order], vecs[order]

    def save(self, path: Path) -> None:
        """Write the index and its generation atomically (temp file, fsync, rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        faiss.write_index(self._index, str(tmp))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
        meta = {"generation": self.generation, "factory": self.factory, "dim": self.dim}
        meta_path = path.with_suffix(".json")
        meta_tmp = meta_path.with_suffix(".json.tmp")
        meta_tmp.write_text(json.dumps(meta))
        meta_tmp.replace(meta_path)

    def load(self, path: Path) -> bool:
        """Load a saved index if it exists, is readable and was built with this factory."""
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("factory") != self.factory or meta.get("dim") != self.dim:
                log.warning(
                    "index at %s was built as %s; rebuilding as %s", path, meta, self.factory
                )
                return False
            index = faiss.read_index(str(path))
        except Exception as exc:  # a corrupt file raises RuntimeError or ValueError in FAISS
            log.warning(
                "index at %s is unreadable (%s); it will be rebuilt from the store", path, exc
            )
            return False
        # read_index returns the concrete class; a downcast wrapper would not own the object.
        if not isinstance(index, faiss.IndexIDMap2) or index.d != self.dim:
            return False
        self._index = index
        self.generation = int(meta.get("generation", -1))
        return True
