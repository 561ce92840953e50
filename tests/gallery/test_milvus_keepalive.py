"""The Milvus client's gRPC keepalive against a server with gRPC's default ping policy.

milvus-lite's server (like any grpcio server left at its defaults) allows a client's ping only
5 minutes after the last one when no data flowed between, and after two early ones answers
GOAWAY "too_many_pings", failing every call on the connection with UNAVAILABLE (seen in CI under
load as "Fail connecting to server"). The channel pymilvus opens for us must stay inside it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from service.gallery.milvus import MilvusIndex
from tests.backends import milvus_server

DEFAULT_MIN_PING_INTERVAL_MS = 300_000  # gRPC core's GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_...


def test_the_client_never_pings_a_default_grpc_server_into_goaway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[dict[str, Any]] = []
    real = grpc.insecure_channel

    def recording(target: str, options: Any = None, *args: Any, **kwargs: Any) -> grpc.Channel:
        opened.append(dict(options or []))
        return real(target, options, *args, **kwargs)

    monkeypatch.setattr(grpc, "insecure_channel", recording)
    # a server of its own: pymilvus reuses a channel another test opened to the session's server
    with milvus_server() as server:
        index = MilvusIndex(server.uri, model_id="keepalive-test", dim=8, gallery_id="keepalive")
        try:
            assert index.ntotal == 0  # the real server answers through that channel
        finally:
            index.drop()
            index.close()
    assert opened, "pymilvus opened no channel through grpc.insecure_channel"
    for options in opened:
        time_ms = int(options.get("grpc.keepalive_time_ms", 2**31 - 1))
        assert time_ms >= DEFAULT_MIN_PING_INTERVAL_MS, options
        assert not options.get("grpc.keepalive_permit_without_calls"), options


def test_replicas_starting_together_share_one_new_collection() -> None:
    """Two API replicas started at once (the compose file's distributed profile) both found no
    collection and both created it; the second got "collection already exists" and never became
    healthy (seen in the Docker deployment test)."""
    import threading

    errors: list[str] = []

    def open_index() -> None:
        try:
            MilvusIndex(server.uri, model_id="race", dim=8, gallery_id="race").close()
        except Exception as exc:
            errors.append(repr(exc)[:200])

    with milvus_server() as server:
        threads = [threading.Thread(target=open_index) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
