"""Memory per request and in total (issue 25, finding 4), tried against real uvicorn processes:
JSON bodies bigger than any route takes, and more 36-megapixel images at once than the memory
budget holds. Memory is read from the server's /proc entry (VmHWM: its peak resident size)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx

from tests.backends import free_port
from tests.reliability import decode_bombs as bombs
from tests.test_server import HEADERS, server

MB = 1024 * 1024


def memory_kb(pid: int, field: str) -> int:
    """A VmRSS / VmHWM line of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current size (so the models' load is not counted)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def test_json_bodies_over_what_a_route_takes_are_413_before_parsing(tmp_path: Path) -> None:
    """On main a 36 MB JSON body to POST /v1/subjects was read and parsed (14.5 s, 250 MB more
    memory) before its 16 KiB metadata cap answered 422; here it is 413 from its declared
    length, and a chunked one (no length) is cut off at the cap as it streams."""
    port = free_port()
    with server(tmp_path / "gallery", port) as proc:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as c:
            body = json.dumps({"id": "x", "name": "X", "metadata": {"k": "a" * (36 * MB)}})
            before = memory_kb(proc.pid, "VmRSS")
            r = c.post("/v1/subjects", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 413, r.text[:300]
            assert r.json()["error"]["code"] == "payload_too_large"

            def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: chunked
                yield b'{"id": "y", "name": "Y", "metadata": {"k": "'
                for _ in range(64):
                    yield b"a" * 65536
                yield b'"}}'

            r = c.post(
                "/v1/subjects", content=chunks(), headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 413, r.text[:300]
            grew_kb = memory_kb(proc.pid, "VmRSS") - before
            assert grew_kb < 64 * 1024, grew_kb  # nothing like the body was kept
            ok = c.post("/v1/subjects", json={"id": "z", "name": "Z", "metadata": {"k": "v"}})
            assert ok.status_code == 201, ok.text


def test_concurrent_36_megapixel_images_stay_within_the_memory_budget(tmp_path: Path) -> None:
    """Four 166 KB TIFFs of 36 MP each, sent at once: on main each took about 500 MB while it
    decoded, all at the same time (8 took the server from 310 MB to 3.1 GB). With a 500 MB
    budget they are admitted one at a time, each answered, and the server's peak stays within
    the budget plus what one image's conversion adds (a 700 MB bound)."""
    port = free_port()
    env = {"MARGINFACE_LIMITS__IMAGE_MEMORY_BYTES": str(500 * MB)}
    tiff = bombs.flat_tiff()
    with server(tmp_path / "gallery", port, env) as proc:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers=HEADERS, timeout=120) as c:
            small = bombs.encode(bombs.Image.new("RGB", (64, 64), (90, 90, 90)), "PNG")
            assert c.post("/v1/identify", files={"image": ("s.png", small)}).status_code == 200
        start = threading.Barrier(4)
        answers: list[int] = []

        def send() -> None:
            with httpx.Client(base_url=base, headers=HEADERS, timeout=120) as c:
                start.wait()
                r = c.post("/v1/identify", files={"image": ("big.tif", tiff, "image/tiff")})
                answers.append(r.status_code)

        reset_peak(proc.pid)
        settled_kb = memory_kb(proc.pid, "VmHWM")
        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        peak_kb = memory_kb(proc.pid, "VmHWM")
    print(f"peak {peak_kb // 1024} MB, settled {settled_kb // 1024} MB")
    assert answers == [200] * 4, answers
    assert (peak_kb - settled_kb) < 700 * 1024, (
        f"peak {peak_kb // 1024} MB, settled {settled_kb // 1024} MB"
    )
