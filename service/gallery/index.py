"""The FAISS index over unit vectors (inner product = cosine); derived from the store, persisted.

This module and no other imports faiss.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)


def min_train_size(factory: str) -> int:
    """Vectors needed to train a factory well (0: no training). FAISS's own rule of thumb is 39
    points per IVF list and per PQ centroid (256 for 8-bit codes: about 10k points)."""
    need = 0
    ivf = re.search(r"IVF(\d+)", factory)
    if ivf:
        need = 39 * int(ivf.group(1))
    pq = re.search(r"PQ\d+(?:x(\d+))?", factory)
    if pq:
        need = max(need, 39 * 2 ** int(pq.group(1) or 8))
    return need


def gpu_available() -> bool:
    """Whether this faiss build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class VectorIndex:
    """An ID-mapped FAISS index built from a factory string ("Flat" = exact cosine).

    A factory that needs training (IVF, PQ) searches exactly until the gallery holds enough
    vectors to train it (``min_train_size``); then ``wants_rebuild`` asks the gallery to rebuild
    it from the store. With ``use_gpu`` (and faiss-gpu) searches run on a GPU copy of the inner
    index, refreshed after writes; the CPU index stays the one that is saved.
    """

    def __init__(
        self, dim: int, factory: str = "Flat", *, search_params: str = "", use_gpu: bool = False
    ) -> None:
        self.dim = dim
        self.factory = factory
        self.search_params = search_params
        self.min_train = min_train_size(factory)
        self.active_factory = factory if self.min_train == 0 else "Flat"
        self.use_gpu = use_gpu and gpu_available()
        if use_gpu and not self.use_gpu:
            log.warning("gallery.use_gpu is set but faiss has no GPU here; searching on the CPU")
        self._device_copy: Any = None
        self._index: Any = self._new(self.active_factory)
        self.generation = -1
        self.shared = False  # in-process: rebuilt from the store whenever its file is stale

    def _new(self, factory: str) -> Any:
        base = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        if self.search_params and factory == self.factory:
            faiss.ParameterSpace().set_index_parameters(base, self.search_params)  # type: ignore[arg-type]
        return faiss.IndexIDMap2(base)

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return int(self._index.ntotal)

    @property
    def needs_training(self) -> bool:
        """Whether the factory (IVF, PQ) must be trained before adding."""
        return not faiss.downcast_index(self._index.index).is_trained

    @property
    def wants_rebuild(self) -> bool:
        """Searching exactly for now, but there are enough vectors to train the real factory."""
        return self.active_factory != self.factory and self.ntotal >= self.min_train

    def describe(self) -> str:
        """The factory in use, and why if it is not the configured one."""
        if self.active_factory == self.factory:
            return self.factory
        return f"{self.active_factory} (exact until {self.min_train} faces train {self.factory})"

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray, generation: int) -> None:
        """Replace the contents with exactly these vectors (training the index when it needs it)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        factory = self.factory if len(vectors) >= self.min_train else "Flat"
        fresh = self._new(factory)
        base: Any = faiss.downcast_index(fresh.index)
        if not base.is_trained and len(vectors):
            base.train(vectors)
        if len(vectors):
            fresh.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._index = fresh
        self.active_factory = factory
        self.generation = generation
        self._device_copy = None

    def add(self, ids: np.ndarray, vectors: np.ndarray, generation: int) -> None:
        """Add vectors under their face ids."""
        if self.needs_training:
            raise RuntimeError("index is not trained; rebuild it from the store first")
        self._index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32),
            np.ascontiguousarray(ids, dtype=np.int64),
        )
        self.generation = generation
        self._device_copy = None

    def remove(self, ids: list[int], generation: int) -> None:
        """Remove face ids (absent ids are ignored)."""
        if ids:
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
            self._device_copy = None
        self.generation = generation

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; missing slots have id -1."""
        k = max(1, min(k, max(self.ntotal, 1)))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0:
            n = len(queries)
            return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
        if self.use_gpu:
            return self._search_on_device(queries, k)
        scores, ids = self._index.search(queries, k)
        return scores, ids

    def _to_device(self, inner: Any) -> Any:
        """A GPU copy of the inner index (HNSW has no GPU version: it stays on the CPU)."""
        resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(resources, 0, inner)

    def _search_on_device(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search the device copy; its positions map to face ids through the IDMap2's id_map."""
        if self._device_copy is None:
            try:
                self._device_copy = self._to_device(faiss.downcast_index(self._index.index))
            except RuntimeError as exc:  # e.g. an HNSW factory
                log.warning("this index cannot move to the GPU (%s); searching on the CPU", exc)
                self.use_gpu = False
                scores, ids = self._index.search(queries, k)
                return scores, ids
        scores, positions = self._device_copy.search(queries, k)
        id_map = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        ids = np.where(positions >= 0, id_map[np.clip(positions, 0, None)], -1)
        return scores, ids

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) stored in the index, sorted by id (for store/index agreement checks)."""
        n = self.ntotal
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        inner: Any = faiss.downcast_index(self._index.index)
        if isinstance(inner, faiss.IndexIVF) and inner.direct_map.type == 0:
            inner.make_direct_map()  # reconstruct() on IVF needs it (PQ gives approximations)
        vecs = np.stack([self._index.reconstruct(int(i)) for i in ids])
        order = np.argsort(ids)
        return ids[order], vecs[order]

    def ids(self) -> np.ndarray:
        """Every face id in the index, sorted."""
        return np.sort(faiss.vector_to_array(self._index.id_map).astype(np.int64))

    def close(self) -> None:
        """Nothing to release (the gallery saves the index before closing)."""

    def save(self, path: Path | None) -> None:
        """Write the index and its generation atomically (temp file, fsync, rename)."""
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        faiss.write_index(self._index, str(tmp))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
        meta = {
            "generation": self.generation,
            "factory": self.factory,
            "active_factory": self.active_factory,
            "dim": self.dim,
        }
        meta_path = path.with_suffix(".json")
        meta_tmp = meta_path.with_suffix(".json.tmp")
        meta_tmp.write_text(json.dumps(meta))
        meta_tmp.replace(meta_path)

    def load(self, path: Path | None) -> bool:
        """Load a saved index if it exists, is readable and was built with this factory."""
        if path is None:
            return False
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
        self.active_factory = str(meta.get("active_factory", self.factory))
        if self.search_params and self.active_factory == self.factory:
            faiss.ParameterSpace().set_index_parameters(
                faiss.downcast_index(index.index),
                self.search_params,  # type: ignore[arg-type]
            )
        self.generation = int(meta.get("generation", -1))
        self._device_copy = None
        return True
