"""A gallery switching to another model (``gallery migrate-model``, ``model_mover``): the
index of the target is built from its staged embeddings (``staging``) beside the live one and
verified; then, with writes held (and a running service's requests, ``pause``), nothing may be
left to re-embed, the new index catches up with erasures, the store switches in one
transaction and the index adopts the new vectors. ``Gallery.models`` is this module's
``ModelSwitch``, holding the gallery's own store, index, lock and upkeep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from service.gallery.sql import SqlStore
from service.gallery.staging import ModelPin, ModelStaging, purge, staged_vectors, switch
from service.gallery.sync import IndexSync
from service.gallery.vector_index import KeptIndex

#: before the switch, this many staged faces are searched for in the new index ...
VERIFY_SAMPLE = 256
#: ... and at least this share must find themselves first (an approximate index may miss a few)
VERIFY_MIN_SELF_MATCH = 0.95
Pause = AbstractContextManager[Callable[[], None]]


class ModelSwitch:
    """A gallery's model migrations: what is staged, the switch, the purge (``Gallery.models``)."""

    def __init__(
        self,
        store: SqlStore,
        index: KeptIndex,
        lock: AbstractContextManager[Any],
        sync: IndexSync,
        wrote: Callable[..., None],
    ) -> None:
        self._store, self._index, self._lock, self._sync = store, index, lock, sync
        self._wrote = wrote

    def staging(self) -> ModelStaging:
        """What a model migration stages, in this gallery's store."""
        return ModelStaging(self._store, owned=False)

    def switch(
        self,
        target: ModelPin,
        *,
        pause: Pause | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Move the gallery to ``target``, whose embeddings a migration staged (see the module
        docstring); MigrationIncomplete while faces lack one. The old embeddings stay staged
        for a rollback until ``purge``."""
        result = switch_gallery(
            self._store, self._index, self._lock, target, pause=pause, ready=ready
        )
        self._wrote("model_switched", model_id=target.model_id, faces=result["switched"])
        return result

    def purge(self) -> int:
        """Erase every staged embedding (other models' copies: no rollback after this); the
        count. Upkeep then pushes them out of the store's logs."""
        with self._lock:
            erased = purge(self._store)
            self._sync.erased()
        self._wrote("staged_embeddings_purged", embeddings=erased)
        return erased


def _self_matches(index: Any, ids: np.ndarray, vectors: np.ndarray, sample: int) -> float:
    """The share of a sample of indexed vectors whose nearest neighbour is themselves."""
    if len(ids) == 0:
        return 1.0
    pick = np.random.default_rng(0).choice(len(ids), size=min(sample, len(ids)), replace=False)
    _, found = index.search(vectors[pick], 1)
    return float(np.mean(found[:, 0] == ids[pick]))


def switch_gallery(
    store: SqlStore,
    index: KeptIndex,
    lock: AbstractContextManager[Any],
    target: ModelPin,
    *,
    pause: Pause | None = None,
    ready: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Build and verify the index of ``target`` from its staged embeddings while the live one
    keeps serving, then, with writes held, check nothing is left to re-embed, bring the new
    index up to date (faces erased meanwhile leave it), switch the store and adopt the index.
    MigrationIncomplete when faces still lack an embedding of ``target``; NoFaceMigrated when
    none has one (the switch would leave the gallery finding no one).

    ``pause`` (a running service's request gate) is entered after the new index is built and
    yields what to call once the gallery has switched (the service adopts the new recognizer
    there, before any held request runs); ``ready`` is asked inside it (False: Overloaded, the
    caller tries again later, e.g. a batch job started)."""
    from service.errors import MigrationUnverified, NoFaceMigrated, Overloaded

    started = time.monotonic()
    ids, vectors = staged_vectors(store, target)
    faces = ModelStaging(store).progress(target.model_id)["faces"]
    if faces and not len(ids):
        raise NoFaceMigrated(
            f"none of the gallery's {faces} faces could be re-embedded by {target.model_id}, "
            "so none could be compared after a switch: the gallery stays on its current model. "
            "`migrate-model --dry-run` says why (is this run's privacy.keep_images and "
            "images_dir the service's?)"
        )
    fresh = index.build_for(target, ids, vectors)
    matched = _self_matches(fresh, ids, vectors, VERIFY_SAMPLE)
    if matched < VERIFY_MIN_SELF_MATCH:
        raise MigrationUnverified(
            f"the new index of {target.model_id} finds only {matched:.0%} of sampled faces as "
            "their own nearest neighbour (the model cannot tell them apart: trained too "
            "briefly?): the gallery stays on its current model"
        )
    built_s = time.monotonic() - started
    with pause or nullcontext(_nothing) as after_switch:
        if ready is not None and not ready():
            raise Overloaded("a batch job is running: the model switch waits for it")
        held = time.monotonic()
        result, indexed = _switch_now(store, index, lock, target, fresh, ids)
        after_switch()
        held_s = time.monotonic() - held
    return {
        **result,
        "model_id": target.model_id,
        "indexed": indexed,
        "self_match": round(matched, 4),
        "index_build_s": round(built_s, 2),
        "held_s": round(held_s, 3),
        "failed": len(ModelStaging(store).failures(target.model_id)),
    }


def _nothing() -> None:
    return None


def _switch_now(
    store: SqlStore,
    index: KeptIndex,
    lock: AbstractContextManager[Any],
    target: ModelPin,
    fresh: Any,
    ids: np.ndarray,
) -> tuple[dict[str, int], int]:
    """With writes held: nothing left to embed, the index up to date, store switched, index
    adopted; (the store's result, faces indexed)."""
    from service.errors import MigrationIncomplete

    with lock, index.guard():
        left = ModelStaging(store).progress(target.model_id)
        if left["remaining"]:
            raise MigrationIncomplete(
                f"{left['remaining']} faces were enrolled since and have no embedding of "
                f"{target.model_id} yet: run the migration again (it embeds only those)",
                **left,
            )
        now_ids, now_vectors = staged_vectors(store, target)
        gone = np.setdiff1d(ids, now_ids)
        if len(gone):
            fresh.remove(gone.tolist())
        new = np.isin(now_ids, ids, invert=True)
        if new.any():
            fresh.add(now_ids[new], now_vectors[new])
        result = switch(store, target)
        index.adopt(fresh)
    return result, len(now_ids)
