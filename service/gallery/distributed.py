"""The distributed backend: PostgreSQL (the source of truth) and a Milvus collection shared by
every API replica.

Writes go to PostgreSQL first, then Milvus. When Milvus cannot take a write (an outage) the
write stays acknowledged (PostgreSQL holds it) and the next maintenance pass reconciles the
collection with the store; searches are joined with PostgreSQL, so a face it no longer holds is
never returned. No lock is needed: Milvus is strongly consistent on its own, and other replicas
write it anyway. At start-up the collection is reconciled with the store id by id (up to
``FULL_CHECK_FACES`` faces; above that when the counts differ).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from service.errors import BackendUnavailable, GalleryCorrupted
from service.gallery.composite import StoreWithIndex
from service.gallery.milvus import MilvusIndex
from service.gallery.postgres import PostgresStore
from service.gallery.records import IndexCheck
from service.gallery.staging import ModelPin

log = logging.getLogger(__name__)

FULL_CHECK_FACES = 200_000  # up to this size a start-up compares the index id by id


class DistributedBackend(StoreWithIndex):
    """PostgreSQL + Milvus (see the module docstring)."""

    store: PostgresStore

    def __init__(
        self,
        store: PostgresStore,
        index: MilvusIndex,
        *,
        check_index: bool = True,
        verify_on_start: bool = True,
    ) -> None:
        super().__init__(store)
        self.index = index
        self._behind = False  # Milvus missed a write: reconcile at the next maintenance
        self._dirty = False  # written since the last flush of Milvus's segments
        self.erasure_pending = threading.Event()
        try:
            if verify_on_start:
                store.verify_all()
            if check_index:
                self._check_at_start()
        except BaseException:
            index.close()
            store.close()
            raise

    def _check_at_start(self) -> None:
        """Reconcile the collection with the store, unless the store is empty while the
        collection holds vectors: the database was emptied or replaced, and reconciling would
        erase the last copy of every vector (GalleryCorrupted; ``marginface gallery reconcile``
        accepts an empty store on purpose)."""
        faces = len(self.store.face_ids())
        if faces == 0 and self.index.ntotal > 0:
            raise GalleryCorrupted(
                f"PostgreSQL holds no faces but the Milvus collection holds {self.index.ntotal} "
                "vectors: the database was emptied or replaced. Nothing was changed. Restore "
                "the database, or run `marginface gallery reconcile` to empty the collection "
                "on purpose."
            )
        if faces <= FULL_CHECK_FACES or self.index.ntotal != faces:
            self.reconcile()

    # ---- hooks of StoreWithIndex

    def _write(self, what: str, work: Any) -> None:
        try:
            work()
        except BackendUnavailable as exc:
            log.warning(
                "Milvus missed a write (%s: %s); it will be reconciled from PostgreSQL", what, exc
            )
            self._behind = True

    def _index_add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._dirty = True
        self._write("add", lambda: self.index.add(ids, vectors))

    def _index_remove(self, ids: list[int]) -> None:
        self._dirty = True
        self.erasure_pending.set()
        if ids:
            self._write("remove", lambda: self.index.remove(ids))

    # ---- moving to another model (service.gallery.staging)

    def build_index(self, target: ModelPin, ids: np.ndarray, vectors: np.ndarray) -> MilvusIndex:
        """The collection of ``target``'s embeddings (named after the model), filled afresh
        beside the live one."""
        fresh = self.index.sibling(target.model_id, target.embedding_dim)
        if fresh.ntotal:  # left by an earlier attempt: start clean
            fresh.drop()
            fresh.close()
            fresh = self.index.sibling(target.model_id, target.embedding_dim)
        for start in range(0, len(ids), 5000):
            fresh.add(ids[start : start + 5000], vectors[start : start + 5000])
        fresh.flush()
        return fresh

    def adopt_index(self, index: Any) -> None:
        """Search ``index`` from now on; the old model's collection is dropped (a rollback
        rebuilds it from the staged embeddings)."""
        old, self.index = self.index, index
        try:
            old.drop()
        except BackendUnavailable as exc:
            log.warning("the old model's collection %s could not be dropped: %s", old.name, exc)
        old.close()

    # ---- search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest faces from Milvus (BackendUnavailable while it is down)."""
        return self.index.search(queries, k)

    def searchable(self) -> int:
        """Vectors in the collection."""
        return self.index.ntotal

    # ---- upkeep

    def check_index(self) -> IndexCheck:
        """The collection against the store's usable faces."""
        indexed, stored = self.index.ids(), self.store.face_ids()
        return IndexCheck(
            faces=len(stored),
            indexed=len(indexed),
            missing=len(np.setdiff1d(stored, indexed)),
            extra=len(np.setdiff1d(indexed, stored)),
        )

    def reconcile(self, batch: int = 2000) -> dict[str, int]:
        """Replay faces Milvus lacks, drop ids PostgreSQL no longer has (a crash between the
        commit and the Milvus write leaves either). The index is read first: a face another
        replica adds in between then looks missing (a harmless re-upsert), never extra."""
        indexed = self.index.ids()
        stored = self.store.face_ids()
        missing = np.setdiff1d(stored, indexed).tolist()
        extra = np.setdiff1d(indexed, stored).tolist()
        for start in range(0, len(missing), batch):
            ids, vectors = self.store.embeddings_by_id(missing[start : start + batch])
            if len(ids):
                self.index.add(ids, vectors)
        if extra:
            self.index.remove(extra)
        if missing or extra:
            self.index.flush()
            log.info("gallery reconciled: %d replayed, %d removed", len(missing), len(extra))
        return {"replayed": len(missing), "removed": len(extra), "faces": len(stored)}

    def repair(self) -> None:
        """Reconcile at the next maintenance pass (Milvus rebuilds its own segments)."""
        self._behind = True

    def wait_until_indexed(self, timeout_s: float) -> bool:
        """Nothing is built here: Milvus indexes as it goes."""
        return True

    def maintain(self) -> bool:
        """Reconcile when Milvus missed a write, seal written segments, VACUUM after deletes."""
        erased = self.erasure_pending.is_set()
        self.erasure_pending.clear()  # a delete from now on sets it again
        if self._dirty:
            try:
                self.index.flush()
                self._dirty = False
            except BackendUnavailable as exc:
                self._behind = True
                log.warning("Milvus flush failed (%s); retried later", exc)
        if self._behind:
            try:
                self.reconcile()
                self._behind = False
            except BackendUnavailable as exc:
                log.warning("Milvus still unavailable (%s); reconcile retried later", exc)
        if erased and not self.store.purge_logs():
            self.erasure_pending.set()
        return self.erasure_pending.is_set() or self._behind

    def wait_for_work(self, timeout_s: float) -> bool:
        """Sleep until an erasure is pending or the timeout passes; True when one is."""
        return self.erasure_pending.wait(timeout_s) or self._behind

    def stats(self) -> dict[str, Any]:
        """Sizes and the collection in use, for /readyz; ModelMismatch (not ready) once another
        replica moved the gallery to another model."""
        self.store.check_pin()
        subjects, faces = self.store.counts()
        return {
            "backend": "distributed",
            "subjects": subjects,
            "faces": faces,
            "indexed": self.index.ntotal,
            "quarantined": len(self.store.quarantined()),
            "model_id": self.model_id,
            "index_factory": self.index.describe(),
            "index_on_gpu": False,  # GPU index types are chosen on the Milvus side
        }

    def close(self) -> None:
        """Flush written segments and close both connections."""
        try:
            self.maintain()
            self.index.flush()
        except BackendUnavailable as exc:
            log.warning("closing the distributed gallery: %s", exc)
        finally:
            self.index.close()
            self.store.close()
