"""One key cannot hold every in-flight slot (issue 25, also found): by default a key may hold
half of ``limits.max_inflight_requests``, so another key always finds room."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path

import httpx

from tests.backends import free_port
from tests.reliability.test_slow_clients import PROBE, read_response, slow_head
from tests.test_server import server

GREEDY, OTHER = "greedy-key-0123456789", "other-key-0123456789"


def test_one_key_cannot_hold_every_slot_by_default(tmp_path: Path) -> None:
    """On main, eight slow uploads from one key held all eight slots and the other key's
    identify was 503 overloaded; now the greedy key's fifth to eighth are refused at once and
    the other key is answered."""
    port = free_port()
    env = {
        "MARGINFACE_AUTH__API_KEYS": json.dumps([GREEDY, OTHER]),
        "MARGINFACE_LIMITS__MAX_INFLIGHT_REQUESTS": "8",
    }
    with server(tmp_path / "gallery", port, env):
        head = slow_head("/v1/identify", 1_000_000).replace(
            b"Host: test\r\n", f"Host: test\r\nX-API-Key: {GREEDY}\r\n".encode()
        )
        socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(8)]
        refused = []
        try:
            for sock in socks:
                sock.sendall(head)
            until = time.monotonic() + 2  # the slow bodies are under way (their grace is 5 s)
            open_socks = list(socks)
            while time.monotonic() < until and open_socks:
                readable, _, _ = select.select(open_socks, [], [], 0.1)
                for sock in readable:
                    status, _, body = read_response(sock)
                    refused.append((status, json.loads(body)["error"]["code"]))
                    open_socks.remove(sock)
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": OTHER}, timeout=30
            ) as c:
                r = c.post(
                    "/v1/identify",
                    files={"image": (PROBE.name, PROBE.read_bytes(), "image/jpeg")},
                    data={"aligned": "true"},
                )
        finally:
            for sock in socks:
                sock.close()
    assert r.status_code == 200, r.text
    assert refused == [(503, "overloaded")] * 4
