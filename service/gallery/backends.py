"""Which gallery a deployment runs: the backend chosen in settings, opened for one model.

Embedded: SQLite + FAISS in one folder, one process. Distributed: PostgreSQL (the source of
truth) + Milvus (the vectors), shared by every API replica. The database and vector engine
clients are imported only when the distributed backend is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import ConfigError, UnsupportedByBackend
from service.gallery.gallery import Gallery
from service.settings import GallerySettings

if TYPE_CHECKING:
    from service.gallery.milvus import MilvusIndex
    from service.gallery.postgres import PostgresJobBoard, PostgresStore


def embedded_folder(settings: GallerySettings) -> Path:
    """The embedded gallery's folder, for file-level backups; the distributed backend's
    source of truth is PostgreSQL, backed up with PostgreSQL's own tools."""
    if settings.backend != "embedded":
        raise UnsupportedByBackend(
            "the distributed gallery lives in PostgreSQL: back it up with pg_dump (and rebuild "
            "Milvus with `marginface gallery reconcile`), or copy it into an embedded gallery "
            "with `marginface gallery migrate --to embedded` (docs/scaling.md)"
        )
    return settings.path


def postgres_dsn(settings: GallerySettings) -> str:
    """The configured PostgreSQL connection string; ConfigError when the backend needs one."""
    if settings.postgres_dsn is None or not settings.postgres_dsn.get_secret_value():
        raise ConfigError(
            "gallery.backend=distributed needs gallery.postgres_dsn "
            "(MARGINFACE_GALLERY__POSTGRES_DSN=postgresql://user:password@host/db)"
        )
    return settings.postgres_dsn.get_secret_value()


def open_distributed_parts(
    settings: GallerySettings, *, model_id: str, embedding_dim: int
) -> tuple[PostgresStore, MilvusIndex]:
    """The PostgreSQL store and the Milvus collection of the store's pinned model."""
    from service.gallery.milvus import MilvusIndex
    from service.gallery.postgres import PostgresStore

    store = PostgresStore(postgres_dsn(settings), model_id=model_id, embedding_dim=embedding_dim)
    try:
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
    return store, index


def open_gallery(
    settings: GallerySettings,
    *,
    model_id: str,
    embedding_dim: int,
    backend: str | None = None,
    check_shared_index: bool = True,
) -> Gallery:
    """Open (or create) the configured gallery (or ``backend``, to migrate between them).
    ``check_shared_index=False`` skips the start-up reconcile of a Milvus index (the reconcile
    command does it itself, and reports what it did)."""
    if (backend or settings.backend) == "embedded":
        return Gallery.embedded(
            settings.path,
            model_id=model_id,
            embedding_dim=embedding_dim,
            index_factory=settings.index_factory,
            search_params=settings.search_params,
            use_gpu=settings.use_gpu,
        )
    store, index = open_distributed_parts(settings, model_id=model_id, embedding_dim=embedding_dim)
    return Gallery(store, index, check_shared_index=check_shared_index)


def job_board(settings: GallerySettings) -> PostgresJobBoard | None:
    """Where replicas share batch job records: PostgreSQL for the distributed backend; none for
    the embedded one (one process)."""
    if settings.backend != "distributed":
        return None
    from service.gallery.postgres import PostgresJobBoard

    return PostgresJobBoard(postgres_dsn(settings))
