"""Which gallery a deployment runs: a registry of backends (register / open / list, loud errors)
keyed by ``gallery.backend``, and the one function that opens the configured gallery.

Embedded: SQLite + FAISS in one folder, one process. Distributed: PostgreSQL (the source of
truth) + Milvus (the vectors), shared by every API replica; its clients are imported only when
it is chosen. Each is a ``Store`` and a ``KeptIndex`` under one ``Gallery``; a third backend is
a module with an opener of that pair and one ``register_backend`` line below.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from service.errors import ConfigError, UnsupportedByBackend
from service.gallery.gallery import Gallery, WriteObserver
from service.images import ImageVault
from service.settings import GallerySettings

if TYPE_CHECKING:
    from service.gallery.postgres import PostgresJobBoard
    from service.gallery.sql import SqlStore
    from service.gallery.staging import ModelStaging


class Opener(Protocol):
    """Opens a backend's gallery with its start-up checks done and its upkeep running."""

    def __call__(
        self,
        settings: GallerySettings,
        *,
        model_id: str,
        embedding_dim: int,
        check_index: bool,
        model_sha256: str,
        images: ImageVault | None,
        on_write: WriteObserver | None,
    ) -> Gallery: ...


_BACKENDS: dict[str, Opener] = {}


def register_backend(name: str, opener: Opener) -> None:
    """Make a backend available as ``gallery.backend=<name>``; a second opener under one name is
    a programming error."""
    if name in _BACKENDS:
        raise ValueError(f"gallery backend {name!r} is already registered")
    _BACKENDS[name] = opener


def list_backends() -> list[str]:
    """The registered backend names."""
    return sorted(_BACKENDS)


def open_gallery(
    settings: GallerySettings,
    *,
    model_id: str,
    embedding_dim: int,
    backend: str | None = None,
    check_index: bool = True,
    images: ImageVault | None = None,
    on_write: WriteObserver | None = None,
    model_sha256: str = "",
) -> Gallery:
    """Open (or create) the configured gallery (or ``backend``'s), the one write path, its
    upkeep running every ``flush_interval_s`` and at once after an erasure until it is closed.
    ``model_sha256``, the full sha256 of the model's weights, is recorded with every face it
    stores. ``check_index=False`` skips the start-up check of a shared index (the reconcile
    command reports it itself). ConfigError for a backend that is not registered."""
    name = backend or settings.backend
    opener = _BACKENDS.get(name)
    if opener is None:
        raise ConfigError(f"unknown gallery backend {name!r}; choose one of {list_backends()}")
    return opener(
        settings,
        model_id=model_id,
        embedding_dim=embedding_dim,
        check_index=check_index,
        model_sha256=model_sha256,
        images=images,
        on_write=on_write,
    )


def _open_embedded(
    settings: GallerySettings,
    *,
    model_id: str,
    embedding_dim: int,
    check_index: bool,
    model_sha256: str,
    images: ImageVault | None,
    on_write: WriteObserver | None,
) -> Gallery:
    from service.gallery.embedded import embedded_gallery

    return embedded_gallery(
        settings.path,
        model_id=model_id,
        embedding_dim=embedding_dim,
        index_factory=settings.index_factory,
        search_params=settings.search_params,
        use_gpu=settings.use_gpu,
        exact_below=settings.exact_below,
        verify_on_start=settings.verify_on_start,
        reserve_bytes=settings.erasure_reserve_bytes,
        model_sha256=model_sha256,
        threads=(settings.search_threads, settings.build_threads),
        images=images,
        on_write=on_write,
        upkeep_interval_s=settings.flush_interval_s,
    )


def _open_distributed(
    settings: GallerySettings,
    *,
    model_id: str,
    embedding_dim: int,
    check_index: bool,
    model_sha256: str,
    images: ImageVault | None,
    on_write: WriteObserver | None,
) -> Gallery:
    from service.gallery.distributed import distributed_gallery

    return distributed_gallery(
        settings,
        postgres_dsn(settings),
        model_id=model_id,
        embedding_dim=embedding_dim,
        check_index=check_index,
        model_sha256=model_sha256,
        images=images,
        on_write=on_write,
    )


register_backend("embedded", _open_embedded)
register_backend("distributed", _open_distributed)


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


def job_board(settings: GallerySettings) -> PostgresJobBoard | None:
    """Where replicas share batch job records: PostgreSQL for the distributed backend; none for
    the embedded one (one process)."""
    if settings.backend != "distributed":
        return None
    from service.gallery.postgres import PostgresJobBoard

    return PostgresJobBoard(postgres_dsn(settings))


def open_staging(
    settings: GallerySettings, *, model_id: str, embedding_dim: int, model_sha256: str = ""
) -> ModelStaging:
    """The gallery's store alone, for a model migration's re-embedding beside a running
    service (its index is left to the service); ``model_id`` pins only a new, empty gallery."""
    from service.gallery.staging import ModelStaging

    if settings.backend == "embedded":
        from service.gallery.sqlite import STORE_FILE, SqliteStore

        path = settings.path / STORE_FILE
        if not path.is_file():
            raise ConfigError(f"there is no gallery at {settings.path} to migrate")
        store: SqlStore = SqliteStore(path, model_id=model_id, embedding_dim=embedding_dim)
    elif settings.backend == "distributed":
        from service.gallery.postgres import PostgresStore

        store = PostgresStore(
            postgres_dsn(settings), model_id=model_id, embedding_dim=embedding_dim
        )
    else:
        raise ConfigError(f"gallery backend {settings.backend!r} cannot migrate models")
    store.record_weights(model_id, model_sha256)
    return ModelStaging(store)


def refuse_if_held(settings: GallerySettings) -> None:
    """GalleryBusy while a service (or a tool) has the embedded gallery open: what switches
    its model must have it alone. The distributed backend has no such hold: stop the replicas
    first (docs/scaling.md)."""
    if settings.backend == "embedded":
        from service.gallery.owner import FolderLock

        FolderLock(settings.path, exclusive=True).release()
