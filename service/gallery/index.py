"""The FAISS index over unit vectors (inner product = cosine); derived from the store, persisted.

This module and no other imports faiss. A saved index is a file plus a JSON side file that
records what the file is (factory, dimension, its own sha256) and which store state it reflects
(generation, content digest); the embedded backend loads it only when all of them agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
#: the OpenMP threads FAISS would use (all the cores it sees): builds and bulk searches use them
ALL_THREADS = faiss.omp_get_max_threads()
#: a search of fewer queries than this is a request's: it runs on ``search_threads`` (1) FAISS
#: threads; concurrent requests are the parallelism, and a second OpenMP thread made a single
#: fast-scan query 30-60 times slower on 2 cores (docs/benchmarks.md)
BULK_QUERIES = 64
_HASHTABLE = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]  # an IVF's id -> entry map
#: a device copy is uploaded afresh (off the request path) once this share of it was deleted
DEVICE_STALE_FRACTION = 0.1


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


def _drop(
    scores: np.ndarray, ids: np.ndarray, masked: set[int], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Search results without masked (deleted) ids, best first, cut to k (padded with -1)."""
    if masked:
        hidden = np.isin(ids, list(masked))
        ids = np.where(hidden, -1, ids)
        scores = np.where(hidden, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
    out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(ids), k), -1, dtype=np.int64)
    width = min(k, ids.shape[1])
    out_scores[:, :width], out_ids[:, :width] = scores[:, :width], ids[:, :width]
    return out_scores, out_ids


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run FAISS on ``n`` OpenMP threads (0: all) for the calling thread, then restore its
    previous count. OpenMP's count is per calling thread, so a pin made elsewhere (the main
    thread at start-up) never reaches the server's worker threads: it is set here, in the
    thread that calls FAISS, around every call."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n if n > 0 else ALL_THREADS)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ivf_of(index: Any) -> Any:
    """The IVF inside an index (an IndexPreTransform may wrap it), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, ValueError):
        return None


class FaissIndex:
    """A FAISS index over face ids, built from a factory string ("Flat" = exact cosine).

    How ids are kept depends on the structure, because FAISS's IndexIDMap2 only stays right
    under deletes when the inner index renumbers its rows on removal (flat codes do, IVF does
    not: two deletes through an IDMap2 over IVF scrambled every id after them):
    - IVF factories hold the face ids themselves (a hash-table direct map for reconstruct);
    - flat codes (Flat, PQ, ...) sit in an IndexIDMap2;
    - HNSW and a re-ranked index (``...,RFlat``: fast-scan PQ candidates re-scored on the exact
      vectors it keeps) cannot delete: deleted ids are masked (searches skip them) and a rebuild
      off the request path drops them; while any are masked the index is never written to
      disk.

    A factory that needs training (IVF, PQ) searches exactly until it has enough vectors to
    train (``min_train_size``), and any factory until the gallery holds ``exact_below`` faces
    (the size-based switch); ``wants_rebuild`` then asks for a build from the store. With
    ``use_gpu`` (and faiss-gpu) searches run on one device copy, uploaded once and kept: adds go
    to it as well, deleted ids are masked until a fresh upload (off the request path) drops them.

    FAISS's OpenMP threads: a request's search or add (fewer than ``BULK_QUERIES`` vectors) runs
    on ``search_threads``, a build and a bulk search on ``build_threads`` (0: all cores).
    """

    def __init__(
        self,
        dim: int,
        factory: str = "Flat",
        *,
        search_params: str = "",
        use_gpu: bool = False,
        exact_below: int = 0,
        search_threads: int = 1,
        build_threads: int = 0,
    ) -> None:
        self.dim = dim
        self.search_threads = search_threads
        self.build_threads = build_threads
        self.factory = factory
        self.search_params = search_params
        # exact search until the gallery is big enough to need the factory (``exact_below``)
        # and to train it: a small gallery loses no recall and little time to brute force
        floor = exact_below if factory != "Flat" else 0
        self.min_train = max(min_train_size(factory), floor)
        self.active_factory = factory if self.min_train == 0 else "Flat"
        self.use_gpu = use_gpu and gpu_available()
        if use_gpu and not self.use_gpu:
            log.warning("gallery.use_gpu is set but faiss has no GPU here; searching on the CPU")
        self._masked: set[int] = set()  # deleted from an index that cannot delete (HNSW)
        self._index: Any = self._new(self.active_factory)
        self._gpu_resources: Any = None
        self._device: Any = None  # the device copy of the inner index
        self._device_ids: np.ndarray = np.zeros(0, dtype=np.int64)  # device position -> face id
        self._device_masked: set[int] = set()  # ids deleted since the upload

    def _new(self, factory: str) -> Any:
        base = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        if self.search_params and factory == self.factory:
            faiss.ParameterSpace().set_index_parameters(base, self.search_params)  # type: ignore[arg-type]
        self._masked = set()
        ivf = _ivf_of(base)
        if ivf is not None and not isinstance(base, faiss.IndexRefine):
            ivf.set_direct_map_type(_HASHTABLE)
            return base
        # a re-ranked index (",RFlat": its exact vectors are found by row) numbers its rows
        # itself, like flat codes; it cannot delete, so deleted ids are masked (as for HNSW)
        return faiss.IndexIDMap2(base)

    @property
    def _native_ids(self) -> bool:
        """The index keeps face ids itself (IVF) rather than through an IndexIDMap2."""
        return not isinstance(self._index, faiss.IndexIDMap2)

    def _inner(self) -> Any:
        return self._index if self._native_ids else faiss.downcast_index(self._index.index)

    @property
    def ntotal(self) -> int:
        """Number of (live) vectors in the index."""
        return int(self._index.ntotal) - len(self._masked)

    @property
    def needs_training(self) -> bool:
        """Whether the factory (IVF, PQ) must be trained before adding."""
        return not self._inner().is_trained

    @property
    def masked(self) -> int:
        """Deleted ids an HNSW index still holds (skipped by searches)."""
        return len(self._masked)

    @property
    def wants_rebuild(self) -> bool:
        """A build from the store would do better: there are enough vectors to train the real
        factory, or an index that cannot delete holds deleted vectors."""
        trainable = self.active_factory != self.factory and self.ntotal >= self.min_train
        return trainable or bool(self._masked)

    def describe(self) -> str:
        """The factory in use, and why if it is not the configured one."""
        if self.active_factory == self.factory:
            return self.factory
        return f"{self.active_factory} (exact until {self.min_train} faces, then {self.factory})"

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the contents with exactly these vectors (training the index when it needs
        it). Slow for a trained factory: the embedded backend calls it on a fresh instance
        beside the live one, then swaps."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        factory = self.factory if len(vectors) >= self.min_train else "Flat"
        fresh = self._new(factory)
        base: Any = (
            faiss.downcast_index(fresh.index) if isinstance(fresh, faiss.IndexIDMap2) else fresh
        )
        with faiss_threads(self.build_threads):
            if not base.is_trained and len(vectors):
                base.train(vectors)
            if len(vectors):
                fresh.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._index = fresh
        self.active_factory = factory
        self._drop_device()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their face ids (and to the device copy)."""
        if self.needs_training:
            raise RuntimeError("index is not trained; rebuild it from the store first")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with faiss_threads(self._threads_for(len(vectors))):
            self._index.add_with_ids(vectors, ids)
        if self._device is not None:
            if self._native_ids:
                self._device.add_with_ids(vectors, ids)
            else:
                self._device.add(vectors)
                self._device_ids = np.concatenate([self._device_ids, ids])

    def remove(self, ids: list[int]) -> None:
        """Remove face ids (absent ids are ignored); the device copy masks them, and so does an
        index that cannot delete (HNSW)."""
        if not ids:
            return
        present = [int(i) for i in ids if int(i) not in self._masked]
        try:
            self._index.remove_ids(np.asarray(present, dtype=np.int64))
        except RuntimeError:  # HNSW, IndexRefine: no deletes in FAISS
            known = set(self.ids().tolist())
            self._masked.update(i for i in present if i in known)
        if self._device is not None:
            self._device_masked.update(present)

    @property
    def device_stale(self) -> bool:
        """Whether the device copy carries enough masked ids to be worth uploading again."""
        return self._device is not None and len(self._device_masked) > DEVICE_STALE_FRACTION * max(
            1, len(self._device_ids)
        )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; missing slots have id -1."""
        k = max(1, min(k, max(self.ntotal, 1)))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0:
            n = len(queries)
            return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
        if self.use_gpu:
            return self._search_on_device(queries, k)
        with faiss_threads(self._threads_for(len(queries))):
            if not self._masked:
                scores, ids = self._index.search(queries, k)
                return scores, ids
            wide = min(k + len(self._masked), self._index.ntotal)
            scores, ids = self._index.search(queries, wide)
        return _drop(scores, ids, self._masked, k)

    def _threads_for(self, n: int) -> int:
        """FAISS threads for a call on ``n`` vectors: a request's few, or a bulk job's many."""
        return self.search_threads if n < BULK_QUERIES else self.build_threads

    def _to_device(self, inner: Any) -> Any:
        """A GPU copy of the inner index (HNSW has no GPU version: it stays on the CPU); one
        StandardGpuResources per index, made once."""
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_resources, 0, inner)

    def upload(self) -> None:
        """(Re)build the device copy from the CPU index; an index that cannot move to the GPU
        is searched on the CPU from then on."""
        if not self.use_gpu:
            return
        try:
            device = self._to_device(self._inner())
        except RuntimeError as exc:  # e.g. an HNSW factory
            log.warning("this index cannot move to the GPU (%s); searching on the CPU", exc)
            self.use_gpu = False
            return
        self._device = device
        self._device_ids = (
            np.zeros(0, dtype=np.int64)
            if self._native_ids
            else faiss.vector_to_array(self._index.id_map).astype(np.int64)
        )
        self._device_masked = set()

    def _drop_device(self) -> None:
        self._device, self._device_masked = None, set()
        self._device_ids = np.zeros(0, dtype=np.int64)

    def _search_on_device(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search the device copy; positions map to face ids, masked (deleted) ids are skipped."""
        if self._device is None:
            self.upload()
            if self._device is None:
                scores, ids = self._index.search(queries, k)
                return scores, ids
        wide = min(k + len(self._device_masked), int(self._device.ntotal))
        scores, found = self._device.search(queries, max(1, wide))
        if not self._native_ids:  # positions of the device copy -> face ids
            found = np.where(found >= 0, self._device_ids[np.clip(found, 0, None)], -1)
        return _drop(scores, found, self._device_masked, k)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) stored in the index, sorted by id (for store/index agreement checks;
        PQ codes give approximations)."""
        ids = self.ids()
        if len(ids) == 0:
            return ids, np.zeros((0, self.dim), dtype=np.float32)
        return ids, np.stack([self._index.reconstruct(int(i)) for i in ids])

    def ids(self) -> np.ndarray:
        """Every live face id in the index, sorted."""
        if self._native_ids:
            ivf = _ivf_of(self._index)
            lists = ivf.invlists
            parts = [
                faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                for i in range(ivf.nlist)
                if lists.list_size(i)
            ]
            ids = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        else:
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if self._masked:
            ids = ids[~np.isin(ids, list(self._masked))]
        return np.sort(ids)

    def copy(self) -> Any:
        """A CPU copy of the index to write out while the live one keeps changing."""
        return faiss.clone_index(self._index)

    def save(self, path: Path, state: dict[str, Any], *, frozen: Any = None) -> None:
        """Write the index (or ``frozen``, a copy of it) atomically (temp file, fsync, rename)
        with a side file recording the factory, its sha256 and ``state`` (which store state it
        reflects). Raises OSError (a full disk: the previous files stay as they were), or
        ValueError while deleted vectors are only masked (they must not reach the disk)."""
        if self._masked:
            raise ValueError("the index holds deleted vectors (masked): rebuild it before saving")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        try:
            faiss.write_index(frozen if frozen is not None else self._index, str(tmp))
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
        except RuntimeError as exc:  # FAISS reports a failed write as RuntimeError
            tmp.unlink(missing_ok=True)
            raise OSError(f"writing the index failed: {exc}") from exc
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        meta = {
            **state,
            "factory": self.factory,
            "active_factory": self.active_factory,
            "dim": self.dim,
            "count": int((frozen if frozen is not None else self._index).ntotal),
            "sha256": _sha256(tmp),
        }
        meta_path = path.with_suffix(".json")
        meta_tmp = meta_path.with_suffix(".json.tmp")
        try:
            meta_tmp.write_text(json.dumps(meta))
        except OSError:
            tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)
            raise
        meta_path.unlink(missing_ok=True)  # never a side file that vouches for another index
        tmp.replace(path)
        meta_tmp.replace(meta_path)

    @staticmethod
    def saved_state(path: Path) -> dict[str, Any] | None:
        """What a saved index says of itself (generation, digest, ``count`` of vectors), without
        loading it; None when there is none. A file from before ``count`` was recorded is read
        to count it."""
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = dict(json.loads(meta_path.read_text()))
            if "count" not in meta:
                meta["count"] = int(faiss.read_index(str(path)).ntotal)
        except Exception:  # unreadable: it proves nothing either way
            return None
        return meta

    @staticmethod
    def discard(path: Path) -> None:
        """Delete a saved index (an erased face's vector must not stay on disk when no new
        file could be written)."""
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)

    def load(self, path: Path) -> dict[str, Any] | None:
        """Load a saved index when its file is intact (sha256 as recorded) and was built with
        this factory and dimension; returns the state it was saved with, or None (the caller
        rebuilds)."""
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("factory") != self.factory or meta.get("dim") != self.dim:
                log.warning(
                    "index at %s was built as %s; rebuilding as %s", path, meta, self.factory
                )
                return None
            if meta.get("sha256") != _sha256(path):
                log.warning("index at %s does not match its recorded sha256: rebuilding", path)
                return None
            index = faiss.read_index(str(path))
        except Exception as exc:  # a corrupt file raises RuntimeError or ValueError in FAISS
            log.warning(
                "index at %s is unreadable (%s); it will be rebuilt from the store", path, exc
            )
            return None
        # read_index returns the concrete class; a downcast wrapper would not own the object.
        ivf = _ivf_of(index)
        native = ivf is not None and ivf.direct_map.type == _HASHTABLE
        if not (native or isinstance(index, faiss.IndexIDMap2)) or index.d != self.dim:
            log.warning(
                "index at %s has an id layout this release does not write: rebuilding", path
            )
            return None
        self._index = index
        self._masked = set()
        self.active_factory = str(meta.get("active_factory", self.factory))
        if self.search_params and self.active_factory == self.factory:
            faiss.ParameterSpace().set_index_parameters(self._inner(), self.search_params)  # type: ignore[arg-type]
        self._drop_device()
        return dict(meta)
