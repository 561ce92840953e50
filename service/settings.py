"""Service settings: pydantic-settings with the MARGINFACE_ prefix and ``__`` for nesting.

Examples: ``MARGINFACE_DEVICE=cuda``, ``MARGINFACE_DETECTOR__SCORE_THRESHOLD=0.7``,
``MARGINFACE_AUTH__API_KEYS='["key-1","key-2"]'``. Settings are passed into ``create_app``; nothing
reads the environment behind its back.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigError

ENV_PREFIX = "MARGINFACE_"
#: MARGINFACE_ variables that are not settings, and who reads them
NOT_SETTINGS = {
    "MARGINFACE_PORT": "docker-compose.yml: the host port of the API",
    "MARGINFACE_GPU_PORT": "docker-compose.yml: the host port of the GPU API (profile gpu)",
    "MARGINFACE_DISTRIBUTED_PORT": "docker-compose.yml: the host port of the replicas' proxy",
    "MARGINFACE_REPLICAS": "docker-compose.yml: how many API replicas",
    "MARGINFACE_FUZZ_EXAMPLES": "tests/reliability/test_fuzz.py",
    "MARGINFACE_SLOW_CLIENTS": "tests/reliability/test_slow_clients.py",
    "MARGINFACE_SLOW_SECONDS": "tests/reliability/test_slow_clients.py",
}


class Section(BaseModel):
    """A group of settings; an unknown key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class DetectorSettings(Section):
    """Detection knobs."""

    model: str = "retinaface-mnet025"
    score_threshold: float = Field(0.6, ge=0.0, le=1.0)
    nms_iou: float = Field(0.4, gt=0.0, le=1.0)
    min_face_px: float = Field(12.0, ge=0.0)
    max_side_px: int = Field(960, ge=64, description="longer image side is scaled down to this")
    upscale_below_px: int = Field(
        0, ge=0, description="images whose longer side is below this are enlarged to it (0: off)"
    )
    max_faces: int = Field(64, ge=1, description="faces per image that are kept (largest scores)")
    validity_check: bool = Field(
        True,
        description="refuse detections that are not faces, by the recognizer's validity rule "
        "(its manifest) and a second detector's opinion on doubtful ones",
    )


class EmbedderSettings(Section):
    """Recognition knobs."""

    model: str = "sface-2021dec"
    max_batch: int = Field(64, ge=1, description="largest batch one ONNX Runtime call gets")
    flip_tta: bool = False
    batching: bool | None = Field(
        None,
        description="embed concurrent requests' faces together; None (auto): on when the "
        "recognizer runs on CUDA, off on a CPU, where it measured slower (docs/benchmarks.md)",
    )
    batch_max_size: int = Field(32, ge=1, description="faces per micro-batch")
    batch_max_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits to fill")
    batch_workers: int = Field(
        2, ge=1, description="batches run at once (2 keeps both CPU cores busy; 1 on a GPU)"
    )
    queue_max: int = Field(256, ge=1, description="requests waiting to embed before 503")
    queue_timeout_s: float = Field(30.0, gt=0, description="longest wait for an embedding")


class GallerySettings(Section):
    """Where the gallery lives and how it is indexed."""

    path: Path = Path("var/gallery")
    # the defaults by gallery size (docs/benchmarks.md, 1M realistic faces, 2 cores): exact
    # below 300,000 faces (Flat: 23.6 ms p50 at 1M, linear in the size, so under 10 ms below
    # about 400k); above, 4-bit fast-scan PQ over 4096 lists, nprobe 1024, its 16 x k best
    # candidates re-scored on the exact vectors it keeps: recall@1 0.991 at 2.7 ms p50 at 1M
    # on the fitted generator, one FAISS thread, a loaded machine (IVF4096,Flat: 16 bytes
    # scanned per vector instead of 512)
    index_factory: str = Field(
        "IVF4096,PQ32x4fs,RFlat",
        description="FAISS factory string: Flat (exact), IVF..., HNSW... (used from exact_below)",
    )
    flush_interval_s: float = Field(30.0, gt=0)
    search_params: str = Field(
        "nprobe=1024,k_factor_rf=16",
        description="FAISS search parameters, e.g. 'nprobe=32' (IVF), 'efSearch=128' (HNSW), "
        "'k_factor_rf=16' (how many candidates per result a ',RFlat' index re-scores)",
    )
    exact_below: int = Field(
        300_000,
        ge=0,
        description="search exactly until the gallery holds this many faces, then switch to "
        "index_factory (built off the request path); 0: as soon as the factory can train",
    )
    search_threads: int = Field(
        1,
        ge=1,
        description="FAISS threads for a request's search (set in the thread that searches; "
        "concurrent requests are the parallelism: a second thread made a single fast-scan "
        "query 30-60 times slower on 2 cores, docs/benchmarks.md)",
    )
    build_threads: int = Field(
        0, ge=0, description="FAISS threads for index builds and bulk searches; 0: all cores"
    )
    use_gpu: bool = Field(False, description="search on the GPU when faiss-gpu is installed")
    backend: str = Field(
        "embedded",
        description="embedded: SQLite + FAISS under `path` (one process); distributed: "
        "PostgreSQL (source of truth) + Milvus, shared by several API replicas "
        "(service.gallery.backends registers them)",
    )
    verify_on_start: bool = Field(
        True,
        description="check every stored embedding (checksum, unit norm) at start-up; a face "
        "that fails is quarantined. About a second per 200k faces",
    )
    erasure_reserve_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="embedded: disk space kept back (a file beside the store) so that deletes "
        "still succeed on a full disk",
    )
    postgres_dsn: SecretStr | None = Field(
        None,
        description="distributed: libpq connection string, e.g. postgresql://u:p@db/marginface",
    )
    milvus_uri: str = Field(
        "http://127.0.0.1:19530", description="distributed: Milvus address (standalone or cluster)"
    )
    milvus_token: SecretStr | None = Field(None, description="distributed: Milvus user:password")
    milvus_collection: str = Field(
        "marginface",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$",
        description="distributed: collection name prefix; the model pin is appended",
    )
    milvus_timeout_s: float = Field(
        10.0, gt=0, description="distributed: longest wait for one Milvus call before 503"
    )
    milvus_index_type: str = Field(
        "FLAT", description="distributed: Milvus index type (FLAT exact, HNSW, IVF_FLAT, ...)"
    )
    milvus_index_params: dict[str, int | float | str] = Field(
        {}, description='distributed: build parameters, e.g. {"M": 32, "efConstruction": 200}'
    )
    milvus_search_params: dict[str, int | float | str] = Field(
        {}, description='distributed: search parameters, e.g. {"ef": 128} or {"nprobe": 32}'
    )


class AuthSettings(Section):
    """API keys for the X-API-Key header."""

    api_keys: list[SecretStr] = Field(
        [], description="plain keys with every scope (simple deployments)"
    )
    keys_file: Path | None = Field(
        Path("var/keys.json"),
        description="hashed, scoped keys managed with `marginface keys` (the same default, so "
        "keys the CLI creates work against the server started from the same folder); re-read "
        "on change; null: no keys file",
    )
    disabled: bool = False


class LimitSettings(Section):
    """Guards against oversized or abusive requests."""

    max_upload_bytes: int = Field(15 * 1024 * 1024, ge=1024, description="per uploaded file")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="whole request body")
    max_image_pixels: int = Field(40_000_000, ge=256)
    image_memory_bytes: int = Field(
        1536 * 1024**2,
        ge=1024**2,
        description="memory that images being decoded and searched may take at once (each "
        "takes 12 bytes a pixel from its header's size while it decodes, 3 after); a request "
        "whose share does not come free within image_memory_wait_s is 503 overloaded",
    )
    image_memory_wait_s: float = Field(
        30.0, gt=0, description="how long an image waits for its share of image_memory_bytes"
    )
    max_json_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="request bodies that are not multipart uploads (JSON, forms): metadata "
        "is capped at 16 KiB, so a bigger body is refused 413 before it is parsed",
    )
    max_top_k: int = Field(100, ge=1)
    max_files_per_request: int = Field(32, ge=1)
    max_inflight_requests: int = Field(
        64,
        ge=1,
        description="requests handled at once; more get 503 overloaded with Retry-After at once",
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="a request still running after this answers 503 timeout"
    )
    max_inflight_per_key: int | None = Field(
        None,
        ge=0,
        description="requests one API key may have in flight, so that one key cannot hold "
        "every slot; None: half of max_inflight_requests; 0: no per-key cap",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="a request body must arrive within this, else 408"
    )
    min_body_rate_bytes_s: float = Field(
        1024.0,
        ge=0,
        description="after body_grace_s, a body arriving slower than this on average is 408",
    )
    body_grace_s: float = Field(5.0, ge=0, description="slow start allowed before the rate check")

    @property
    def inflight_per_key(self) -> int:
        """The per-key cap in force (0: none)."""
        if self.max_inflight_per_key is not None:
            return self.max_inflight_per_key
        return max(1, self.max_inflight_requests // 2)


class JobSettings(Section):
    """Batch indexing over REST: what may be read and how big an archive may be."""

    allowed_roots: list[Path] = Field(
        [], description="server-side folders a job may index (none: zip uploads only)"
    )
    work_dir: Path = Path("var/jobs")
    max_archive_bytes: int = Field(1024**3, ge=1024, description="zip upload size")
    max_unpacked_bytes: int = Field(4 * 1024**3, ge=1024, description="sum of the entries")
    max_unpacked_total_bytes: int = Field(
        8 * 1024**3,
        ge=1024,
        description="what the unpacked uploads of every queued or running job may hold together "
        "on disk; an upload that would pass it is 503 overloaded until a job ends",
    )
    max_entries: int = Field(200_000, ge=1)
    max_ratio: float = Field(100.0, gt=1, description="largest compression ratio of an entry")
    cluster_ttl_s: float = Field(
        24 * 3600.0,
        gt=0,
        description="a finished cluster job, its thumbnails and embeddings are deleted this "
        "long after it ends (or when DELETE /v1/jobs/{id} says so)",
    )


class PrivacySettings(Section):
    """What is kept besides embeddings, and the record of who changed the gallery."""

    keep_images: bool = Field(
        False, description="keep each enrolled photo (REST enrollments); off: embeddings only"
    )
    keep_face_chips: bool = Field(
        True,
        description="keep a face chip per enrolled face (the face with a margin, at most 256 "
        "px): what re-embedding with a new model needs; off: migrating to another recognizer "
        "needs re-enrollment",
    )
    images_dir: Path = Field(
        Path("var/images"),
        description="where kept face chips and photos go (shared storage for replicas); "
        "default: an 'images' folder beside the gallery's folder (var/images for var/gallery). "
        "It belongs to one gallery: another gallery is refused it",
    )
    images_key: SecretStr | None = Field(
        None,
        description="Fernet key (urlsafe base64, 32 bytes) that encrypts kept chips and photos "
        "at rest; "
        "generate one with `marginface keys images-key`",
    )
    audit_log_path: Path | None = Field(
        None,
        description="append one JSON line per write or admin request (who, what, when, "
        "outcome); the `marginface.audit` logger always gets it too",
    )


class Settings(BaseSettings):
    """Everything configurable about the service."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_file=None, extra="forbid"
    )

    models_dir: Path = Path("models")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(
        1,
        ge=0,
        description="ONNX Runtime threads per model call; 0 lets it choose (a pool per "
        "session). 1: concurrent requests fill the cores themselves; on 2 cores ONNX Runtime's "
        "choice spent more server CPU per request at every client count (median +46%) and "
        "served fewer requests/s in 7 of 8 cells (docs/benchmarks.md, 'Service throughput "
        "under concurrent clients')",
    )
    detector: DetectorSettings = DetectorSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    gallery: GallerySettings = GallerySettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    jobs: JobSettings = JobSettings()
    privacy: PrivacySettings = PrivacySettings()
    cors_allow_origins: list[str] = Field(
        [], description="origins allowed to call the API from a browser; empty: CORS off"
    )
    enroll_policy: Literal["largest", "reject"] = "largest"
    min_quality: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="enrollment refuses faces whose quality score is below this (422 "
        "low_quality; bulk indexing reports them); 0: off. The default is the 1st percentile "
        "of the main faces of CelebA-299's in-the-wild photos, rounded (LFW's 1st: 0.84; "
        "docs/benchmarks.md)",
    )
    default_top_k: int = Field(5, ge=1)
    verify_far: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="default verify operating point; None: best-accuracy threshold",
    )
    identify_far: float | None = Field(
        1e-4, gt=0, lt=1, description="default identify operating point (1:N needs a lower FAR)"
    )
    identify_margin: float = Field(
        0.0,
        ge=0,
        le=2,
        description="identify answers 'ambiguous' (no match, both candidates) when the best "
        "subject beats the runner-up by less than this cosine; 0: off (docs/benchmarks.md, "
        "'Open-set identification')",
    )
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    metrics_enabled: bool = Field(True, description="serve Prometheus metrics at /metrics")
    console_enabled: bool = Field(True, description="serve the web console at /console")

    def with_recognizer(self, name: str) -> Settings:
        """These settings with another recognizer (a migration's target, ``--model``)."""
        return self.model_copy(
            update={"embedder": self.embedder.model_copy(update={"model": name})}
        )

    @model_validator(mode="after")
    def _images_beside_the_gallery(self) -> Settings:
        """Unless set, kept images go beside the gallery's folder: two galleries configured by
        their path alone never share one (face ids would collide)."""
        if "images_dir" not in self.privacy.model_fields_set:
            self.privacy.images_dir = self.gallery.path.parent / "images"
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, data: object) -> object:
        """Refuse a misspelt MARGINFACE_ variable instead of quietly using the default (before
        validation, so the error can name the closest valid variable)."""
        check_environment(os.environ)
        return data


def setting_variables(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> list[str]:
    """Every environment variable that sets something (sections and their fields)."""
    names = []
    for name, info in model.model_fields.items():
        full = prefix + name.upper()
        names.append(full)
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names += setting_variables(kind, full + "__")
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """ConfigError naming each unknown MARGINFACE_ variable and the closest valid name."""
    known = setting_variables()
    unknown = [
        k
        for k in sorted(environ)
        if k.upper().startswith(ENV_PREFIX)
        and k.upper() not in known
        and k.upper() not in NOT_SETTINGS
    ]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise ConfigError(
        "unknown setting(s) in the environment: " + "; ".join(hints) + ". Settings are listed "
        "in service/settings.py; MARGINFACE_ variables that are not settings: "
        + ", ".join(sorted(NOT_SETTINGS)),
        unknown=unknown,
    )
