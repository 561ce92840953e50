"""Identify latency while ``marginface gallery migrate-model`` re-embeds the gallery beside a
running service, and the downtime of the switch (issue 26, acceptance 2).

A real ``marginface serve`` (SFace, embedded gallery, kept photos on so that a migration has
something to re-embed from) is filled through its REST API with ``--faces`` LFW people, one
photo each; another photo of each is held back. One closed-loop client then identifies held-back
photos, first with the gallery idle, then while ``migrate-model --to sface-2021dec-int8
--no-switch`` runs beside it as a separate process (the way an operator runs it): p50/p90 of
each phase, with the server process's CPU seconds beside the wall seconds, and the migration's
own wall, CPU seconds (its rusage) and faces/s. A few more people are enrolled after it, then
the server is stopped, the switch (``migrate-model --to sface-2021dec-int8``, which re-embeds
only those) runs and the server is started again: the downtime is stop -> ready. The restarted
service must answer with the new model (``model_id`` of /v1/identify) and the held-back photos
must still find their people (rank-1, beside the rate before the migration).

The running service does not swap models in process: the switch needs it stopped, hence the
downtime figure. Prints one JSON object (also written to ``--out``).

Usage: nice -n 10 python bench/migration_latency.py [--faces 400] [--probes 100] [--late 20]
    [--out runs/migration_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from tests.test_server import free_port, serve_command  # noqa: E402

KEY = "migration-bench-key-0123456789"
TARGET = "sface-2021dec-int8"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Person:
    """An LFW person: a subject id, a photo to enroll and another held back to identify."""

    subject_id: str
    enroll: bytes
    probe: bytes


def lfw_people(count: int) -> list[Person]:
    """The first ``count`` LFW people (sorted) with at least two photos."""
    people = []
    for folder in sorted((DATA / "lfw/images").iterdir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= 2:
            people.append(Person(folder.name, photos[0].read_bytes(), photos[1].read_bytes()))
        if len(people) == count:
            break
    return people


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment(tmp: Path) -> dict[str, str]:
    """What the server and the CLI share: the gallery, kept photos, the repository's models."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MARGINFACE_MODELS_DIR": str(ROOT / "models"),
        "MARGINFACE_DEVICE": "cpu",
        "MARGINFACE_GALLERY__PATH": str(tmp / "gallery"),
        "MARGINFACE_PRIVACY__KEEP_IMAGES": "true",
        "MARGINFACE_PRIVACY__IMAGES_DIR": str(tmp / "images"),
        "MARGINFACE_AUTH__API_KEYS": json.dumps([KEY]),
        "MARGINFACE_LOG_LEVEL": "WARNING",
    }


class Server:
    """A ``marginface serve`` process on loopback, started and stopped as an operator would."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp, self.port = tmp, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / f"server-{port}.log"

    def start(self) -> float:
        """Start it and wait for /readyz; the seconds that took."""
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                serve_command(self.port, self.tmp / "gallery"),
                env=environment(self.tmp),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = started + 300
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
                if r.status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> float:
        """SIGTERM, wait for the exit (the gallery saved and released); the seconds that took."""
        started = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=120)
        self.proc = None
        return time.monotonic() - started

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"X-API-Key": KEY}, timeout=300
        )


def enroll(c: httpx.Client, people: list[Person]) -> list[Person]:
    """A subject per person with its enroll photo; the people whose photo was enrolled."""
    kept = []
    for p in people:
        r = c.post("/v1/subjects", json={"id": p.subject_id, "name": p.subject_id})
        assert r.status_code == 201, r.text
        files = [("files", ("p.jpg", p.enroll, "image/jpeg"))]
        if c.post(f"/v1/subjects/{p.subject_id}/faces", files=files).status_code == 201:
            kept.append(p)
    return kept


def central_face(answer: dict[str, Any]) -> dict[str, Any] | None:
    """The identified face nearest the frame's centre (LFW's labelled person is the central
    face of a 250x250 frame)."""

    def off_centre(face: dict[str, Any]) -> float:
        x1, y1, x2, y2 = face["detection"]["box"]
        return float((x1 + x2 - 250) ** 2 + (y1 + y2 - 250) ** 2)

    faces: list[dict[str, Any]] = answer["faces"]
    return min(faces, key=off_centre) if faces else None


class Identifier:
    """One closed-loop client identifying held-back photos in turn, recording each latency."""

    def __init__(self, server: Server, probes: list[Person]) -> None:
        self.server, self.probes = server, probes
        self.latencies: list[float] = []
        self.correct = 0
        #: probe's person -> the decision and who it was taken for
        self.misses: dict[str, str] = {}
        self.thresholds: set[float] = set()
        self.errors = 0
        self.model_ids: set[str] = set()

    def one(self, c: httpx.Client, n: int) -> None:
        p = self.probes[n % len(self.probes)]
        t0 = time.perf_counter()
        r = c.post("/v1/identify", files={"image": ("p.jpg", p.probe, "image/jpeg")})
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            self.errors += 1
            return
        self.latencies.append(dt)
        answer = r.json()
        self.model_ids.add(str(answer["model_id"]))
        self.thresholds.add(float(answer["threshold"]["value"]))
        face = central_face(answer)
        match = face["match"]["subject_id"] if face and face["match"] else None
        if match == p.subject_id:
            self.correct += 1
        else:
            self.misses[p.subject_id] = f"{face['decision'] if face else 'no face'}: {match}"

    def run(self, requests: int | None = None, until: threading.Event | None = None) -> None:
        """``requests`` identifies, or as many as fit until ``until`` is set."""
        with self.server.client() as c:
            n = 0
            while (requests is None or n < requests) and not (until and until.is_set()):
                self.one(c, n)
                n += 1


def figures(ident: Identifier, wall: float, server_cpu: float) -> dict[str, Any]:
    """A phase's latency percentiles and the server's CPU beside the wall time."""
    lat = np.asarray(ident.latencies) * 1000
    ok = len(lat)
    return {
        "requests": ok,
        "errors": ident.errors,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if ok else None,
        "p90_ms": round(float(np.percentile(lat, 90)), 1) if ok else None,
        "mean_ms": round(float(lat.mean()), 1) if ok else None,
        "wall_s": round(wall, 1),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_ms_per_request": round(1000 * server_cpu / ok, 1) if ok else None,
        "rank1_correct": ident.correct,
        "rank1_misses": ident.misses,
        "model_ids": sorted(ident.model_ids),
        "thresholds": sorted(ident.thresholds),
    }


def identify_phase(server: Server, probes: list[Person], rounds: int = 1) -> dict[str, Any]:
    """Every probe ``rounds`` times, the gallery idle (rank-1 counts every answer)."""
    ident = Identifier(server, probes)
    cpu0, t0, load0 = proc_cpu_s(server.pid), time.monotonic(), load()
    ident.run(requests=rounds * len(probes))
    out = figures(ident, time.monotonic() - t0, proc_cpu_s(server.pid) - cpu0)
    return {**out, "load_before": load0, "load_after": load()}


def migrate(tmp: Path, *args: str) -> subprocess.Popen[str]:
    """``marginface gallery migrate-model --to TARGET ARGS --json`` as a separate process."""
    cmd = [sys.executable, "-m", "service.cli", "gallery", "migrate-model", "--to", TARGET]
    return subprocess.Popen(
        [*cmd, *args, "--json"],
        env=environment(tmp),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], started: float) -> dict[str, Any]:
    """Wait for a migrate-model process: its JSON report, wall and CPU seconds (its rusage)."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()  # small: --json, no progress bar
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"migrate-model failed ({proc.returncode}): {err[-3000:]}")
    report: dict[str, Any] = json.loads(out)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "report": report,
    }


def migration_phase(tmp: Path, server: Server, probes: list[Person]) -> dict[str, Any]:
    """Re-embed beside the running server (``--no-switch``) while one client identifies."""
    done = threading.Event()
    ident = Identifier(server, probes)
    client = threading.Thread(target=ident.run, kwargs={"until": done})
    cpu0, load0, t0 = proc_cpu_s(server.pid), load(), time.monotonic()
    proc = migrate(tmp, "--no-switch")
    client.start()
    try:
        moved = finish(proc, t0)
    finally:
        done.set()
        client.join()
    wall = time.monotonic() - t0
    server_cpu = proc_cpu_s(server.pid) - cpu0
    report = moved["report"]
    embedded = int(report["embedded"])
    return {
        "identify": {
            **figures(ident, wall, server_cpu),
            "load_before": load0,
            "load_after": load(),
        },
        "migration": {
            "wall_s": moved["wall_s"],
            "cpu_s": moved["cpu_s"],
            "embedded": embedded,
            "failed": report["failed"],
            "faces_per_s": round(embedded / moved["wall_s"], 2),
            "re_embedding_s": report["seconds"],  # stage_all alone, without start-up
            "faces_per_s_re_embedding": round(embedded / report["seconds"], 2)
            if report["seconds"]
            else None,
        },
    }


def switch_phase(tmp: Path, server: Server) -> dict[str, Any]:
    """Stop the server, switch (re-embedding what was enrolled since), start it again."""
    load0, stopped_at = load(), time.monotonic()
    stop_s = server.stop()
    t0 = time.monotonic()
    moved = finish(migrate(tmp), t0)
    start_s = server.start()
    report = moved["report"]
    return {
        "downtime_s": round(time.monotonic() - stopped_at, 1),
        "stop_s": round(stop_s, 1),
        "switch_wall_s": moved["wall_s"],
        "switch_cpu_s": moved["cpu_s"],
        "start_to_ready_s": round(start_s, 1),
        "embedded_at_switch": report["embedded"],
        "switched": report["switched"],
        "failed": report["failed"],
        "load_before": load0,
        "load_after": load(),
    }


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures docs/benchmarks.md quotes."""
    idle, during = report["idle"], report["during_migration"]
    after, switch = report["after_switch"], report["switch"]
    late = report["after_switch_late"]
    return {
        "p50_ms_idle": idle["p50_ms"],
        "p50_ms_during_migration": during["identify"]["p50_ms"],
        "p50_ms_after_switch": after["p50_ms"],
        "p90_ms_idle": idle["p90_ms"],
        "p90_ms_during_migration": during["identify"]["p90_ms"],
        "migration_wall_s": during["migration"]["wall_s"],
        "migration_cpu_s": during["migration"]["cpu_s"],
        "migration_faces_per_s": during["migration"]["faces_per_s"],
        "downtime_s": switch["downtime_s"],
        "rank1_before": f"{idle['rank1_correct']}/{idle['requests']}",
        "rank1_after_switch": f"{after['rank1_correct']}/{after['requests']}",
        "rank1_late_after_switch": f"{late['rank1_correct']}/{late['requests']}" if late else None,
        "model_after_switch": after["model_ids"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=400, help="LFW people enrolled, one photo")
    parser.add_argument("--probes", type=int, default=100, help="held-back photos identified")
    parser.add_argument("--late", type=int, default=20, help="people enrolled after re-embedding")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--workdir", type=Path, help="keep the gallery and photos here (default: a temporary one)"
    )
    args = parser.parse_args()
    people = lfw_people(args.faces + args.late)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "nice": os.nice(0),
            "load_before": load(),
        },
        "from": "sface-2021dec",
        "to": TARGET,
        "requests": "POST /v1/identify, one closed-loop client, LFW 250x250 photos of enrolled "
        "people not enrolled themselves",
    }
    with ExitStack() as stack:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=False)
            tmp = args.workdir.resolve()
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server = Server(tmp, free_port())
        try:
            report["first_start_s"] = round(server.start(), 1)
            t0 = time.monotonic()
            with server.client() as c:
                enrolled = enroll(c, people[: args.faces])
            report["enrolled"] = {"faces": len(enrolled), "wall_s": round(time.monotonic() - t0, 1)}
            step = max(1, len(enrolled) // args.probes)
            probes = enrolled[::step][: args.probes]
            report["probes"] = len(probes)
            Identifier(server, probes).run(requests=5)  # warm-up
            report["idle"] = identify_phase(server, probes, rounds=2)
            report["during_migration"] = migration_phase(tmp, server, probes)
            with server.client() as c:
                late = enroll(c, people[args.faces :])
            report["enrolled_after_re_embedding"] = len(late)
            report["switch"] = switch_phase(tmp, server)
            after = identify_phase(server, probes, rounds=2)  # as "idle", on the new model
            after["model_is_target"] = all(TARGET in m for m in after["model_ids"])
            report["after_switch"] = after
            # the people enrolled after re-embedding: embedded by the switch itself
            report["after_switch_late"] = identify_phase(server, late) if late else None
            report["summary"] = summary(report)
        finally:
            server.stop()
    report["load_after"] = load()
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
