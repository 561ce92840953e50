"""Identify latency while a running service's gallery moves to another recognizer, both ways it
can (issue 26, acceptance 2).

A real ``marginface serve`` (SFace, embedded gallery, kept photos on so that a migration has
something to re-embed from) is filled through its REST API with ``--faces`` LFW people, one
photo each; another photo of each is held back. One closed-loop client identifies held-back
photos, first with the gallery idle (p50/p90, the server process's CPU seconds beside the wall
seconds), then through each migration:

- **in place** (``--mode in-place``): ``POST /v1/admin/model-migration {"to":
  "sface-2021dec-int8"}``; the server re-embeds in a thread of its own and then switches with
  new requests held at its gate. Reported: identify p50/p90/max while it re-embeds, the
  longest identify around the switch (the held moment) and the first answer of the new model,
  errors, the route's ``result`` (``held_s``, ``index_build_s``, ``switched``, ``failed``...),
  the migration's wall seconds and the server's CPU seconds over it. The migration runs inside
  the server, so its CPU cannot be told apart from the requests' by process: the bench gives an
  estimate (server CPU minus the requests at the idle phase's CPU per request). Then identify
  on the new model (``model_id``, held-back photos matched), a rollback through
  ``POST /v1/admin/model-migration/rollback`` measured the same way (it re-embeds nothing), and
  a purge of the kept embeddings, so that the gallery is where it started.
- **with a restart** (``--mode restart``, the CLI path for a stopped service): ``marginface
  gallery migrate-model --to sface-2021dec-int8 --no-switch`` runs beside the server as a
  separate process (the migration's own wall, CPU seconds from its rusage, faces/s); ``--late``
  more people are enrolled after it, then the server is stopped, the switch (``migrate-model
  --to sface-2021dec-int8``, which re-embeds only those) runs and the server is started again:
  the downtime is stop -> ready. The restarted service must answer with the new model and the
  held-back photos must still find their people.

``--mode both`` (the default) runs the in-place migration first, then the restart one, on the
same server and gallery, so that both sets of figures come from one run under the same load.
Prints one JSON object (also written to ``--out``).

Usage: nice -n 10 python bench/migration_latency.py [--mode both|in-place|restart]
    [--faces 400] [--probes 100] [--late 20] [--out runs/migration_latency.json]
"""

from __future__ import annotations

import argparse
import itertools
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
        self.error_codes: dict[str, int] = {}
        self.model_ids: set[str] = set()
        #: every request: (start, end) on time.monotonic(), the answer's model_id (None: error)
        self.timeline: list[tuple[float, float, str | None]] = []

    def one(self, c: httpx.Client, n: int) -> None:
        p = self.probes[n % len(self.probes)]
        t0 = time.monotonic()
        try:
            r = c.post("/v1/identify", files={"image": ("p.jpg", p.probe, "image/jpeg")})
            status = str(r.status_code)
        except httpx.TransportError as exc:
            r, status = None, type(exc).__name__
        t1 = time.monotonic()
        if r is None or r.status_code != 200:
            self.errors += 1
            self.error_codes[status] = self.error_codes.get(status, 0) + 1
            self.timeline.append((t0, t1, None))
            return
        self.latencies.append(t1 - t0)
        answer = r.json()
        self.model_ids.add(str(answer["model_id"]))
        self.timeline.append((t0, t1, str(answer["model_id"])))
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
        "error_codes": ident.error_codes,
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


BASE = "/v1/admin/model-migration"
#: how often the bench asks the route where the migration stands
POLL_S = 0.2
#: identify keeps running this long before a migration starts and after it switched
MARGIN_S = 2.0

Span = tuple[float, float, str | None]


def spans_figures(spans: list[Span]) -> dict[str, Any]:
    """p50/p90/max and errors of some requests of a timeline."""
    lat = np.asarray([b - a for a, b, m in spans if m is not None]) * 1000
    ok = len(lat)
    return {
        "requests": ok,
        "errors": sum(1 for *_, m in spans if m is None),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if ok else None,
        "p90_ms": round(float(np.percentile(lat, 90)), 1) if ok else None,
        "max_ms": round(float(lat.max()), 1) if ok else None,
    }


def follow(c: httpx.Client, until: float) -> tuple[dict[str, Any], dict[str, float]]:
    """Poll the route until the migration switched (or failed); its last status and when each
    state was first and last seen (time.monotonic())."""
    seen: dict[str, float] = {}
    while True:
        status: dict[str, Any] = c.get(BASE).json()
        now = time.monotonic()
        seen.setdefault(f"first_{status['state']}", now)
        seen[f"last_{status['state']}"] = now
        if status["state"] in ("switched", "failed", "staged", "stopped"):
            return status, seen
        if now > until:
            raise RuntimeError(f"the migration did not finish: {status}")
        time.sleep(POLL_S)


def route_migration(
    server: Server, probes: list[Person], path: str, body: dict[str, Any] | None, idle_cpu_ms: float
) -> dict[str, Any]:
    """Start a migration (or rollback) through the running server's route while one client
    identifies throughout, and follow it until it switched; identify before, while it
    re-embeds, around the switch and after, the route's result, wall and server CPU."""
    done = threading.Event()
    ident = Identifier(server, probes)
    client = threading.Thread(target=ident.run, kwargs={"until": done})
    client.start()
    try:
        time.sleep(MARGIN_S)
        with server.client() as c:
            load0, cpu0 = load(), proc_cpu_s(server.pid)
            t0 = time.monotonic()
            started = c.post(f"{BASE}{path}", json=body)
            assert started.status_code == 202, started.text
            status, seen = follow(c, until=t0 + 1800)
            t1 = seen.get("first_switched", time.monotonic())
            cpu1 = proc_cpu_s(server.pid)
            time.sleep(MARGIN_S)
    finally:
        done.set()
        client.join()
    if status["state"] != "switched":
        raise RuntimeError(f"the migration ended {status['state']}: {status}")
    old, new = status["previous_model"], status["gallery_model"]
    timeline = ident.timeline
    # the switch: from the last poll that still saw it embedding to the first that saw it switched
    embedding_until = seen.get("last_embedding", t0)
    before = [s for s in timeline if s[1] <= t0]
    re_embedding = [s for s in timeline if s[0] >= t0 and s[1] <= embedding_until]
    around = [s for s in timeline if s[1] > embedding_until and s[0] < t1]
    after = [s for s in timeline if s[0] >= t1]
    models = [m for *_, m in sorted(timeline) if m is not None]
    changes = sum(1 for a, b in itertools.pairwise(models) if a != b)
    first_new = next((s for s in sorted(timeline) if s[2] == new), None)
    during = [s for s in timeline if s[1] > t0 and s[0] < t1]
    server_cpu = cpu1 - cpu0
    return {
        "wall_s": round(t1 - t0, 1),  # POST to the first poll that saw it switched
        "server_wall_s": round(float(status["finished_at"]) - float(status["started_at"]), 1),
        "server_cpu_s": round(server_cpu, 2),
        "requests_meanwhile": len(during),
        "migration_cpu_s_estimate": round(server_cpu - len(during) * idle_cpu_ms / 1000, 2),
        "result": status["result"],
        "progress": status["progress"],
        "from_model": old,
        "to_model": new,
        "identify": {
            "before": spans_figures(before),
            "re_embedding": spans_figures(re_embedding),
            "around_switch": spans_figures(around),
            "after": spans_figures(after),
            "whole": spans_figures(timeline),
            "error_codes": ident.error_codes,
            "first_answer_of_new_model_ms": round(1000 * (first_new[1] - first_new[0]), 1)
            if first_new
            else None,
            "model_changes": changes,  # 1: changed once, never back
            "last_answer_model": models[-1] if models else None,
        },
        "switch_window_s": round(t1 - embedding_until, 2),
        "load_before": load0,
        "load_after": load(),
    }


def in_place_phase(server: Server, probes: list[Person], idle: dict[str, Any]) -> dict[str, Any]:
    """Migrate through the route, identify on the new model, roll back, identify on the old
    one, purge the kept embeddings (the gallery as it started, nothing staged)."""
    idle_cpu_ms = float(idle["server_cpu_ms_per_request"])
    out: dict[str, Any] = {
        "migration": route_migration(server, probes, "", {"to": TARGET}, idle_cpu_ms)
    }
    after = identify_phase(server, probes, rounds=2)
    after["model_is_target"] = all(TARGET in m for m in after["model_ids"])
    out["after_switch"] = after
    out["rollback"] = route_migration(server, probes, "/rollback", None, idle_cpu_ms)
    back = identify_phase(server, probes)
    back["model_is_source"] = back["model_ids"] == idle["model_ids"]
    out["after_rollback"] = back
    with server.client() as c:
        out["purged"] = c.post(f"{BASE}/purge").json()["purged"]
        assert c.get(BASE).json()["staged_models"] == {}
    return out


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures docs/benchmarks.md quotes."""
    idle = report["idle"]
    out: dict[str, Any] = {
        "p50_ms_idle": idle["p50_ms"],
        "p90_ms_idle": idle["p90_ms"],
        "idle_server_cpu_ms_per_request": idle["server_cpu_ms_per_request"],
        "rank1_before": f"{idle['rank1_correct']}/{idle['requests']}",
    }
    if "in_place" in report:
        ip = report["in_place"]
        mig, back, after = ip["migration"], ip["rollback"], ip["after_switch"]
        res = mig["result"]
        out["in_place"] = {
            "p50_ms_re_embedding": mig["identify"]["re_embedding"]["p50_ms"],
            "p90_ms_re_embedding": mig["identify"]["re_embedding"]["p90_ms"],
            "max_ms_re_embedding": mig["identify"]["re_embedding"]["max_ms"],
            "max_ms_around_switch": mig["identify"]["around_switch"]["max_ms"],
            "first_answer_of_new_model_ms": mig["identify"]["first_answer_of_new_model_ms"],
            "errors": mig["identify"]["whole"]["errors"] + back["identify"]["whole"]["errors"],
            "held_s": res["held_s"],
            "index_build_s": res["index_build_s"],
            "re_embedding_s": res["seconds"],
            "embedded": res["embedded"],
            "switched": res["switched"],
            "failed": res["failed"],
            "wall_s": mig["wall_s"],
            "server_cpu_s": mig["server_cpu_s"],
            "migration_cpu_s_estimate": mig["migration_cpu_s_estimate"],
            "faces_per_s": round(res["embedded"] / mig["wall_s"], 2),
            "p50_ms_after_switch": after["p50_ms"],
            "model_after_switch": after["model_ids"],
            "rank1_after_switch": f"{after['rank1_correct']}/{after['requests']}",
            "rollback_wall_s": back["wall_s"],
            "rollback_server_cpu_s": back["server_cpu_s"],
            "rollback_embedded": back["result"]["embedded"],
            "rollback_held_s": back["result"]["held_s"],
            "rollback_index_build_s": back["result"]["index_build_s"],
            "rollback_max_ms_around_switch": back["identify"]["around_switch"]["max_ms"],
            "model_after_rollback": ip["after_rollback"]["model_ids"],
            "rank1_after_rollback": f"{ip['after_rollback']['rank1_correct']}/"
            f"{ip['after_rollback']['requests']}",
        }
    if "restart" in report:
        rs = report["restart"]
        during, after, switch = rs["during_migration"], rs["after_switch"], rs["switch"]
        late = rs["after_switch_late"]
        out["restart"] = {
            "p50_ms_during_migration": during["identify"]["p50_ms"],
            "p90_ms_during_migration": during["identify"]["p90_ms"],
            "server_cpu_ms_per_request_during": during["identify"]["server_cpu_ms_per_request"],
            "migration_wall_s": during["migration"]["wall_s"],
            "migration_cpu_s": during["migration"]["cpu_s"],
            "migration_faces_per_s": during["migration"]["faces_per_s"],
            "downtime_s": switch["downtime_s"],
            "p50_ms_after_switch": after["p50_ms"],
            "rank1_after_switch": f"{after['rank1_correct']}/{after['requests']}",
            "rank1_late_after_switch": f"{late['rank1_correct']}/{late['requests']}"
            if late
            else None,
            "model_after_switch": after["model_ids"],
        }
    return out


def restart_phase(
    tmp: Path, server: Server, probes: list[Person], late_people: list[Person]
) -> dict[str, Any]:
    """The CLI path: re-embed beside the server, enroll late people, stop, switch, start."""
    out: dict[str, Any] = {"during_migration": migration_phase(tmp, server, probes)}
    with server.client() as c:
        late = enroll(c, late_people)
    out["enrolled_after_re_embedding"] = len(late)
    out["switch"] = switch_phase(tmp, server)
    after = identify_phase(server, probes, rounds=2)  # as "idle", on the new model
    after["model_is_target"] = all(TARGET in m for m in after["model_ids"])
    out["after_switch"] = after
    # the people enrolled after re-embedding: embedded by the switch itself
    out["after_switch_late"] = identify_phase(server, late) if late else None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode",
        choices=("both", "in-place", "restart"),
        default="both",
        help="in place through the route, the CLI with a restart, or both (in place first)",
    )
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
        "mode": args.mode,
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
            if args.mode in ("both", "in-place"):
                report["in_place"] = in_place_phase(server, probes, report["idle"])
            if args.mode in ("both", "restart"):
                report["restart"] = restart_phase(tmp, server, probes, people[args.faces :])
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
