"""Property-based fuzzing of the whole OpenAPI surface with schemathesis, on a small budget,
against a real uvicorn process: no generated request may get a 5xx.

Longer run (documented in docs/benchmarks.md):
    MARGINFACE_FUZZ_EXAMPLES=500 pytest tests/reliability/test_fuzz.py -m slow
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.gallery.postgres import upgrade
from service.settings import Settings
from tests.backends import Distributed, Postgres
from tests.test_server import HEADERS, free_port, server

EXAMPLES = int(os.environ.get("MARGINFACE_FUZZ_EXAMPLES", "25"))

schema = schemathesis.openapi.from_dict(
    create_app(Settings(auth={"disabled": True})).openapi()  # type: ignore[arg-type]
)


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def base_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real server on either gallery backend (the distributed one on the session's
    PostgreSQL and milvus-lite servers)."""
    root: Path = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env: dict[str, str] = {}
    if request.param == "distributed":
        postgres: Postgres = request.getfixturevalue("postgres")
        dsn = postgres.new_database()
        upgrade(dsn)
        milvus_uri: str = request.getfixturevalue("milvus_uri")
        env = Distributed(dsn, milvus_uri, "fuzz" + uuid.uuid4().hex[:8]).env()
    with server(root / "gallery", port, env):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_generated_request_gets_a_5xx(case: schemathesis.Case, base_url: str) -> None:
    response = case.call(base_url=base_url, headers=HEADERS, timeout=60)
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        if case.path.startswith("/api/v1/"):  # CompreFace's API: its body (docs/compreface.md)
            assert set(body) == {"message", "code"} and isinstance(body["code"], int), body
            return
        assert set(body) == {"error"} and body["error"]["code"], body
