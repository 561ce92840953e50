"""Shared fixtures: the real data, a real pipeline (ONNX Runtime on the CPU), app clients."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.recognition import build_pipeline
from service.settings import Settings
from service.vision.pipeline import FacePipeline
from tests.backends import Distributed, Postgres, milvus_server, postgres_server

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
API_KEY = "test-key-0123456789"

if not DATA.is_dir():  # fail loudly: these tests are about real faces
    raise RuntimeError(f"the shared data folder {DATA} is missing; the tests read it in place")


def lfw(name: str, number: int) -> Path:
    """Path of an LFW image."""
    return DATA / "lfw" / "images" / name / f"{name}_{number:04d}.jpg"


def kept_files(folder: Path) -> list[Path]:
    """The face chips and photos kept in an images folder (not the marker that binds the
    folder to its gallery: ``service.images.GALLERY_MARKER``)."""
    from service.images import GALLERY_MARKER

    return [p for p in folder.iterdir() if p.name != GALLERY_MARKER]


def read(path: Path) -> bytes:
    """File bytes."""
    return path.read_bytes()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    """Encode an array as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test: CPU, a gallery and its kept face data under tmp_path (face chips
    are kept by default: never in the checkout's var/, where another test's gallery would sweep
    them), one API key."""
    privacy = overrides.pop("privacy", {})
    assert isinstance(privacy, dict), "privacy overrides are a dict of settings"
    base: dict[str, object] = {
        "models_dir": ROOT / "models",
        "device": "cpu",
        "gallery": {"path": tmp_path / "gallery", "flush_interval_s": 3600},
        "auth": {"api_keys": [API_KEY]},
        "privacy": {"images_dir": tmp_path / "images", **privacy},
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def kept_face_data_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept face chips go to an images folder that belongs to one gallery (it is bound to the
    first that opens it). A test's CLI run or server with the default gallery (``cwd=ROOT``:
    ``var/gallery``, ``var/images``), or on a database of its own (the distributed backend),
    would meet another test's folder: each test's go under its own tmp_path (settings that name
    an images folder still win)."""
    monkeypatch.setenv("MARGINFACE_PRIVACY__IMAGES_DIR", str(tmp_path / "images"))


@pytest.fixture(scope="session")
def int8_recognizer() -> str:
    """``sface-2021dec-int8`` ready in the repository's registry: a fresh checkout has only its
    manifest, so it is derived here (SFace quantized on its pinned calibration photos, about
    30 s), as ``marginface models fetch --derived`` does, once per session."""
    from service.errors import ModelError
    from service.models import fetch_model, resolve_model

    name = "sface-2021dec-int8"
    try:
        resolve_model(ROOT / "models", name)
    except ModelError:
        fetch_model(ROOT / "models" / name, ROOT / "models" / ".cache")
    return name


@pytest.fixture(scope="session")
def pipeline() -> FacePipeline:
    """The default detector and recognizer, loaded once; with the micro-batcher, so the API
    tests go through it as a GPU deployment does (real servers in the tests use the CPU default:
    no batcher)."""
    return build_pipeline(Settings(models_dir=ROOT / "models", device="cpu"), batching=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Per-test settings with a fresh gallery."""
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings, pipeline: FacePipeline) -> Iterator[TestClient]:
    """The app over real HTTP semantics (TestClient), authenticated."""
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, headers={"X-API-Key": API_KEY}, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One real PostgreSQL server for the session (each test takes its own database)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def milvus_uri() -> Iterator[str]:
    """One real milvus-lite server process for the session (each test its own collections)."""
    with milvus_server() as server:
        yield server.uri


@pytest.fixture
def distributed(postgres: Postgres, milvus_uri: str) -> Distributed:
    """A fresh distributed gallery location: a new database at the current schema (upgraded
    the way `marginface db upgrade` does it) and a collection prefix of its own."""
    from service.gallery.postgres import upgrade

    dsn = postgres.new_database()
    upgrade(dsn)
    return Distributed(dsn, milvus_uri, "t" + uuid.uuid4().hex[:12])


@pytest.fixture(params=["embedded", "distributed"])
def gallery_backend(request: pytest.FixtureRequest) -> Distributed | None:
    """Runs a test on both gallery backends: None for the embedded one (the server's own
    folder), or a fresh distributed location (real PostgreSQL + milvus-lite)."""
    if request.param == "embedded":
        return None
    result: Distributed = request.getfixturevalue("distributed")
    return result
