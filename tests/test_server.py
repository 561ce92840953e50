"""Against a real uvicorn process: acknowledged enrollments survive SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

from service.gallery.embedded import embedded_gallery
from tests.backends import assert_index_equals_store, free_port
from tests.conftest import API_KEY, DATA, ROOT

HEADERS = {"X-API-Key": API_KEY}
CLI = [sys.executable, "-m", "service.cli"]


def serve_command(
    port: int, gallery: Path, device: str = "cpu", models_dir: Path | None = None
) -> list[str]:
    """`marginface serve` as a user runs it, with the repository's models (or ``models_dir``)."""
    models = str(models_dir or ROOT / "models")
    cli = [sys.executable, "-m", "service.cli", "serve"]
    return [*cli, "--port", str(port), "--gallery", str(gallery), "--models-dir", models,
            "--device", device]  # fmt: skip


@contextmanager
def server(
    gallery: Path,
    port: int,
    extra_env: dict[str, str] | None = None,
    *,
    log_dir: Path | None = None,
    cwd: Path = ROOT,
    device: str = "cpu",
    models_dir: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `marginface serve` as a user would (in ``cwd``, on ``device``), wait until /readyz
    answers."""
    env = {
        **os.environ,
        "MARGINFACE_AUTH__API_KEYS": json.dumps([API_KEY]),
        "MARGINFACE_GALLERY__FLUSH_INTERVAL_S": "3600",  # so SIGKILL always finds a stale index
        # face chips are kept by default: beside this gallery, not in the checkout's var/
        "MARGINFACE_PRIVACY__IMAGES_DIR": str(gallery.parent / f"{gallery.name}-images"),
        **(extra_env or {}),
    }
    cmd = serve_command(port, gallery, device, models_dir)
    # the log goes to a file: a pipe nobody reads fills up and blocks the server's logging
    log_path = (log_dir or gallery.parent) / f"server-{port}.log"
    log_file = log_path.open("ab")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        deadline = time.monotonic() + 180  # generous: a busy CI machine loads models slowly
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        log_file.close()


def test_acknowledged_enrollments_survive_sigkill(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    root = DATA / "glint24_aligned"
    people = sorted(p.name for p in root.iterdir())[:6]

    def photos(name: str) -> list[Path]:
        return sorted((root / name).glob("*.jpg"), key=lambda p: int(p.stem))

    acknowledged: dict[str, list[int]] = {}
    with (
        server(gallery, port) as proc,
        httpx.Client(base_url=base, headers=HEADERS, timeout=30) as c,
    ):
        for name in people:
            assert c.post("/v1/subjects", json={"id": name, "name": name}).status_code == 201
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos(name)[:3]]
            r = c.post(f"/v1/subjects/{name}/faces", files=files, params={"aligned": "true"})
            assert r.status_code == 201
            acknowledged[name] = [f["face_id"] for f in r.json()["faces"]]
        deleted = acknowledged.pop(people[-1])
        assert c.delete(f"/v1/subjects/{people[-1]}").status_code == 200
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    with server(gallery, port), httpx.Client(base_url=base, headers=HEADERS, timeout=30) as c:
        ready = c.get("/readyz").json()["gallery"]
        assert ready["faces"] == ready["indexed"] == sum(len(v) for v in acknowledged.values())
        for name, face_ids in acknowledged.items():
            assert [f["id"] for f in c.get(f"/v1/subjects/{name}/faces").json()] == face_ids
            probe = photos(name)[10].read_bytes()
            r = c.post(
                "/v1/identify",
                files={"image": ("p.jpg", probe, "image/jpeg")},
                data={"aligned": "true"},
            )
            assert r.json()["faces"][0]["match"]["subject_id"] == name
        assert c.get(f"/v1/subjects/{people[-1]}").status_code == 404
        r = c.post(
            "/v1/identify",
            files={"image": ("p.jpg", photos(people[-1])[0].read_bytes(), "image/jpeg")},
            data={"aligned": "true"},
        )
        assert all(cand["face_id"] not in deleted for cand in r.json()["faces"][0]["candidates"])

    # after a clean shutdown, the saved index holds exactly the store's vectors
    g = embedded_gallery(gallery, model_id="ignored@x", embedding_dim=128)
    assert_index_equals_store(g)
    g.close()


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="runs where ONNX Runtime has no CUDA provider (CI, the cpu extra); here device=cuda "
    "would legitimately start, so the refusal cannot be shown",
)
def test_device_cuda_without_a_cuda_provider_refuses_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "MARGINFACE_AUTH__API_KEYS": json.dumps([API_KEY])}
    cmd = serve_command(free_port(), tmp_path / "g", device="cuda")
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 2
    message = done.stderr.decode()
    assert "device=cuda" in message and "onnxruntime-gpu" in message
    assert not (tmp_path / "g").exists()  # nothing was started or created


def test_a_key_made_with_the_cli_works_against_the_server(tmp_path: Path) -> None:
    """Was: `marginface keys create` wrote var/keys.json, which a server started like
    scripts/serve.sh (only MARGINFACE_AUTH__API_KEYS in .env) never read: 401."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with server(tmp_path / "gallery", port, cwd=tmp_path):
        made = subprocess.run(
            [*CLI, "keys", "create", "--id", "door-camera", "--scopes", "read", "--json"],
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if not k.startswith("MARGINFACE_AUTH")},
            capture_output=True,
            check=True,
        )
        created = json.loads(made.stdout)
        headers = {"X-API-Key": created["key"]}
        deadline = time.monotonic() + 10  # the server re-reads the keys file within a second
        while (r := httpx.get(f"{base}/v1/subjects", headers=headers)).status_code == 401:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert r.status_code == 200
        assert created["file"] == str(tmp_path / "var" / "keys.json")
        assert "reads it" in created["read_by"]  # the CLI says who will read the key
        # the key has the read scope only
        r = httpx.post(f"{base}/v1/subjects", headers=headers, json={"name": "x"})
        assert r.status_code == 403
