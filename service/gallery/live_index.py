"""The embedded gallery's FAISS index as it is kept: live in this process, saved beside the
SQLite store, rebuilt from it off the request path.

Its lock (``guard``) makes each write (store, then index) atomic for searches and saves. Slow
index work never runs under it: training an IVF/PQ factory, rebuilding after a failed write or
a corrupt file, happen in a builder thread beside the live index, which keeps serving; writes
made meanwhile are journalled and replayed onto the new index before it is swapped in.

What makes the index trustworthy:
- A write the index failed is not lost: the store has it, the index is marked stale (never
  saved as current) and rebuilt at once in the background.
- The saved file records its own sha256 and the store state it reflects (generation, content
  digest); at start-up it is used only when all of them, and its ids, match the store.
- Deleted vectors never stay on disk: an index that only masks them is not saved, and a failed
  save after an erasure deletes the old file.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import GalleryCorrupted
from service.gallery.index import FaissIndex
from service.gallery.sqlite import SqliteStore
from service.gallery.staging import ModelPin

log = logging.getLogger(__name__)

_Op = tuple[str, np.ndarray, np.ndarray | None]  # ("add" | "remove", ids, vectors)


class LiveFaissIndex:
    """A ``KeptIndex``: the live ``FaissIndex`` of ``store``, persisted at ``path``."""

    def __init__(
        self,
        store: SqliteStore,
        path: Path,
        *,
        index_factory: str = "Flat",
        search_params: str = "",
        use_gpu: bool = False,
        exact_below: int = 0,
        threads: tuple[int, int] = (1, 0),
    ) -> None:
        self._store = store
        self._path = path
        self._lock = threading.RLock()
        self._factory = (index_factory, search_params, use_gpu, exact_below)
        self._threads = threads  # FAISS threads: (a request's search, a build)
        self.faiss = self._new_index()  # the live index (tests look inside it)
        self._stale = False  # the index missed a write or cannot be trusted: rebuild, never save
        self._dirty = False  # changed since the last save
        self._erased_since_save = False
        self._journal: list[_Op] | None = None  # writes made while a build runs
        self._closed = False
        self._epoch = 0  # bumped when another model's index is adopted: older builds are void
        self._build_requested = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._builder: threading.Thread | None = None
        self._load_or_rebuild()

    def _new_index(self, dim: int | None = None) -> FaissIndex:
        factory, params, use_gpu, exact_below = self._factory
        return FaissIndex(
            dim or self._store.embedding_dim,
            factory,
            search_params=params,
            use_gpu=use_gpu,
            exact_below=exact_below,
            search_threads=self._threads[0],
            build_threads=self._threads[1],
        )

    def _load_or_rebuild(self) -> None:
        """Use the saved index if it is intact and reflects the store exactly; else rebuild."""
        state = self.faiss.load(self._path)
        if state is not None:
            current = (
                state.get("generation") == self._store.generation()
                and state.get("digest") == self._store.content_digest()
                and np.array_equal(self.faiss.ids(), self._store.face_ids())
            )
            if current:
                log.info("gallery index loaded (%d vectors)", self.faiss.ntotal)
                return
            log.warning("the saved index does not reflect the store: rebuilding it")
        ids, vectors, _ = self._store.all_embeddings()
        with self._lock:
            self.faiss.rebuild(ids, vectors)
            self._dirty = True
        log.info("gallery index rebuilt from the store: %d vectors", len(ids))
        self._save()

    # ---- the VectorIndex contract

    @property
    def ntotal(self) -> int:
        """Vectors in the live index."""
        return self.faiss.ntotal

    def guard(self) -> AbstractContextManager[Any]:
        """The lock held around a store write and its index write."""
        return self._lock

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add to the live index (and the journal of a build in progress). A failed add
        marks the index stale (a rebuild from the store is scheduled) before it raises."""
        with self._lock:
            if self._journal is not None:
                self._journal.append(("add", ids, vectors))
            self._dirty = True
            if self._stale:
                return  # the pending rebuild reads the store
            try:
                self.faiss.add(ids, vectors)
            except Exception:
                self._mark_stale()
                raise
            if self.faiss.wants_rebuild:
                self._request_build(f"{self.faiss.ntotal} faces: training {self.faiss.factory}")

    def remove(self, ids: list[int]) -> None:
        """Drop from the live index; the saved file loses them at the next save."""
        with self._lock:
            if self._journal is not None:
                self._journal.append(("remove", np.asarray(ids, dtype=np.int64), None))
            self._dirty = True
            self._erased_since_save = True
            if self._stale:
                return
            try:
                self.faiss.remove(list(ids))
            except Exception:
                self._mark_stale()
                raise

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest faces from the live index (under the lock: writes change it in place)."""
        with self._lock:
            return self.faiss.search(queries, k)

    def ids(self) -> np.ndarray:
        """Face ids in the live index."""
        with self._lock:
            return self.faiss.ids()

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the live index."""
        with self._lock:
            return self.faiss.vectors()

    def describe(self) -> str:
        """The factory in use."""
        return self.faiss.describe()

    def details(self) -> dict[str, Any]:
        """For /readyz."""
        return {
            "backend": "embedded",
            "index_factory": self.faiss.describe(),
            "index_on_gpu": self.faiss.use_gpu,
            "index_building": not self._idle.is_set(),
        }

    # ---- builds beside the live index

    def repair(self) -> None:
        """Rebuild the index from the store in the background."""
        with self._lock:
            self._mark_stale()

    def _mark_stale(self) -> None:
        self._stale = True
        self._request_build("the index missed a write")

    # ---- moving to another model (service.gallery.staging)

    def build_for(self, target: ModelPin, ids: np.ndarray, vectors: np.ndarray) -> FaissIndex:
        """An index of ``target``'s embeddings, built beside the live one (which keeps serving)."""
        fresh = self._new_index(target.embedding_dim)
        fresh.rebuild(ids, vectors)
        fresh.upload()
        return fresh

    def adopt(self, index: Any) -> None:
        """Serve ``index`` from now on (the store has just switched models) and save it; a
        build of the old model's index still running is void."""
        with self._lock:
            self.faiss = index
            self._epoch += 1
            self._stale = False
            self._dirty = True
            self._erased_since_save = True  # the old model's vectors leave index.faiss too
        self._save()

    def _request_build(self, reason: str) -> None:
        """Ask the builder for a fresh index; while one is being built, its journal already
        covers every write, so nothing more is asked."""
        if not self._idle.is_set() or self._closed:
            return
        log.info("index build requested: %s", reason)
        self._idle.clear()
        self._build_requested.set()
        if self._builder is None or not self._builder.is_alive():
            self._builder = threading.Thread(
                target=self._build_loop, name="index-builder", daemon=True
            )
            self._builder.start()

    def _build_loop(self) -> None:
        while not self._closed:
            if not self._build_requested.wait(timeout=1.0):
                continue
            if self._closed:
                break
            self._build_requested.clear()
            try:
                self._build()
            except Exception:
                log.exception("index build failed; retrying at the next maintenance pass")
                with self._lock:
                    self._stale = True
            finally:
                if not self._build_requested.is_set():
                    self._idle.set()
        self._idle.set()

    def _build(self) -> None:
        """Build a fresh index from the store beside the live one, replay the writes made
        meanwhile, swap it in, save it. Searches keep using the live index throughout."""
        with self._lock:
            self._journal = []
            epoch = self._epoch
        try:
            reader = self._store.snapshot_reader()
            try:
                ids, vectors, _ = reader.all_embeddings()
            finally:
                reader.close()
            fresh = self._new_index()
            fresh.rebuild(ids, vectors)  # the slow part (training), outside the lock
            fresh.upload()  # the device copy too, when searching on a GPU
            with self._lock:
                if self._epoch != epoch:  # the gallery moved to another model meanwhile
                    return
                for op, op_ids, op_vectors in self._journal or []:
                    fresh.remove(op_ids.tolist())  # a replayed add is idempotent: remove first
                    if op == "add" and op_vectors is not None:
                        fresh.add(op_ids, op_vectors)
                self.faiss = fresh
                self._stale = False
                self._dirty = True
                log.info("gallery index built: %s, %d vectors", fresh.describe(), fresh.ntotal)
        finally:
            with self._lock:
                self._journal = None
        self._save()

    def wait_until_indexed(self, timeout_s: float) -> bool:
        """Block until no build is pending."""
        return self._idle.wait(timeout_s)

    # ---- the file beside the store

    def _save(self) -> None:
        """Persist the index with the store state it reflects: a copy is taken under the lock
        and written outside it. A failed write (a full disk) is retried later; if a face was
        erased since the last save, the old file is deleted rather than left holding it."""
        with self._lock:
            if self._stale or not self._dirty:
                return
            try:
                self._store.check_file()
            except GalleryCorrupted:
                return  # keep the last good index: it may hold the only copy of the vectors
            if self.faiss.masked:  # deleted vectors still in memory must not reach the disk
                if self._erased_since_save:
                    FaissIndex.discard(self._path)
                    self._erased_since_save = False
                return
            index, frozen = self.faiss, self.faiss.copy()
            state = {
                "generation": self._store.generation(),
                "digest": self._store.content_digest(),
            }
            erased, self._dirty, self._erased_since_save = self._erased_since_save, False, False
        try:
            index.save(self._path, state, frozen=frozen)
        except OSError as exc:
            log.warning("the gallery index could not be saved (%s); retrying later", exc)
            with self._lock:
                self._dirty = True
                self._erased_since_save = self._erased_since_save or erased
            if erased:
                FaissIndex.discard(self._path)

    def maintain(self) -> None:
        """Start a build the index needs (stale, or deleted vectors only masked), re-upload a
        device copy worn by deletes, save the index if it changed."""
        if self._stale and self._idle.is_set():
            self._request_build("the index is stale")
        elif self.faiss.masked and self._idle.is_set():
            self._request_build(
                f"{self.faiss.masked} deleted faces to drop from {self.faiss.factory}"
            )
        if self.faiss.device_stale:
            with self._lock:
                self.faiss.upload()
        self._save()

    def close(self) -> None:
        """Stop the builder (a build in flight finishes and saves), save what changed."""
        self._closed = True
        self._build_requested.set()
        if self._builder is not None:
            self._builder.join(timeout=60)
        self._save()
