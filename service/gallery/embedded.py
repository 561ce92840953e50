"""The embedded gallery: SQLite (the source of truth) and a FAISS index file in one folder, one
process. What only it needs is opened here: the folder's owner lock (a restore waits for the
service to stop), the erasure reserve (``headroom``), the refusal of a lost store, and the
FAISS index kept live beside the store (``live_index``).

A full disk: writes answer 507 (``InsufficientStorage``), deletes release the reserve to
complete, and the service starts anyway (an index it cannot save is rebuilt next time).
"""

from __future__ import annotations

from pathlib import Path

from service.errors import GalleryCorrupted, InsufficientStorage
from service.gallery.gallery import Gallery, WriteObserver
from service.gallery.headroom import RESERVE_FILE, DiskReserve
from service.gallery.index import INDEX_FILE, FaissIndex
from service.gallery.live_index import LiveFaissIndex
from service.gallery.owner import FolderLock
from service.gallery.sqlite import STORE_FILE, SqliteStore
from service.images import ImageVault

DEFAULT_RESERVE_BYTES = 8 * 1024 * 1024


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
    upkeep_interval_s: float | None = None,
    verify_on_start: bool = True,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    threads: tuple[int, int] = (1, 0),
    on_write: WriteObserver | None = None,
) -> Gallery:
    """Open (or create) the gallery in ``directory``. The service opens it through
    ``service.gallery.backends.open_gallery``, which always runs its upkeep thread; tools and
    tests call ``flush`` themselves unless they pass ``upkeep_interval_s``. ``threads``: FAISS
    threads of (a request's search, a build)."""
    hold = FolderLock(directory, exclusive=False)  # a restore waits for us to stop
    try:
        reserve = DiskReserve(directory / RESERVE_FILE, reserve_bytes)
        refuse_lost_store(directory, None)
        store = _open_store(directory, model_id, embedding_dim, reserve)
    except BaseException:
        hold.release()
        raise
    try:
        refuse_lost_store(directory, store)
        store.record_weights(model_id, model_sha256)
        if verify_on_start:
            store.verify_all()  # before the index is built: a quarantined face is not indexed
        index = LiveFaissIndex(
            store,
            directory / INDEX_FILE,
            index_factory=index_factory,
            search_params=search_params,
            use_gpu=use_gpu,
            exact_below=exact_below,
            threads=threads,
        )
    except BaseException:
        store.close()
        hold.release()
        raise
    try:
        return Gallery(
            store,
            index,
            images=images,
            on_write=on_write,
            upkeep_interval_s=upkeep_interval_s,
            reserve=reserve,
            on_close=hold.release,
        )
    except BaseException:
        index.close()
        store.close()
        hold.release()
        raise


def _open_store(
    directory: Path, model_id: str, embedding_dim: int, reserve: DiskReserve
) -> SqliteStore:
    """Open SQLite; on a full disk, give back the reserve first (the service must start)."""
    try:
        return SqliteStore(directory / STORE_FILE, model_id=model_id, embedding_dim=embedding_dim)
    except InsufficientStorage:
        if not reserve.release():
            raise
        return SqliteStore(directory / STORE_FILE, model_id=model_id, embedding_dim=embedding_dim)


def refuse_lost_store(directory: Path, store: SqliteStore | None) -> None:
    """Refuse (GalleryCorrupted) a store that is missing, empty, or emptier and older than the
    index saved beside it: the store file was deleted, truncated or replaced, and the saved
    index holds the last copy of every vector; rebuilding it from an empty store would
    overwrite that copy. Called before the store is opened (``store`` None: opening would
    create a missing file) and after (an empty store that SQLite opened as new)."""
    saved = FaissIndex.saved_state(directory / INDEX_FILE)
    if saved is None or int(saved.get("count", 0)) == 0:
        return
    store_file = directory / STORE_FILE
    if store is None:
        lost = not store_file.is_file() or store_file.stat().st_size == 0
    else:
        faces = store.counts()[1]
        lost = faces == 0 and store.generation() < int(saved.get("generation", 0))
    if lost:
        raise GalleryCorrupted(
            f"the gallery store {store_file} is missing or empty, but the index saved beside "
            f"it holds {saved['count']} vectors: the store was deleted, truncated or "
            "replaced. Nothing was changed. Restore the store from a backup (marginface "
            "gallery import), or move index.faiss and index.json aside to start an empty "
            "gallery on purpose."
        )
