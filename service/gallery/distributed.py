"""The distributed gallery: PostgreSQL (the source of truth) and a Milvus collection shared by
every API replica, opened here.

Writes go to PostgreSQL first, then Milvus. When Milvus cannot take a write (an outage) the
write stays acknowledged (PostgreSQL holds it) and the next upkeep pass reconciles the
collection with the store; searches are joined with PostgreSQL, so a face it no longer holds is
never returned. No lock is needed: Milvus is strongly consistent on its own, and other replicas
write it anyway. At start-up the collection is reconciled with the store id by id (up to
``FULL_CHECK_FACES`` faces; above that when the counts differ).
"""

from __future__ import annotations

from service.errors import GalleryCorrupted
from service.gallery.gallery import Gallery, WriteObserver
from service.gallery.milvus import MilvusIndex
from service.gallery.postgres import PostgresStore
from service.images import ImageVault
from service.settings import GallerySettings

FULL_CHECK_FACES = 200_000  # up to this size a start-up compares the index id by id


def distributed_gallery(
    settings: GallerySettings,
    dsn: str,
    *,
    model_id: str,
    embedding_dim: int,
    check_index: bool = True,
    model_sha256: str = "",
    images: ImageVault | None = None,
    on_write: WriteObserver | None = None,
) -> Gallery:
    """Open the gallery in PostgreSQL at ``dsn`` and its Milvus collection; ``check_index``
    reconciles the collection at start (GalleryCorrupted for an emptied database)."""
    store = PostgresStore(dsn, model_id=model_id, embedding_dim=embedding_dim)
    try:
        store.record_weights(model_id, model_sha256)
        index = MilvusIndex(
            settings.milvus_uri,
            model_id=store.model_id,
            dim=store.embedding_dim,
            gallery_id=store.gallery_id,
            prefix=settings.milvus_collection,
            token=settings.milvus_token.get_secret_value() if settings.milvus_token else "",
            index_type=settings.milvus_index_type,
            index_params=settings.milvus_index_params,
            search_params=settings.milvus_search_params,
            timeout_s=settings.milvus_timeout_s,
        )
    except BaseException:
        store.close()
        raise
    try:
        gallery = Gallery(store, index, images=images, on_write=on_write)
    except BaseException:
        index.close()
        store.close()
        raise
    try:
        if settings.verify_on_start:
            store.verify_all()  # a face that fails leaves the collection (on_quarantine)
        if check_index:
            _check_at_start(gallery, store, index)
    except BaseException:
        index.close()
        store.close()
        raise
    gallery.start_upkeep(settings.flush_interval_s)
    return gallery


def _check_at_start(gallery: Gallery, store: PostgresStore, index: MilvusIndex) -> None:
    """Reconcile the collection with the store, unless the store is empty while the collection
    holds vectors: the database was emptied or replaced, and reconciling would erase the last
    copy of every vector (GalleryCorrupted; ``marginface gallery reconcile`` accepts an empty
    store on purpose)."""
    faces = len(store.face_ids())
    indexed = index.ntotal
    if faces == 0 and indexed > 0:
        raise GalleryCorrupted(
            f"PostgreSQL holds no faces but the Milvus collection holds {indexed} vectors: the "
            "database was emptied or replaced. Nothing was changed. Restore the database, or "
            "run `marginface gallery reconcile` to empty the collection on purpose."
        )
    if faces <= FULL_CHECK_FACES or indexed != faces:
        gallery.reconcile()
