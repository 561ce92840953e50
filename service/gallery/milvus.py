"""The distributed gallery's index (a ``vector_index.KeptIndex``): a Milvus collection of
(face id, unit embedding), searched by inner product (= cosine), shared by every API replica.

The collection's name carries a hash of the embedding model and of the gallery's id (a random id
PostgreSQL records on first use), so embeddings of another model are never searched, and a new
database never meets an old collection whose face ids would collide with its own; the
collection's description records both. Milvus shards and
replicates it; PostgreSQL stays the source of truth, and ``Gallery.reconcile`` repairs the
collection from it. Searches ask for strong consistency: a face one replica enrolled is found
through every other replica at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, TypeVar

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from service.errors import BackendUnavailable, GalleryCorrupted
from service.gallery.staging import ModelPin

log = logging.getLogger(__name__)

T = TypeVar("T")


class _ClientClockNotice(logging.Filter):
    """milvus-lite gives iterators no MVCC timestamp; pymilvus then uses the client's clock
    (harmless for a full scan) and warns on every scan. Only that notice is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_ClientClockNotice())
_WRITE_BATCH = 1000  # rows per insert: well inside gRPC's message limit for 512-d floats
_MAX_TOPK = 16384  # Milvus's limit on k
_NOT_LOADED = 101  # Milvus's error code for a collection that is not loaded into memory
# pymilvus pings every 10 s, even with no call in flight. A gRPC server with the library's default
# policy (milvus-lite's is one) counts a ping that comes within 5 minutes of the last one, with no
# data between, as a strike and after two answers GOAWAY "too_many_pings": under load every call
# on the connection then fails UNAVAILABLE. So: ping only while a call waits, no more often than
# that policy allows; a dead server is still found by each call's own timeout.
GRPC_OPTIONS: dict[str, int] = {
    "grpc.keepalive_time_ms": 300_000,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
}


def collection_name(prefix: str, model_id: str, gallery_id: str) -> str:
    """The collection of one gallery's embeddings of one model:
    ``<prefix>_<12 hex of sha256(model id | gallery id)>``."""
    key = f"{model_id}|{gallery_id}".encode()
    return f"{prefix}_{hashlib.sha256(key).hexdigest()[:12]}"


class MilvusIndex:
    """A Milvus collection as the gallery's index; it keeps itself (Milvus builds and repairs
    its own segments), so it fills ``KeptIndex`` with no keeper around it."""

    def __init__(
        self,
        uri: str,
        *,
        model_id: str,
        dim: int,
        gallery_id: str,
        prefix: str = "marginface",
        token: str = "",
        index_type: str = "FLAT",
        index_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.dim = dim
        self.model_id = model_id
        self.gallery_id = gallery_id
        self.name = collection_name(prefix, model_id, gallery_id)
        self.index_type = index_type
        self.index_params = dict(index_params or {})
        self.search_params = dict(search_params or {})
        self._timeout = timeout_s
        self._unsealed = False  # written since the last flush of its segments
        self._uri, self._prefix, self._token = uri, prefix, token
        try:
            self._client = MilvusClient(
                uri=uri, token=token, timeout=timeout_s, grpc_options=GRPC_OPTIONS
            )
        except MilvusException as exc:
            raise BackendUnavailable(f"Milvus at {uri} cannot be reached: {exc}") from exc
        self._call(self._ensure_collection)

    def sibling(self, model_id: str, dim: int) -> MilvusIndex:
        """The collection of another model's embeddings of the same gallery (same server and
        settings), created when missing."""
        return MilvusIndex(
            self._uri,
            model_id=model_id,
            dim=dim,
            gallery_id=self.gallery_id,
            prefix=self._prefix,
            token=self._token,
            index_type=self.index_type,
            index_params=self.index_params,
            search_params=self.search_params,
            timeout_s=self._timeout,
        )

    def _call(self, work: Callable[[], T]) -> T:
        """Milvus failures (unreachable, timed out) become 503 backend_unavailable. A
        collection found released (Milvus restarted, or an operator released it) is loaded
        again and the call retried once."""
        try:
            try:
                return work()
            except MilvusException as exc:
                if getattr(exc, "code", None) != _NOT_LOADED:
                    raise
                log.warning("Milvus collection %s was released; loading it again", self.name)
                self._client.load_collection(self.name)
                return work()
        except MilvusException as exc:
            raise BackendUnavailable(
                f"Milvus failed ({exc.__class__.__name__}: {exc}); retry", retry_after_s=1
            ) from exc

    def _ensure_collection(self) -> None:
        """Create the collection (with its index) if missing; check its dimension if present."""
        c = self._client
        if c.has_collection(self.name):
            fields = c.describe_collection(self.name)["fields"]
            vector = next(f for f in fields if f["name"] == "embedding")
            if int(vector["params"]["dim"]) != self.dim:
                raise GalleryCorrupted(
                    f"Milvus collection {self.name} holds {vector['params']['dim']}-d vectors, "
                    f"the gallery's model {self.model_id} makes {self.dim}-d ones"
                )
            c.load_collection(self.name)
            return
        schema = MilvusClient.create_schema(
            auto_id=False,
            enable_dynamic_field=False,
            description=f"MarginFace {self.model_id} gallery {self.gallery_id}",
        )
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self.dim)
        params = c.prepare_index_params()
        params.add_index(
            field_name="embedding",
            index_type=self.index_type,
            metric_type="IP",
            params=self.index_params,
        )
        try:
            c.create_collection(
                self.name, schema=schema, index_params=params, consistency_level="Strong"
            )
        except MilvusException:
            # another replica created it between our check and our create (Milvus says "already
            # exists", milvus-lite may say "File exists"): use it, and check it, if it is there
            if not c.has_collection(self.name):
                raise
            self._ensure_collection()
            return
        log.info("Milvus collection %s created (%s, IP)", self.name, self.index_type)

    @property
    def ntotal(self) -> int:
        """Vectors in the collection (a strongly consistent count)."""
        rows = self._call(
            lambda: self._client.query(
                self.name, filter="", output_fields=["count(*)"], consistency_level="Strong"
            )
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def describe(self) -> str:
        """Where the vectors are, for /readyz."""
        return f"milvus:{self.name} ({self.index_type}, IP)"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert vectors under their face ids (a replay of one already there is harmless)."""
        self._unsealed = True
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        for start in range(0, len(ids), _WRITE_BATCH):
            rows = [
                {"id": int(i), "embedding": v.tolist()}
                for i, v in zip(
                    ids[start : start + _WRITE_BATCH],
                    vectors[start : start + _WRITE_BATCH],
                    strict=True,
                )
            ]
            self._call(partial(self._client.upsert, self.name, rows))

    def remove(self, ids: list[int]) -> None:
        """Delete face ids (absent ones are ignored)."""
        self._unsealed = True
        for start in range(0, len(ids), _WRITE_BATCH):
            chunk = [int(i) for i in ids[start : start + _WRITE_BATCH]]
            self._call(partial(self._client.delete, self.name, ids=chunk))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; missing slots have id -1 and score -inf."""
        k = max(1, min(k, _MAX_TOPK))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(queries)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        if n == 0:
            return scores, ids
        hits = self._call(
            lambda: self._client.search(
                self.name,
                data=queries.tolist(),
                limit=k,
                anns_field="embedding",
                search_params={"metric_type": "IP", "params": self.search_params},
                consistency_level="Strong",
            )
        )
        for row, found in enumerate(hits):
            for col, hit in enumerate(list(found)[:k]):
                ids[row, col] = int(hit["id"])
                scores[row, col] = float(hit["distance"])
        return scores, ids

    def _iterate(self, fields: list[str], batch: int = 4000) -> Iterator[list[dict[str, Any]]]:
        it = self._call(
            lambda: self._client.query_iterator(
                self.name, batch_size=batch, filter="", output_fields=fields
            )
        )
        try:
            while True:
                page = self._call(it.next)
                if not page:
                    return
                yield list(page)
        finally:
            it.close()

    def ids(self) -> np.ndarray:
        """Every face id in the collection, sorted."""
        found = [int(r["id"]) for page in self._iterate(["id"]) for r in page]
        return np.sort(np.array(found, dtype=np.int64))

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector), sorted by id."""
        rows = [r for page in self._iterate(["id", "embedding"]) for r in page]
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        ids = np.array([int(r["id"]) for r in rows], dtype=np.int64)
        vecs = np.array([r["embedding"] for r in rows], dtype=np.float32)
        order = np.argsort(ids)
        return ids[order], vecs[order]

    def flush(self) -> None:
        """Seal written segments (Milvus searches sealed, indexed segments fastest)."""
        self._call(lambda: self._client.flush(self.name))

    # ---- kept by the gallery (``KeptIndex``)

    def guard(self) -> AbstractContextManager[None]:
        """No lock: Milvus is strongly consistent, and other replicas write it anyway."""
        return contextlib.nullcontext()

    def repair(self) -> None:
        """Nothing to rebuild here (Milvus rebuilds its own segments); the gallery reconciles
        the collection with the store at its next upkeep."""

    def maintain(self) -> None:
        """Seal written segments (BackendUnavailable while Milvus is down)."""
        if self._unsealed:
            self.flush()
            self._unsealed = False

    def wait_until_indexed(self, timeout_s: float) -> bool:
        """Nothing is built here: Milvus indexes as it goes."""
        return True

    def details(self) -> dict[str, Any]:
        """For /readyz."""
        return {
            "backend": "distributed",
            "index_factory": self.describe(),
            "index_on_gpu": False,  # GPU index types are chosen on the Milvus side
        }

    # ---- moving to another model (service.gallery.staging)

    def build_for(self, target: ModelPin, ids: np.ndarray, vectors: np.ndarray) -> MilvusIndex:
        """The collection of ``target``'s embeddings (named after the model), filled afresh
        beside this one, which keeps serving."""
        fresh = self.sibling(target.model_id, target.embedding_dim)
        if fresh.ntotal:  # left by an earlier attempt: start clean
            fresh.drop()
            fresh.close()
            fresh = self.sibling(target.model_id, target.embedding_dim)
        for start in range(0, len(ids), 5000):
            fresh.add(ids[start : start + 5000], vectors[start : start + 5000])
        fresh.flush()
        return fresh

    def adopt(self, index: Any) -> None:
        """Search ``index``'s collection from now on; this one (the old model's) is dropped (a
        rollback rebuilds it from the embeddings the store keeps)."""
        assert isinstance(index, MilvusIndex)
        old = self.name
        self.name, self.model_id, self.dim = index.name, index.model_id, index.dim
        index.close()
        try:
            self._call(lambda: self._client.drop_collection(old))
        except BackendUnavailable as exc:
            log.warning("the old model's collection %s could not be dropped: %s", old, exc)

    def drop(self) -> None:
        """Delete the collection (tests, and `gallery migrate --replace`)."""
        self._call(lambda: self._client.drop_collection(self.name))

    def close(self) -> None:
        """Close the client connection."""
        self._client.close()
