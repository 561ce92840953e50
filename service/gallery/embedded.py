"""The embedded backend: SQLite (the source of truth) and a FAISS index in this process.

Its own lock makes each write (store, then index) atomic for searches and saves. Slow index work
never runs under it: training an IVF/PQ factory, rebuilding after a failed write or a corrupt
file, happen in a builder thread beside the live index, which keeps serving; writes made
meanwhile are journalled and replayed onto the new index before it is swapped in.

What makes the index trustworthy:
- A write the index failed is not lost: the store has it, the index is marked stale (never
  saved as current) and rebuilt at once in the background.
- The saved file records its own sha256 and the store state it reflects (generation, content
  digest); at start-up it is used only when all of them, and its ids, match the store.
- At start-up every stored embedding is checked (checksum, unit norm); a face that fails is
  quarantined and never indexed.
- A full disk: writes answer 507 (``InsufficientStorage``), deletes release a reserve file to
  complete, and the service starts anyway (an index it cannot save is rebuilt next time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from service.errors import GalleryCorrupted, InsufficientStorage
from service.gallery.composite import StoreWithIndex
from service.gallery.gallery import Gallery
from service.gallery.headroom import RESERVE_FILE, DiskReserve
from service.gallery.index import INDEX_FILE, VectorIndex
from service.gallery.owner import FolderLock
from service.gallery.records import IndexCheck
from service.gallery.sqlite import STORE_FILE, SqliteStore
from service.gallery.staging import ModelPin
from service.images import ImageVault

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_RESERVE_BYTES = 8 * 1024 * 1024

_Op = tuple[str, np.ndarray, np.ndarray | None]  # ("add" | "remove", ids, vectors)


class EmbeddedBackend(StoreWithIndex):
    """SQLite + FAISS in ``directory`` (see the module docstring)."""

    store: SqliteStore

    def __init__(
        self,
        directory: Path,
        *,
        model_id: str,
        embedding_dim: int,
        index_factory: str = "Flat",
        search_params: str = "",
        use_gpu: bool = False,
        exact_below: int = 0,
        verify_on_start: bool = True,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        model_sha256: str = "",
        threads: tuple[int, int] = (1, 0),
    ) -> None:
        self._hold = FolderLock(directory, exclusive=False)  # a restore waits for us to stop
        self.directory = directory
        self._reserve = DiskReserve(directory / RESERVE_FILE, reserve_bytes)
        self._lock = threading.RLock()
        self._factory = (index_factory, search_params, use_gpu, exact_below)
        self._threads = threads  # FAISS threads: (a request's search, a build)
        self.index = self._new_index(embedding_dim)
        self._index_path = directory / INDEX_FILE
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
        self.erasure_pending = threading.Event()
        try:
            self._refuse_lost_store(opened=False)
            super().__init__(self._open_store(directory, model_id, embedding_dim))
        except BaseException:
            self._hold.release()
            raise
        try:
            self._refuse_lost_store(opened=True)
            if self.store.embedding_dim != embedding_dim:  # pinned to another model's size
                self.index = self._new_index(self.store.embedding_dim)
            self.store.record_weights(model_id, model_sha256)
            if verify_on_start:
                self.store.verify_all()
            self._load_or_rebuild()
        except BaseException:
            self.store.close()
            self._hold.release()
            raise

    def _new_index(self, embedding_dim: int) -> VectorIndex:
        factory, params, use_gpu, exact_below = self._factory
        return VectorIndex(
            embedding_dim,
            factory,
            search_params=params,
            use_gpu=use_gpu,
            exact_below=exact_below,
            search_threads=self._threads[0],
            build_threads=self._threads[1],
        )

    def _open_store(self, directory: Path, model_id: str, embedding_dim: int) -> SqliteStore:
        """Open SQLite; on a full disk, give back the reserve first (the service must start)."""
        try:
            return SqliteStore(
                directory / STORE_FILE, model_id=model_id, embedding_dim=embedding_dim
            )
        except InsufficientStorage:
            if not self._reserve.release():
                raise
            return SqliteStore(
                directory / STORE_FILE, model_id=model_id, embedding_dim=embedding_dim
            )

    # ---- start-up

    def _refuse_lost_store(self, *, opened: bool) -> None:
        """Refuse (GalleryCorrupted) a store that is missing, empty, or emptier and older than
        the index saved beside it: the store file was deleted, truncated or replaced, and the
        saved index holds the last copy of every vector; rebuilding it from an empty store
        would overwrite that copy. Called before the store is opened (opening would create a
        missing file) and after (an empty store that SQLite opened as new)."""
        saved = VectorIndex.saved_state(self._index_path)
        if saved is None or int(saved.get("count", 0)) == 0:
            return
        store_file = self.directory / STORE_FILE
        if not opened:
            lost = not store_file.is_file() or store_file.stat().st_size == 0
        else:
            faces = self.store.counts()[1]
            lost = faces == 0 and self.store.generation() < int(saved.get("generation", 0))
        if lost:
            raise GalleryCorrupted(
                f"the gallery store {store_file} is missing or empty, but the index saved beside "
                f"it holds {saved['count']} vectors: the store was deleted, truncated or "
                "replaced. Nothing was changed. Restore the store from a backup (marginface "
                "gallery import), or move index.faiss and index.json aside to start an empty "
                "gallery on purpose."
            )

    def _load_or_rebuild(self) -> None:
        """Use the saved index if it is intact and reflects the store exactly; else rebuild."""
        state = self.index.load(self._index_path)
        if state is not None:
            current = (
                state.get("generation") == self.store.generation()
                and state.get("digest") == self.store.content_digest()
                and np.array_equal(self.index.ids(), self.store.face_ids())
            )
            if current:
                log.info("gallery index loaded (%d vectors)", self.index.ntotal)
                return
            log.warning("the saved index does not reflect the store: rebuilding it")
        ids, vectors, _ = self.store.all_embeddings()
        with self._lock:
            self.index.rebuild(ids, vectors)
            self._dirty = True
        log.info("gallery index rebuilt from the store: %d vectors", len(ids))
        self._save()

    # ---- hooks of StoreWithIndex

    def _guard(self) -> AbstractContextManager[Any]:
        return self._lock

    def _erase(self, delete: Callable[[], T]) -> T:
        try:
            return delete()
        except InsufficientStorage:
            if not self._reserve.release():
                raise
            return delete()

    def _index_add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Lock held. A failed index write leaves the face in the store and the index stale:
        a rebuild is scheduled and a stale index is never saved as current."""
        if self._journal is not None:
            self._journal.append(("add", ids, vectors))
        self._dirty = True
        if self._stale:
            return  # the pending rebuild reads the store
        try:
            self.index.add(ids, vectors)
        except Exception:
            log.exception(
                "the index could not take %d new faces; rebuilding it from the store", len(ids)
            )
            self._mark_stale()
            return
        if self.index.wants_rebuild:
            self._request_build(f"{self.index.ntotal} faces: training {self.index.factory}")

    def _index_remove(self, ids: list[int]) -> None:
        """Lock held."""
        if self._journal is not None:
            self._journal.append(("remove", np.asarray(ids, dtype=np.int64), None))
        self._dirty = True
        self._erased_since_save = True
        self.erasure_pending.set()
        if self._stale:
            return
        try:
            self.index.remove(list(ids))
        except Exception:
            log.exception(
                "the index could not drop %d faces; rebuilding it from the store", len(ids)
            )
            self._mark_stale()

    def _mark_stale(self) -> None:
        self._stale = True
        self._request_build("the index missed a write")

    # ---- background builds

    def _request_build(self, reason: str) -> None:
        """Ask the builder for a fresh index; while one is being built, its journal already
        covers every write, so nothing more is asked."""
        if not self._idle.is_set():
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

    def _build(self) -> None:
        """Build a fresh index from the store beside the live one, replay the writes made
        meanwhile, swap it in, save it. Searches keep using the live index throughout."""
        with self._lock:
            self._journal = []
            epoch = self._epoch
        try:
            reader = self.store.snapshot_reader()
            try:
                ids, vectors, _ = reader.all_embeddings()
            finally:
                reader.close()
            fresh = self._new_index(self.embedding_dim)
            fresh.rebuild(ids, vectors)  # the slow part (training), outside the lock
            fresh.upload()  # the device copy too, when searching on a GPU
            with self._lock:
                if self._epoch != epoch:  # the gallery moved to another model meanwhile
                    return
                journal = self._journal or []
                for op, op_ids, op_vectors in journal:
                    fresh.remove(op_ids.tolist())  # a replayed add is idempotent: remove first
                    if op == "add" and op_vectors is not None:
                        fresh.add(op_ids, op_vectors)
                self.index = fresh
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

    def repair(self) -> None:
        """Rebuild the index from the store in the background."""
        with self._lock:
            self._mark_stale()

    # ---- moving to another model (service.gallery.staging)

    def build_index(self, target: ModelPin, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        """An index of ``target``'s embeddings, built beside the live one (which keeps serving)."""
        fresh = self._new_index(target.embedding_dim)
        fresh.rebuild(ids, vectors)
        fresh.upload()
        return fresh

    def adopt_index(self, index: Any) -> None:
        """Serve ``index`` from now on (the store has just switched models) and save it."""
        with self._lock:
            self.index = index
            self._epoch += 1
            self._stale = False
            self._dirty = True
            self._erased_since_save = True  # the old model's vectors leave index.faiss too
        self._save()

    # ---- search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest faces from the live index (under the lock: writes change it in place)."""
        with self._lock:
            return self.index.search(queries, k)

    def searchable(self) -> int:
        """Vectors in the live index."""
        return self.index.ntotal

    # ---- upkeep

    def _save(self) -> None:
        """Persist the index with the store state it reflects: a copy is taken under the lock
        and written outside it. A failed write (a full disk) is retried later; if a face was
        erased since the last save, the old file is deleted rather than left holding it."""
        with self._lock:
            if self._stale or not self._dirty:
                return
            try:
                self.store.check_file()
            except GalleryCorrupted:
                return  # keep the last good index: it may hold the only copy of the vectors
            if self.index.masked:  # deleted vectors still in memory must not reach the disk
                if self._erased_since_save:
                    VectorIndex.discard(self._index_path)
                    self._erased_since_save = False
                return
            index, frozen = self.index, self.index.copy()
            state = {"generation": self.store.generation(), "digest": self.store.content_digest()}
            erased, self._dirty, self._erased_since_save = self._erased_since_save, False, False
        try:
            index.save(self._index_path, state, frozen=frozen)
        except OSError as exc:
            log.warning("the gallery index could not be saved (%s); retrying later", exc)
            with self._lock:
                self._dirty = True
                self._erased_since_save = self._erased_since_save or erased
            if erased:
                VectorIndex.discard(self._index_path)

    def maintain(self) -> bool:
        """Save the index if it changed, push erased rows out of the WAL, re-upload a device copy
        worn by deletes, hold the erasure reserve again; True when more is due soon."""
        if self._stale and self._idle.is_set():
            self._request_build("the index is stale")
        elif self.index.masked and self._idle.is_set():
            self._request_build(
                f"{self.index.masked} deleted faces to drop from {self.index.factory}"
            )
        if self.index.device_stale:
            with self._lock:
                self.index.upload()
        # cleared before the save: a delete that lands while it runs sets it again, so its
        # vector leaves the file at the next pass, not at the next periodic save
        erased = self.erasure_pending.is_set()
        self.erasure_pending.clear()
        self._save()
        if erased and not self.store.purge_logs():
            self.erasure_pending.set()
        self._reserve.ensure()
        return self.erasure_pending.is_set()

    def wait_for_work(self, timeout_s: float) -> bool:
        """Sleep until an erasure is pending or the timeout passes; True when one is."""
        return self.erasure_pending.wait(timeout_s)

    def check_index(self) -> IndexCheck:
        """The live index against the store's usable faces."""
        with self._lock:
            indexed = self.index.ids()
            stored = self.store.face_ids()
        return IndexCheck(
            faces=len(stored),
            indexed=len(indexed),
            missing=len(np.setdiff1d(stored, indexed)),
            extra=len(np.setdiff1d(indexed, stored)),
        )

    def reconcile(self, batch: int = 2000) -> dict[str, int]:
        """Replay faces the index lacks and drop ids the store no longer has."""
        with self._lock:
            indexed, stored = self.index.ids(), self.store.face_ids()
            missing = np.setdiff1d(stored, indexed).tolist()
            extra = np.setdiff1d(indexed, stored).tolist()
            for start in range(0, len(missing), batch):
                ids, vectors = self.store.embeddings_by_id(missing[start : start + batch])
                if len(ids):
                    self.index.add(ids, vectors)
            if extra:
                self.index.remove(extra)
            if missing or extra:
                self._dirty = True
        self._save()
        return {"replayed": len(missing), "removed": len(extra), "faces": len(stored)}

    def stats(self) -> dict[str, Any]:
        """Sizes and the index in use, for /readyz; GalleryCorrupted (not ready) when the store
        file was lost under the service."""
        self.store.check_file()
        subjects, faces = self.store.counts()
        return {
            "backend": "embedded",
            "subjects": subjects,
            "faces": faces,
            "indexed": self.index.ntotal,
            "quarantined": len(self.store.quarantined()),
            "model_id": self.model_id,
            "index_factory": self.index.describe(),
            "index_on_gpu": self.index.use_gpu,
            "index_building": not self._idle.is_set(),
            "erasure_reserve": self._reserve.held,
        }

    def close(self) -> None:
        """Stop the builder, save the index, close the store."""
        self._closed = True
        self._build_requested.set()
        if self._builder is not None:
            self._builder.join(timeout=60)
        try:
            self.maintain()
        finally:
            self.store.close()
            self._hold.release()


def embedded_gallery(
    directory: Path,
    *,
    model_id: str,
    embedding_dim: int,
    index_factory: str = "Flat",
    search_params: str = "",
    use_gpu: bool = False,
    exact_below: int = 0,
    images: ImageVault | None = None,
    model_sha256: str = "",
) -> Gallery:
    """A single-process gallery (SQLite and a FAISS index file in ``directory``) without
    settings: for tools, benchmarks and tests. The service opens its gallery through
    ``service.gallery.backends.open_gallery``."""
    backend = EmbeddedBackend(
        directory,
        model_id=model_id,
        embedding_dim=embedding_dim,
        index_factory=index_factory,
        search_params=search_params,
        use_gpu=use_gpu,
        exact_below=exact_below,
        model_sha256=model_sha256,
    )
    return Gallery(backend, images=images)
