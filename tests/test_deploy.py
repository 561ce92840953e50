"""Docker deployment without a docker engine: the Dockerfile and docker-compose.yml agree with the
code (paths, ports, env names, commands), and the container's start command serves outside docker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel

from service.app import create_app
from service.cli import build_parser
from service.settings import NOT_SETTINGS, Settings
from tests.conftest import ROOT
from tests.test_server import free_port

DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE_ONLY = {k for k, who in NOT_SETTINGS.items() if who.startswith("docker-compose")}
#: the .env scripts/serve.sh writes: one API key, nothing else
SERVE_SH_ENV = {"MARGINFACE_AUTH__API_KEYS": '["k"]'}
DISTRIBUTED = {"postgres", "etcd", "minio", "milvus", "db-upgrade", "api-replica", "proxy"}
#: the folders a server writes with the default settings
WRITTEN_PATHS = (
    "MARGINFACE_GALLERY__PATH",
    "MARGINFACE_JOBS__WORK_DIR",
    "MARGINFACE_PRIVACY__IMAGES_DIR",
)


def stages() -> dict[str, list[str]]:
    """Dockerfile instructions per build stage (line continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\w+)", line, re.I)
        if m:
            current = m.group(1)
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def instruction(stage: list[str], name: str) -> list[str]:
    return [line[len(name) :].strip() for line in stage if line.upper().startswith(name + " ")]


def env_of(stage: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for body in instruction(stage, "ENV"):
        for token in shlex.split(body):
            key, _, value = token.partition("=")
            out[key] = value
    return out


def setting_exists(env_name: str) -> bool:
    """MARGINFACE_A__B names a field b of the nested model a of Settings."""
    if not env_name.startswith("MARGINFACE_"):
        return True
    if env_name in COMPOSE_ONLY:  # compose's own knobs, not service settings
        return True
    model: type[BaseModel] = Settings
    parts = env_name[len("MARGINFACE_") :].lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            annotation = field.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def dotenv(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = shlex.split(value)[0] if value else ""
    return out


def test_dockerfile_targets_copy_paths_user_and_healthcheck() -> None:
    parsed = stages()
    assert set(parsed) == {"cpu", "gpu"}
    app = create_app(Settings(auth={"disabled": True}))  # type: ignore[arg-type]
    app_paths = set(app.openapi()["paths"])
    for name, stage in parsed.items():
        for body in instruction(stage, "COPY"):
            *sources, _ = body.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
        assert instruction(stage, "USER") == ["marginface"], name
        pip = " ".join(instruction(stage, "RUN"))
        extra = re.search(r'pip install (?:--[\w-]+ )*"\.\[(\w+),distributed\]"', pip)
        assert extra and extra.group(1) == name, f"{name} installs the {name} extra"
        assert "marginface models fetch" in pip  # weights fetched and checked at build time
        health = instruction(stage, "HEALTHCHECK")[0]
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", health)
        assert url and url.group(2) in app_paths
        cmd = json.loads(instruction(stage, "CMD")[0])
        port = cmd[cmd.index("--port") + 1]
        assert url.group(1) == port == instruction(stage, "EXPOSE")[0]
        for key in env_of(stage):
            assert setting_exists(key), f"{name}: ENV {key} is not a setting"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {"onnxruntime-gpu", "faiss-gpu"} <= {re.split(r"[\[<>=]", d)[0] for d in extras["gpu"]}
    assert not {"onnxruntime", "faiss-cpu"} & {re.split(r"[\[<>=]", d)[0] for d in extras["gpu"]}


def test_compose_agrees_with_the_dockerfile_and_the_settings() -> None:
    services: dict[str, Any] = COMPOSE["services"]
    parsed = stages()
    assert set(services) == {"api", "api-gpu"} | DISTRIBUTED
    assert "gpu" in services["api-gpu"]["profiles"] and "profiles" not in services["api"]
    for name, svc in services.items():
        if name in DISTRIBUTED:
            continue
        target = svc["build"]["target"]
        assert target in parsed and (ROOT / svc["build"]["context"]).is_dir()
        stage_env = env_of(parsed[target])
        cmd = json.loads(instruction(parsed[target], "CMD")[0])
        container_port = cmd[cmd.index("--port") + 1]
        assert [p.rsplit(":", 1)[1] for p in svc["ports"]] == [container_port]
        for key in svc["environment"]:
            assert setting_exists(key), f"{name}: {key} is not a setting"
        env = {**stage_env, **{k: str(v) for k, v in svc["environment"].items()}}
        mounts = dict(v.split(":")[::-1] for v in svc["volumes"])  # container path -> volume
        assert set(mounts.values()) <= set(COMPOSE["volumes"])
        # every folder the service writes by default (face chips are kept by default) is on
        # the volume: the root file system is read-only, and a recreated container keeps them
        for path_key in WRITTEN_PATHS:
            assert any(env[path_key].startswith(m + "/") for m in mounts), path_key
        assert env["MARGINFACE_MODELS_DIR"] not in mounts  # the image's own registry
        assert svc["env_file"] == [".env"] and (ROOT / ".env.example").is_file()
        assert "runtime" not in svc
    devices = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert services["api-gpu"]["environment"]["MARGINFACE_DEVICE"] == "cuda"
    for key in dotenv(ROOT / ".env.example"):
        assert setting_exists(key), f".env.example: {key} is not a setting"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".venv" in ignored  # never bake keys or a venv into the image


def test_the_distributed_profile_wires_replicas_to_postgres_milvus_and_the_proxy() -> None:
    """Every service of the profile is in it (a plain `up` starts none of them); the replicas
    run the image's serve command against the compose PostgreSQL and Milvus, after the schema
    upgrade; nginx sends to the replicas' port; images are pinned; volumes declared."""
    services: dict[str, Any] = COMPOSE["services"]
    for name in DISTRIBUTED:
        assert services[name]["profiles"] == ["distributed"], name
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        for volume in services[name].get("volumes", []):
            source = volume.split(":")[0]
            assert source in COMPOSE["volumes"] or (ROOT / source).exists(), volume
        for dep in services[name].get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
    replica, upgrade = services["api-replica"], services["db-upgrade"]
    parser = build_parser()
    assert parser.parse_args(replica["command"][1:]).func.__name__ == "cmd_serve"
    assert parser.parse_args(upgrade["command"][1:]).func.__name__ == "cmd_db_upgrade"
    assert replica["depends_on"]["db-upgrade"]["condition"] == "service_completed_successfully"
    assert replica["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert "ports" not in replica  # only through the proxy
    env = {k: str(v) for k, v in replica["environment"].items()}
    for key in env:
        assert setting_exists(key), key
    # the replicas' face chips: one folder every replica shares (a replica's erasure and start-up
    # sweep must see the chips the others wrote), on a volume (the root file system is read-only)
    mounts = dict(v.split(":")[::-1] for v in replica["volumes"])
    assert mounts[env["MARGINFACE_PRIVACY__IMAGES_DIR"]] in COMPOSE["volumes"]
    settings = Settings(
        gallery={  # type: ignore[arg-type]
            "backend": env["MARGINFACE_GALLERY__BACKEND"],
            "postgres_dsn": env["MARGINFACE_GALLERY__POSTGRES_DSN"],
            "milvus_uri": env["MARGINFACE_GALLERY__MILVUS_URI"],
        }
    )
    assert settings.gallery.backend == "distributed"
    dsn = re.match(
        r"postgresql://(\w+):\$\{POSTGRES_PASSWORD[^}]*\}@(\w+):5432/(\w+)$",
        env["MARGINFACE_GALLERY__POSTGRES_DSN"],
    )
    pg = services["postgres"]["environment"]
    assert dsn and (dsn.group(1), dsn.group(3)) == (pg["POSTGRES_USER"], pg["POSTGRES_DB"])
    assert dsn.group(2) in services
    milvus = re.match(r"http://(\w+):19530$", settings.gallery.milvus_uri)
    assert (
        milvus
        and milvus.group(1) == "milvus"
        and services["milvus"]["depends_on"].keys()
        == {
            "etcd",
            "minio",
        }
    )
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    upstream = re.search(r"set \$api http://([\w-]+):(\d+);", nginx)
    assert upstream and upstream.group(1) == "api-replica"
    assert replica["command"][replica["command"].index("--port") + 1] == upstream.group(2)
    listen = re.search(r"listen (\d+);", nginx)
    assert listen and services["proxy"]["ports"][0].rsplit(":", 1)[1] == listen.group(1)
    body = re.search(r"client_max_body_size (\d+)m;", nginx)
    assert body and int(body.group(1)) * 1024 * 1024 == Settings().limits.max_request_bytes
    assert "POSTGRES_PASSWORD" in dotenv(ROOT / ".env.example")


@pytest.mark.slow
def test_the_container_start_command_serves_outside_docker(tmp_path: Path) -> None:
    """The CPU image's CMD and HEALTHCHECK, run here with the image's and compose's environment
    (paths moved under tmp_path, since /data is the container's)."""
    stage = stages()["cpu"]
    cmd = json.loads(instruction(stage, "CMD")[0])
    assert build_parser().parse_args(cmd[1:]).func.__name__ == "cmd_serve"
    port = str(free_port())
    cmd = [sys.executable, "-m", "service.cli", *cmd[1:]]
    cmd[cmd.index("--port") + 1] = port
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    env = {
        **os.environ,
        **env_of(stage),
        **{k: str(v) for k, v in COMPOSE["services"]["api"]["environment"].items()},
        **dotenv(ROOT / ".env.example"),
        "MARGINFACE_MODELS_DIR": str(ROOT / "models"),
        "MARGINFACE_GALLERY__PATH": str(tmp_path / "data/gallery"),
        "MARGINFACE_JOBS__WORK_DIR": str(tmp_path / "data/jobs"),
        "MARGINFACE_PRIVACY__IMAGES_DIR": str(tmp_path / "data/images"),
    }
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=log_file)
    health = json.loads(instruction(stage, "HEALTHCHECK")[0].split("CMD", 1)[1])
    health = [sys.executable if h == "python" else h.replace(":8000/", f":{port}/") for h in health]
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(health, capture_output=True).returncode != 0:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.5)
        key = json.loads(dotenv(ROOT / ".env.example")["MARGINFACE_AUTH__API_KEYS"])[0]
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()
        assert ready["recognizer"]["providers"] == ["CPUExecutionProvider"]
        r = httpx.get(f"http://127.0.0.1:{port}/v1/subjects", headers={"X-API-Key": key})
        assert r.status_code == 200
        assert (tmp_path / "data/gallery/gallery.sqlite3").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the logs are JSON lines, as the image's default says
    lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith("{")]
    assert lines and all("level" in json.loads(ln) for ln in lines)


_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?message}, ${VAR?message}, $$; applied to the whole file before profiles are
    looked at, as compose does. Raises ValueError where compose refuses."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("plain"):
            return env.get(m.group("plain"), "")
        body = m.group("braced")
        name, op, arg = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?]?)(.*)", body, re.S).groups()  # type: ignore[union-attr]
        value = env.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("?") and unset:
            raise ValueError(f"required variable {name} is missing a value: {arg}")
        if op.endswith("-") and unset:
            return arg
        return value or ""

    return _VARIABLE.sub(one, text)


def test_a_plain_up_works_with_the_env_serve_sh_writes() -> None:
    """Was: ${POSTGRES_PASSWORD:?...} made even `docker compose up -d` fail for a user whose
    .env came from serve.sh (compose interpolates every profile's services)."""
    config = yaml.safe_load(interpolate(COMPOSE_TEXT, SERVE_SH_ENV))
    assert "api" in config["services"]


def test_no_two_services_publish_the_same_host_port() -> None:
    """Was: api and api-gpu both bound host port 8000 (`--profile gpu up` clashed)."""
    for env in (SERVE_SH_ENV, dotenv(ROOT / ".env.example")):
        config = yaml.safe_load(interpolate(COMPOSE_TEXT, env))
        published = [
            p.rsplit(":", 1)[0] for svc in config["services"].values() for p in svc.get("ports", [])
        ]
        assert len(published) == len(set(published)), published


def test_an_image_upgrade_brings_its_models() -> None:
    """Was: the models folder was a named volume, seeded from the first image only; after an
    upgrade the old models and manifests stayed."""
    config = yaml.safe_load(interpolate(COMPOSE_TEXT, SERVE_SH_ENV))
    named = set(config.get("volumes") or {})
    for name, svc in config["services"].items():
        models_dir = (svc.get("environment") or {}).get("MARGINFACE_MODELS_DIR")
        if models_dir is None:
            continue
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert not (source in named and target == models_dir), f"{name}: {volume}"


def test_no_two_embedded_servers_share_a_gallery_volume() -> None:
    """Was (issue 32, finding 5): api and api-gpu mounted the same named volume, so
    `--profile gpu up` ran two embedded servers on one SQLite store and FAISS index file, each
    with its own in-memory index that never saw the other's writes."""
    config = yaml.safe_load(interpolate(COMPOSE_TEXT, SERVE_SH_ENV))
    owners: dict[str, str] = {}
    for name, svc in config["services"].items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        if env.get("MARGINFACE_GALLERY__BACKEND", "embedded") != "embedded":
            continue
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source in (config.get("volumes") or {}):
                assert source not in owners, f"{name} and {owners[source]} share {source}"
                owners[source] = name


def test_the_image_healthcheck_asks_readiness() -> None:
    """Was (issue 32, finding 6): the HEALTHCHECK polled /healthz (the process answers), so a
    container whose models or gallery were not usable was reported healthy, and compose's
    `service_healthy` meant nothing more than "started"."""
    for name, stage in stages().items():
        health = instruction(stage, "HEALTHCHECK")[0]
        assert re.search(r"http://127\.0\.0\.1:\d+/readyz'", health), name


def test_the_host_network_overrides_run_the_image_healthcheck() -> None:
    """deploy/compose.hostnet.yml (daemons without a bridge: the dev and CI machines) moves the
    API's port, so it repeats the image's HEALTHCHECK with that port and nothing else."""
    image = json.loads(instruction(stages()["cpu"], "HEALTHCHECK")[0].split("CMD", 1)[1])
    hostnet = yaml.safe_load((ROOT / "deploy" / "compose.hostnet.yml").read_text())
    api = hostnet["services"]["api"]
    port = "${MARGINFACE_PORT:-8000}"
    assert api["command"][api["command"].index("--port") + 1] == port
    assert api["healthcheck"]["test"] == ["CMD", *(h.replace(":8000/", f":{port}/") for h in image)]


def test_one_service_of_the_distributed_profile_builds_the_image() -> None:
    """Was (issue 32, finding 6): api-replica and db-upgrade both had a `build` of the same tag,
    so `--profile distributed up` built marginface:cpu twice at once (and once per replica)."""
    services: dict[str, Any] = COMPOSE["services"]
    builders: dict[str, list[str]] = {}
    for name in DISTRIBUTED:
        if "build" in services[name]:
            builders.setdefault(services[name]["image"], []).append(name)
    assert all(len(names) == 1 for names in builders.values()), builders
    assert builders.get("marginface:cpu") == ["db-upgrade"]
    replica = services["api-replica"]
    assert replica["image"] == "marginface:cpu" and "db-upgrade" in replica["depends_on"]


def test_db_upgrade_stops_at_once_without_postgres_password(tmp_path: Path) -> None:
    """Was (issue 32, finding 6): with the .env serve.sh writes, PostgreSQL refused to initialise
    and restarted forever, and `up` failed minutes later with "dependency failed to start".
    db-upgrade's entrypoint now says why at once, before waiting for PostgreSQL (scripts/
    test_docker.sh runs the whole profile that way)."""
    upgrade = COMPOSE["services"]["db-upgrade"]
    script = upgrade["entrypoint"][-1]
    mounts = dict(v.split(":")[:2][::-1] for v in upgrade["volumes"])
    source = ROOT / mounts[script]
    assert "postgres" in upgrade["depends_on"]  # started, not healthy: it never is without one
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    proc = subprocess.run(["sh", str(source), "true"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "POSTGRES_PASSWORD is not set" in proc.stderr
