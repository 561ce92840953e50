"""Requests uvicorn's parser refuses before the app sees them (issue 25, also found) answer the
service's JSON error body, like every other error, not uvicorn's plain text."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import uvicorn

from service.http_protocol import JsonErrorH11Protocol
from tests.backends import free_port
from tests.reliability.test_slow_clients import read_response
from tests.test_server import server

UNPARSEABLE = {
    "nul_in_a_header": b"GET /v1/subjects HTTP/1.1\r\nHost: t\r\nX-Api-Key: a\x00b\r\n\r\n",
    "url_of_70_kb": b"GET /v1/subjects?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    "broken_request_line": b"GET\x01 / HTTP/1.1\r\nHost: t\r\n\r\n",
}


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> object:
    chosen = free_port()
    with server(tmp_path_factory.mktemp("parser") / "gallery", chosen):
        yield chosen


@pytest.mark.parametrize("case", sorted(UNPARSEABLE))
def test_an_unparseable_request_gets_the_json_error_body(port: int, case: str) -> None:
    """On main: 400 text/plain `Invalid HTTP request received.`"""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(UNPARSEABLE[case])
        status, headers, body = read_response(sock)
    assert status == 400, body
    assert headers["content-type"] == "application/json", (headers, body)
    assert json.loads(body)["error"]["code"] == "bad_request"


def test_the_h11_fallback_answers_the_same_body() -> None:
    """Without httptools uvicorn parses with h11: the same JSON body (a bare ASGI app here, as
    the parser answers before any app runs)."""

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        raise AssertionError("an unparseable request reached the app")

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), http=JsonErrorH11Protocol)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", config.port), timeout=30) as sock:
            sock.sendall(UNPARSEABLE["nul_in_a_header"])
            status, headers, body = read_response(sock)
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"
