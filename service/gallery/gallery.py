"""The gallery: the durable store plus the FAISS index derived from it, kept in step.

Writes go to the store first (committed, acknowledged), then to the in-memory index, under one
lock, so a search sees the gallery either before or after each write. On start the index is
loaded from disk if it reflects the store's generation, and rebuilt from the store otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import BackendUnavailable, GalleryCorrupted, InvalidRequest
from service.gallery.index import VectorIndex
from service.gallery.protocols import FaceIndex, FaceStore
from service.gallery.records import FaceRecord, NewFace, Subject
from service.gallery.store import SqliteStore

log = logging.getLogger(__name__)

STORE_FILE = "gallery.sqlite3"
INDEX_FILE = "index.faiss"
FULL_CHECK_FACES = 200_000  # up to this size a start-up compares a shared index id by id


@dataclass(frozen=True)
class Candidate:
    """A subject that resembles a probe, with its best-matching face."""

    subject_id: str
    name: str
    face_id: int
    score: float


class Gallery:
    """Subjects and faces, searchable by cosine similarity; thread-safe.

    One store (the source of truth) and one index derived from it, of either backend: SQLite +
    FAISS in this process (``Gallery.embedded``), or PostgreSQL + Milvus shared by several API
    replicas (``service.gallery.backends.open_gallery``).
    """

    def __init__(
        self,
        store: FaceStore,
        index: FaceIndex,
        *,
        index_path: Path | None = None,
        check_shared_index: bool = True,
    ) -> None:
        self.store = store
        self.index = index
        self._lock = threading.RLock()
        self._index_path = index_path
        self._dirty = False
        self._index_behind = False  # a shared index missed a write: reconcile at next flush
        self.erasure_pending = threading.Event()
        try:
            if check_shared_index or not index.shared:
                self._sync_index()
        except BaseException:
            index.close()
            store.close()
            raise

    @classmethod
    def embedded(
        cls,
        directory: Path,
        *,
        model_id: str,
        embedding_dim: int,
        index_factory: str = "Flat",
        search_params: str = "",
        use_gpu: bool = False,
    ) -> Gallery:
        """The single-process gallery: SQLite and a FAISS index file in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        store = SqliteStore(directory / STORE_FILE, model_id=model_id, embedding_dim=embedding_dim)
        index = VectorIndex(
            embedding_dim, index_factory, search_params=search_params, use_gpu=use_gpu
        )
        return cls(store, index, index_path=directory / INDEX_FILE)

    @property
    def model_id(self) -> str:
        """The embedding model this gallery is pinned to."""
        return self.store.model_id

    def _sync_index(self) -> None:
        """Load the persisted index if current; otherwise rebuild it from the store and save it.

        A shared index (Milvus) is never rebuilt at start (other replicas use it): it is
        reconciled with the store, id by id up to FULL_CHECK_FACES faces, and above that when
        the counts differ (`marginface gallery reconcile` always compares ids)."""
        if self.index.shared:
            faces = self.store.counts()[1]
            if faces <= FULL_CHECK_FACES:
                self.reconcile()  # compares the id sets: cheap at this size
            elif self.index.ntotal != faces:
                log.warning(
                    "the index holds %d faces, the store %d: reconciling",
                    self.index.ntotal,
                    faces,
                )
                self.reconcile()
            return
        generation = self.store.generation()
        if self.index.load(self._index_path) and self.index.generation == generation:
            log.info(
                "gallery index loaded (%d vectors, generation %d)", self.index.ntotal, generation
            )
            return
        self.rebuild_index()

    def reconcile(self, batch: int = 2000) -> dict[str, int]:
        """Bring the index in line with the store: replay faces it lacks, drop ids the store no
        longer has (a crash between the store's commit and the index write leaves either)."""
        with self._lock:
            # the index first: a face another replica adds in between then looks missing (a
            # harmless re-upsert), never extra (which would remove a live face's vector)
            indexed = self.index.ids()
            stored = self.store.face_ids()
            missing = np.setdiff1d(stored, indexed).tolist()
            extra = np.setdiff1d(indexed, stored).tolist()
            generation = self.store.generation()
            for start in range(0, len(missing), batch):
                ids, vectors = self.store.embeddings_by_id(missing[start : start + batch])
                if len(ids):
                    self.index.add(ids, vectors, generation)
            if extra:
                self.index.remove(extra, generation)
            if missing or extra:
                self.index.save(self._index_path)
                log.info("gallery reconciled: %d replayed, %d removed", len(missing), len(extra))
            return {"replayed": len(missing), "removed": len(extra), "faces": len(stored)}

    def rebuild_index(self) -> None:
        """Rebuild the index from the store (the source of truth) and persist it."""
        with self._lock:
            ids, vectors, generation = self.store.all_embeddings()
            self.index.rebuild(ids, vectors, generation)
            self.index.save(self._index_path)
            self._dirty = False
            log.info("gallery index rebuilt from the store: %d vectors", len(ids))

    # ---- subjects

    def create_subject(self, subject_id: str, name: str, metadata: dict[str, Any]) -> Subject:
        """Create a subject (no faces yet)."""
        with self._lock:
            self._dirty = True
            return self.store.create_subject(subject_id, name, metadata)

    def get_subject(self, subject_id: str) -> Subject:
        """One subject; raises SubjectNotFound."""
        return self.store.get_subject(subject_id)

    def list_subjects(
        self, offset: int, limit: int, search: str | None = None
    ) -> tuple[list[Subject], int]:
        """A page of subjects and the total."""
        return self.store.list_subjects(offset, limit, search)

    def update_subject(
        self, subject_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Subject:
        """Rename or change metadata."""
        with self._lock:
            self._dirty = True
            return self.store.update_subject(subject_id, name, metadata)

    def delete_subject(self, subject_id: str) -> int:
        """Erase a subject and all its faces from store and index; returns the faces removed."""
        return len(self.erase_subject(subject_id))

    def erase_subject(self, subject_id: str) -> list[int]:
        """Erase a subject and all its faces from store and index; returns their face ids."""
        with self._lock:
            face_ids = self.store.delete_subject(subject_id)
            self._index_write(lambda: self.index.remove(face_ids, self.store.generation()))
            self._dirty = True
            self._erase_on_disk()
            return face_ids

    def _erase_on_disk(self) -> None:
        """After a delete: ask for the erased embeddings to leave the WAL and the saved index
        file soon (the store's rows are already zeroed by secure_delete). The server's flusher
        wakes on this and does it within moments, off the request path; ``close`` does it too."""
        self.erasure_pending.set()

    def wait_for_work(self, timeout_s: float) -> None:
        """Block until an erasure is pending or the timeout passes (the flusher's sleep)."""
        self.erasure_pending.wait(timeout_s)

    # ---- faces

    def add_faces(
        self,
        subject_id: str,
        faces: list[NewFace],
        *,
        model_id: str,
        create_name: str | None = None,
    ) -> list[tuple[int, bool]]:
        """Enroll faces; returns (face id, created) per face (duplicates are not re-added).

        Raises ModelMismatch when the embeddings come from another model than the gallery's.
        """
        self.store.check_model(model_id)
        with self._lock:
            results = self.store.add_faces(subject_id, faces, create_name=create_name)
            new = [
                (fid, f.embedding)
                for (fid, created), f in zip(results, faces, strict=True)
                if created
            ]
            self._index_new(new)
            return results

    def add_many(
        self, items: list[tuple[str, NewFace]], *, model_id: str
    ) -> list[tuple[str, int, bool]]:
        """Batch indexing: one transaction for faces of many subjects (created as needed)."""
        self.store.check_model(model_id)
        if not items:
            return []
        with self._lock:
            results = self.store.add_faces_many(items)
            new = [
                (fid, face.embedding)
                for (_, fid, created), (_, face) in zip(results, items, strict=True)
                if created
            ]
            self._index_new(new)
            return results

    def _index_new(self, new: list[tuple[int, np.ndarray]]) -> None:
        """After a committed store write (lock held): add its new vectors to the index, and
        switch from exact search to the configured factory once there are enough to train it."""
        generation = self.store.generation()
        if not new:
            self.index.generation = generation
            return
        ids = np.array([fid for fid, _ in new], dtype=np.int64)
        vectors = np.stack([v for _, v in new])
        self._index_write(lambda: self.index.add(ids, vectors, generation))
        self._dirty = True
        if self.index.wants_rebuild:
            log.info("gallery has %d faces: training %s", self.index.ntotal, self.index.describe())
            self.rebuild_index()

    def _index_write(self, write: Callable[[], None]) -> None:
        """Apply a committed store write to the index. When a shared index (Milvus) is
        unreachable the write stays acknowledged (the store holds it) and the flusher replays
        it later; searches never return a face the store no longer has (they are joined with
        the store), and a missing one is only missing until the replay."""
        if not self.index.shared:
            write()
            return
        try:
            write()
        except BackendUnavailable as exc:
            log.warning("index write failed (%s); it will be reconciled from the store", exc)
            self._index_behind = True

    def known_images(self) -> set[tuple[str, str]]:
        """(subject id, image sha256) of every enrolled face."""
        return self.store.known_images()

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        """Faces of one subject."""
        return self.store.list_faces(subject_id)

    def delete_face(self, face_id: int) -> str:
        """Erase one face from store and index; returns its subject id."""
        with self._lock:
            subject_id = self.store.delete_face(face_id)
            self._index_write(lambda: self.index.remove([face_id], self.store.generation()))
            self._dirty = True
            self._erase_on_disk()
            return subject_id

    # ---- search

    def search(self, embeddings: np.ndarray, *, top_k: int, model_id: str) -> list[list[Candidate]]:
        """For each probe, the top-k subjects by their best face's cosine similarity."""
        self.store.check_model(model_id)
        if len(embeddings) == 0:
            return []
        # An in-process index is searched under the gallery lock (a write changes it in place);
        # a shared one (Milvus) is consistent on its own, and other replicas write it anyway.
        with contextlib.nullcontext() if self.index.shared else self._lock:
            # Several faces per subject: fetch more than k faces, then keep each subject's best.
            scores, ids = self.index.search(embeddings, top_k * 4 + 8)
            # joined with the store: a face it no longer has is never returned
            owners = self.store.subject_of_faces(sorted({int(i) for i in ids.ravel() if i >= 0}))
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            best: dict[str, Candidate] = {}
            for score, fid in zip(row_scores, row_ids, strict=True):
                if fid < 0 or int(fid) not in owners:
                    continue
                sid, name = owners[int(fid)]
                if sid not in best:
                    best[sid] = Candidate(sid, name, int(fid), float(score))
            ranked = sorted(best.values(), key=lambda c: -c.score)[:top_k]
            results.append(ranked)
        return results

    def subject_embeddings(
        self, subject_id: str, *, model_id: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, embeddings) of one subject; raises SubjectNotFound or ModelMismatch."""
        self.store.check_model(model_id)
        self.store.get_subject(subject_id)
        return self.store.embeddings_of(subject_id)

    def stats(self) -> dict[str, Any]:
        """Sizes for /readyz."""
        subjects, faces = self.store.counts()
        return {
            "subjects": subjects,
            "faces": faces,
            "indexed": self.index.ntotal,
            "model_id": self.model_id,
            "index_factory": self.index.describe(),
            "index_on_gpu": self.index.use_gpu,
        }

    def flush(self) -> None:
        """Persist the index if it changed since the last save (the store is always durable),
        and after deletes, purge the store's logs so no old page with an erased embedding stays
        (outside the gallery lock: a long VACUUM must not hold up enrollments)."""
        with self._lock:
            if self._index_behind:
                self.reconcile()
                self._index_behind = False
            if self._dirty:
                self.index.generation = self.store.generation()
                self.index.save(self._index_path)
                self._dirty = False
        if self.erasure_pending.is_set():
            self.erasure_pending.clear()  # a delete from now on sets it again
            if not self.store.purge_wal():
                self.erasure_pending.set()

    def close(self) -> None:
        """Save the index and close the store."""
        try:
            self.flush()
        finally:
            self.index.close()
            self.store.close()


def _open_readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)


def describe_store(path: Path) -> dict[str, Any]:
    """Check a store file (integrity, model pin) and count it; raises GalleryCorrupted."""
    if not path.is_file():
        raise GalleryCorrupted(f"{path} does not exist")
    try:
        conn = _open_readonly(path)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            subjects = conn.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
            faces = conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise GalleryCorrupted(f"{path} is not a readable MarginFace gallery ({exc})") from exc
    if "model_id" not in meta:
        raise GalleryCorrupted(f"{path} has no model pin: not a MarginFace gallery")
    return {
        "model_id": meta["model_id"],
        "embedding_dim": int(meta.get("embedding_dim", 0)),
        "subjects": int(subjects),
        "faces": int(faces),
    }


def export_store(directory: Path, target: Path) -> dict[str, Any]:
    """A consistent backup of a gallery's store, safe while a server writes to it (SQLite's
    backup API reads one snapshot); the index is not exported: it is rebuilt from the store."""
    source = directory / STORE_FILE
    describe_store(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    _copy_store(source, tmp)
    tmp.replace(target)
    return {"file": str(target), **describe_store(target)}


def _copy_store(source: Path, target: Path) -> None:
    """One consistent snapshot of ``source`` into a fresh file ``target`` (a rollback journal,
    so the copy is a single self-contained file)."""
    target.unlink(missing_ok=True)
    src = _open_readonly(source)
    try:
        dest = sqlite3.connect(str(target))
        try:
            src.backup(dest)
            dest.execute("PRAGMA journal_mode=DELETE")
        finally:
            dest.close()
    finally:
        src.close()


def import_store(source: Path, directory: Path, *, replace: bool = False) -> dict[str, Any]:
    """Restore a backup into a gallery folder (with the service stopped). Refuses to overwrite
    a gallery that holds faces unless ``replace``; the index is rebuilt at the next start."""
    info = describe_store(source)
    directory.mkdir(parents=True, exist_ok=True)
    store = directory / STORE_FILE
    if store.exists() and describe_store(store)["faces"] and not replace:
        raise InvalidRequest(
            f"the gallery at {directory} is not empty; pass --replace to overwrite it"
        )
    tmp = directory / (STORE_FILE + ".import")
    _copy_store(source, tmp)
    for stale in (
        directory / INDEX_FILE,
        (directory / INDEX_FILE).with_suffix(".json"),
        directory / (STORE_FILE + "-wal"),
        directory / (STORE_FILE + "-shm"),
    ):
        stale.unlink(missing_ok=True)
    tmp.replace(store)
    return {"gallery": str(directory), **info}
