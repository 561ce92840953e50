"""Against real uvicorn processes: clients without a key cannot slow, fill or hold the service
(issue 13's findings 1, 2 and 9), measured from raw sockets."""

from __future__ import annotations

import os
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from service.app import create_app
from service.vision.pipeline import FacePipeline
from tests.backends import free_port
from tests.conftest import API_KEY, DATA, make_settings
from tests.test_server import HEADERS, server

GLINT = DATA / "glint24_aligned"
PROBE = sorted((GLINT / sorted(p.name for p in GLINT.iterdir())[0]).glob("*.jpg"))[0]


def read_response(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (status, headers, body) from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def slow_head(path: str, length: int, field: str = "image") -> bytes:
    """Request headers and the start of a well-formed multipart body declaring ``length``
    bytes (a form parser accepts it until the body ends)."""
    part = (
        f'--b\r\nContent-Disposition: form-data; name="{field}"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {length}\r\n\r\n{part}"
    ).encode()


def trickle(port: int, stop: threading.Event, answers: list[int]) -> None:
    """A client with no key sending a 1 MB identify body at one byte per second, over and over
    (it reconnects whenever the server answers or hangs up)."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(slow_head("/v1/identify", 1_000_000))
                while not stop.is_set():
                    readable, _, _ = select.select([sock], [], [], 1.0)
                    if readable:
                        status, _, _ = read_response(sock, timeout=5)
                        answers.append(status)
                        break
                    sock.sendall(b"-")
        except OSError:
            time.sleep(0.05)


def keyed_identify(client: httpx.Client) -> tuple[int, float]:
    started = time.perf_counter()
    r = client.post(
        "/v1/identify",
        files={"image": (PROBE.name, PROBE.read_bytes(), "image/jpeg")},
        data={"aligned": "true"},
    )
    return r.status_code, time.perf_counter() - started


def test_slow_unauthenticated_clients_cannot_starve_keyed_requests(tmp_path: Path) -> None:
    """Finding 1: the in-flight slot was taken, and the body read, before the key was checked:
    64 keyless connections trickling identify bodies made every keyed request answer 503
    `overloaded` (up to the 120 s deadline, then they reconnected). Here: 100 of them for 30 s
    (MARGINFACE_SLOW_CLIENTS / MARGINFACE_SLOW_SECONDS), against a limit of 16 in flight."""
    clients = int(os.environ.get("MARGINFACE_SLOW_CLIENTS", "100"))
    seconds = float(os.environ.get("MARGINFACE_SLOW_SECONDS", "30"))
    port = free_port()
    env = {"MARGINFACE_LIMITS__MAX_INFLIGHT_REQUESTS": "16"}
    with server(tmp_path / "gallery", port, env):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as c:
            assert keyed_identify(c)[0] == 200  # warm
            quiet = []  # the same requests without the crowd, for comparison
            until = time.monotonic() + min(10.0, seconds / 3)
            while time.monotonic() < until:
                quiet.append(keyed_identify(c))
                time.sleep(0.1)
            stop, answers = threading.Event(), []
            crowd = [
                threading.Thread(target=trickle, args=(port, stop, answers), daemon=True)
                for _ in range(clients)
            ]
            for t in crowd:
                t.start()
            time.sleep(2)  # every slow connection is open and trickling
            results = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                results.append(keyed_identify(c))
                time.sleep(0.1)
            stop.set()
            for t in crowd:
                t.join(timeout=10)
    statuses = [s for s, _ in results]

    def p50_p99(samples: list[tuple[int, float]]) -> str:
        times = sorted(t for _, t in samples)
        p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
        return f"p50 {statistics.median(times) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"

    print(
        f"\nslow-client test: {clients} keyless trickling connections for {seconds:.0f} s; "
        f"{len(results)} keyed identify requests: {p50_p99(results)} "
        f"(without the crowd: {p50_p99(quiet)}); the crowd got {sorted(set(answers))}"
    )
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert set(answers) <= {401}  # the crowd only ever hears 401


def files_open_under(pid: int, folder: Path) -> set[str]:
    """What the process has open under ``folder`` (a spooled upload is an unlinked temp file:
    only its descriptor shows it)."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.add(target)
    return found


def server_read_bytes(pid: int) -> int:
    """Bytes the process has read through read syscalls, sockets included."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar")


def test_a_large_body_without_a_key_is_refused_after_the_headers(tmp_path: Path) -> None:
    """Finding 2: up to 1 GiB per request to /v1/jobs/index (64 MB elsewhere) was spooled to the
    temp folder before the 401. Now the 401 comes after the headers, the temp folder stays
    empty, and the server reads no more than a small bound of the body."""
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    declared = 200 * 1024 * 1024
    spooled: set[str] = set()
    with server(tmp_path / "gallery", port, {"TMPDIR": str(spool)}) as proc:
        before = server_read_bytes(proc.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = slow_head("/v1/jobs/index", declared, field="archive")
            sock.sendall(head)
            sent = len(head.partition(b"\r\n\r\n")[2])  # the part's own headers
            chunk = b"\0" * 65536
            status = None
            started = time.monotonic()
            while sent < declared and time.monotonic() - started < 60:
                readable, writable, _ = select.select([sock], [sock], [], 1.0)
                spooled |= files_open_under(proc.pid, spool)  # what the server spools meanwhile
                if readable:
                    status, _, body = read_response(sock)
                    break
                if writable:
                    try:
                        sent += sock.send(chunk[: declared - sent])
                    except OSError:  # the server hung up after answering
                        break
            if status is None:
                status, _, body = read_response(sock)
        read = server_read_bytes(proc.pid) - before
    print(f"\n401 after {sent} bytes sent by the client; the server read {read} bytes")
    assert status == 401, body
    assert spooled == set()  # nothing spooled, ever
    assert read < 4 * 1024 * 1024, read  # headers and at most a few socket buffers of body
    assert sent < declared


@contextmanager
def in_process_server(app: object) -> Iterator[int]:
    """uvicorn in a thread of this process (so a test can break a route), with keep-alive."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


def test_a_500_keeps_the_connection_usable(
    tmp_path: Path, pipeline: FacePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 9: after any 500 the keep-alive connection was closed, so the client's next
    request on it failed too."""
    from service.api import convert

    real = convert.subject

    def broken(s):  # type: ignore[no-untyped-def]
        if s.id == "boom":
            raise RuntimeError("a bug")
        return real(s)

    monkeypatch.setattr(convert, "subject", broken)
    app = create_app(make_settings(tmp_path), pipeline=pipeline)
    with in_process_server(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        key = f"X-API-Key: {API_KEY}\r\n"
        body = b'{"id": "boom", "name": "B"}'
        sock.sendall(
            f"POST /v1/subjects HTTP/1.1\r\nHost: t\r\n{key}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, headers, answer = read_response(sock)
        assert status == 500 and b"internal_error" in answer
        assert headers.get("connection", "").lower() != "close"
        assert headers.get("x-request-id")
        sock.sendall(f"GET /v1/subjects/boom/faces HTTP/1.1\r\nHost: t\r\n{key}\r\n".encode())
        status, _, answer = read_response(sock)  # the same connection
        assert status == 200, answer
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    line = [ln for ln in metrics.splitlines() if ln.startswith("marginface_internal_errors_total")]
    assert line and float(line[0].split()[-1]) == 1.0
    assert np.isfinite(float(line[0].split()[-1]))


def test_a_keyed_body_slower_than_the_minimum_rate_is_408(tmp_path: Path) -> None:
    """Slow bodies are cut off whoever sends them: below limits.min_body_rate_bytes_s after
    limits.body_grace_s, the answer is 408 request_timeout (here after a 1 s grace)."""
    port = free_port()
    env = {
        "MARGINFACE_LIMITS__BODY_GRACE_S": "1",
        "MARGINFACE_LIMITS__MIN_BODY_RATE_BYTES_S": "1024",
    }
    with server(tmp_path / "gallery", port, env):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = slow_head("/v1/identify", 1_000_000).replace(
                b"Host: test\r\n", f"Host: test\r\nX-API-Key: {API_KEY}\r\n".encode()
            )
            sock.sendall(head)
            started = time.monotonic()
            status = None
            while time.monotonic() - started < 20:
                readable, _, _ = select.select([sock], [], [], 0.5)
                if readable:
                    status, _, body = read_response(sock)
                    break
                sock.sendall(b"-")
        waited = time.monotonic() - started
    assert status == 408, body
    assert b"request_timeout" in body and waited < 10
