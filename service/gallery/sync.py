"""How a gallery's index follows its store, written once for every backend against the two
contracts (``store.Store``, ``vector_index.KeptIndex``).

The store commits first; the index follows. An index write that fails loses nothing (the
store has it): the index repairs what it can itself and is reconciled with the store at the
next upkeep pass. Every erasure marks upkeep as due, so erased rows leave the store's logs
(and erased vectors the index file) within moments, not at the next periodic pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from service.errors import BackendUnavailable
from service.gallery.headroom import DiskReserve
from service.gallery.records import IndexCheck
from service.gallery.store import Store
from service.gallery.upkeep import Upkeep
from service.gallery.vector_index import KeptIndex

log = logging.getLogger(__name__)


class IndexSync:
    """Keeps ``index`` in step with ``store`` (see the module docstring); thread-safe."""

    def __init__(
        self,
        store: Store,
        index: KeptIndex,
        reserve: DiskReserve | None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._index = index
        self._reserve = reserve  # the embedded gallery's disk kept back for erasure
        self._on_close = on_close  # e.g. let go of the gallery folder
        self._erased = threading.Event()  # set by every erasure: upkeep purges the logs
        self._behind = False  # the index missed a write: reconcile at the next upkeep
        self._upkeep_lock = threading.Lock()  # one upkeep pass at a time
        self._thread: Upkeep | None = None

    # ---- following writes

    def add(self, faces: list[tuple[int, np.ndarray]]) -> None:
        """Index committed faces: (face id, embedding) each."""
        if faces:
            ids = np.array([face_id for face_id, _ in faces], dtype=np.int64)
            self._write("add", ids, np.stack([vector for _, vector in faces]))

    def remove(self, face_ids: list[int]) -> None:
        """Erased or quarantined faces leave the index; then upkeep is due (set after the
        write: a pass that starts meanwhile must not clear it before the vectors are gone)."""
        if face_ids:
            with self._index.guard():
                self._write("remove", np.asarray(face_ids, dtype=np.int64), None)
        self._erased.set()

    def erased(self) -> None:
        """A row that never was in the index was erased (a negative): upkeep is due."""
        self._erased.set()

    def _write(self, what: str, ids: np.ndarray, vectors: np.ndarray | None) -> None:
        try:
            if vectors is None:
                self._index.remove(ids.tolist())
            else:
                self._index.add(ids, np.ascontiguousarray(vectors, dtype=np.float32))
        except Exception as exc:
            log.warning(
                "the index missed a write (%s of %d faces: %s); it is repaired from the store",
                what, len(ids), exc,
            )  # fmt: skip
            self.repair()

    def repair(self) -> None:
        """The index missed a write or returned impossible scores: it rebuilds what it can
        itself, and is reconciled with the store at the next upkeep pass."""
        self._behind = True
        self._index.repair()

    # ---- integrity

    def check(self) -> IndexCheck:
        """How the index compares with the store's usable faces right now."""
        with self._index.guard():
            indexed = self._index.ids()
            stored = self._store.face_ids()
        return IndexCheck(
            faces=len(stored),
            indexed=len(indexed),
            missing=len(np.setdiff1d(stored, indexed)),
            extra=len(np.setdiff1d(indexed, stored)),
        )

    def reconcile(self, batch: int = 2000) -> dict[str, int]:
        """Replay faces the index lacks and drop ids the store no longer has (a crash between
        a commit and its index write leaves either). The index is read first: a face another
        replica adds in between then looks missing (a harmless re-add), never extra."""
        with self._index.guard():
            indexed = self._index.ids()
            stored = self._store.face_ids()
            missing = np.setdiff1d(stored, indexed).tolist()
            extra = np.setdiff1d(indexed, stored).tolist()
            for start in range(0, len(missing), batch):
                ids, vectors = self._store.embeddings_by_id(missing[start : start + batch])
                if len(ids):
                    self._index.add(ids, vectors)
            if extra:
                self._index.remove(extra)
        if missing or extra:
            log.info("gallery index reconciled: %d replayed, %d removed", len(missing), len(extra))
            self._index.maintain()  # persist or seal what changed now
        return {"replayed": len(missing), "removed": len(extra), "faces": len(stored)}

    def integrity(self) -> dict[str, Any]:
        """Quarantined faces, how the index compares with the store, other models' faces."""
        check = self.check()
        quarantined = self._store.quarantined()
        return {
            "quarantined": [q.face_id for q in quarantined],
            "quarantine": [
                {"face_id": q.face_id, "subject_id": q.subject_id, "reason": q.reason, "at": q.at}
                for q in quarantined
            ],
            "index": {
                "faces": check.faces,
                "indexed": check.indexed,
                "missing": check.missing,
                "extra": check.extra,
                "consistent": check.consistent,
            },
            "other_models": self._store.other_models(),
        }

    # ---- upkeep

    def wait_for_work(self, timeout_s: float) -> bool:
        """Block until upkeep is due or the timeout passes; True when it is due."""
        return self._erased.wait(timeout_s) or self._behind

    def upkeep(self) -> bool:
        """Reconcile an index that missed a write, the index's own upkeep (save its file, seal
        segments, scheduled builds), erased rows out of the store's logs, the erasure reserve
        back; True when more is due soon."""
        with self._upkeep_lock:
            # cleared before the index is saved: a delete that lands meanwhile sets it again,
            # so its vector leaves the disk at the next pass, not at the next periodic one
            erased = self._erased.is_set()
            self._erased.clear()
            if self._behind:
                self._behind = False
                try:
                    self.reconcile()
                except BackendUnavailable as exc:
                    self._behind = True
                    log.warning("the index is still unavailable (%s); reconciled later", exc)
            try:
                self._index.maintain()
            except BackendUnavailable as exc:
                self._behind = True
                log.warning("index upkeep failed (%s); retried later", exc)
            if erased and not self._store.purge_logs():
                self._erased.set()
            if self._reserve is not None:
                self._reserve.ensure()
            return self._erased.is_set() or self._behind

    def start(self, interval_s: float) -> None:
        """Run ``upkeep`` in a thread until ``close`` (every ``interval_s``, at once when due)."""
        if self._thread is None:
            self._thread = Upkeep(self.upkeep, self.wait_for_work, interval_s)

    def close(self) -> None:
        """Stop the thread, a last upkeep pass, then release the index and the store."""
        if self._thread is not None:
            self._thread.stop()
        try:
            self.upkeep()
        except BackendUnavailable as exc:
            log.warning("closing the gallery: %s", exc)
        finally:
            try:
                self._index.close()
            finally:
                self._store.close()
                if self._on_close is not None:
                    self._on_close()

    def stats(self) -> dict[str, Any]:
        """Sizes and the index in use, for /readyz (GalleryCorrupted, not ready, when the
        store was lost under the service; ModelMismatch once another replica moved the gallery
        to another model)."""
        self._store.check_pin()
        subjects, faces = self._store.counts()
        found = {
            **self._index.details(),
            "subjects": subjects,
            "faces": faces,
            "indexed": self._index.ntotal,
            "quarantined": len(self._store.quarantined()),
            "model_id": self._store.model_id,
        }
        if self._reserve is not None:
            found["erasure_reserve"] = self._reserve.held
        return found
