"""Where one identify (or enroll) request spends its time, end to end in process: cProfile over
the whole ASGI call (middlewares, multipart parsing, decode with EXIF, detection, alignment,
embedding, quality and validity, search, JSON), each stage's cumulative time per request, and
the functions with the most time of their own. Prints JSON.

The app runs under TestClient with its worker-thread hop made inline (``anyio.to_thread`` runs
the function in the event loop's thread), so that one profiler in one thread sees the whole
request. One request at a time, the shipped defaults (one ONNX Runtime thread per call, no
micro-batching on a CPU). The profiler's clock is the process's CPU time by default (a loaded
machine's waiting is not counted; threads the request wakes, such as OpenMP's, are); ``--timer
wall`` counts wall time. ``--faiss-threads N`` sets FAISS's OpenMP threads in the thread that
searches (the gallery leaves FAISS's default: one per core).

Usage: python bench/request_profile.py [--requests 60] [--people 50] [--timer cpu|wall]
    [--faiss-threads N] [--route identify|enroll] [--dump profile.pstats]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service_throughput import commented, lfw_people  # noqa: E402
from service.app import create_app  # noqa: E402
from tests.conftest import API_KEY, make_settings  # noqa: E402

#: stages: (file suffix, function name) whose cumulative time is the stage's, per request
STAGES = {
    "multipart_parse": ("starlette/formparsers.py", "parse"),
    "decode_with_exif": ("service/vision/image.py", "decode_image"),
    "  of which exif_transpose": ("PIL/ImageOps.py", "exif_transpose"),
    "  of which decode_cost_check": ("service/vision/image_cost.py", "check_decode_cost"),
    "detect": ("service/vision/detection.py", "detect"),
    "  of which onnx_run": ("onnxruntime/capi/onnxruntime_inference_collection.py", "run"),
    "align": ("service/vision/alignment.py", "align_face"),
    "embed": ("service/vision/embedding.py", "embed_packed"),
    "quality": ("service/vision/quality.py", "assess"),
    "validity_second_detector": ("service/vision/pipeline.py", "score"),
    "search": ("service/gallery/gallery.py", "search"),
    "evidence_subject_embeddings": ("service/recognition.py", "_evidence"),
    "response_serialize": ("fastapi/routing.py", "serialize_response"),
    "response_render": ("starlette/responses.py", "render"),
}


async def inline(func: Callable[..., Any], *args: Any, **_: Any) -> Any:
    """anyio.to_thread.run_sync, run in the caller's thread (profiling only)."""
    return func(*args)


class Profiled:
    """ASGI wrapper: the profiler runs while an HTTP request is handled, when ``on``."""

    def __init__(self, app: Any, profiler: cProfile.Profile, faiss_threads: int = 0) -> None:
        self.app = app
        self.profiler = profiler
        self.faiss_threads = faiss_threads
        self.on = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.on:
            await self.app(scope, receive, send)
            return
        if self.faiss_threads:
            import faiss  # a bench's choice; the service's FAISS lives in service/gallery

            faiss.omp_set_num_threads(self.faiss_threads)  # per calling thread
        self.profiler.enable()
        try:
            await self.app(scope, receive, send)
        finally:
            self.profiler.disable()


def stage_ms(stats: pstats.Stats, requests: int) -> dict[str, float]:
    """Cumulative ms per request of each stage (a function called from itself counts once)."""
    out = {}
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for stage, (suffix, name) in STAGES.items():
        total = sum(
            cum
            for (path, _, func), (_, _, _, cum, _) in table.items()
            if func == name and path.endswith(suffix)
        )
        out[stage] = round(1000 * total / requests, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--timer", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--faiss-threads", type=int, default=0, help="0: FAISS's default")
    parser.add_argument("--route", choices=["identify", "enroll"], default="identify")
    parser.add_argument("--dump", type=Path, help="also write the raw profile here (pstats)")
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    anyio.to_thread.run_sync = inline  # type: ignore[assignment]
    people = lfw_people(args.people)
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    profiler = cProfile.Profile(clock)
    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings(Path(tmp), jobs={"work_dir": Path(tmp) / "jobs"})
        app = Profiled(create_app(settings), profiler, args.faiss_threads)
        with TestClient(app, headers={"X-API-Key": API_KEY}) as c:
            for p in people:
                c.post("/v1/subjects", json={"id": p.subject_id, "name": p.subject_id})
                files = [("files", ("p.jpg", p.enroll, "image/jpeg"))]
                c.post(f"/v1/subjects/{p.subject_id}/faces", files=files)
            for p in people[:5]:  # warm-up
                c.post("/v1/identify", files={"image": ("p.jpg", p.probe, "image/jpeg")})
            app.on = True
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            for i in range(args.requests):
                p = people[i % len(people)]
                if args.route == "identify":
                    files = {"image": ("p.jpg", p.probe, "image/jpeg")}
                    r = c.post("/v1/identify", files=files)
                else:  # the probe photo joins its person: a new face each time
                    enroll = [("files", ("p.jpg", commented(p.probe, str(i)), "image/jpeg"))]
                    r = c.post(f"/v1/subjects/{p.subject_id}/faces", files=enroll)
                assert r.status_code in (200, 201), r.text
            wall = time.perf_counter() - started
            usage1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = pstats.Stats(profiler)
    if args.dump:
        stats.dump_stats(args.dump)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    in_request = sum(tt for (_, _, tt, _, _) in table.values())
    own = sorted(
        ((tt, nc, f"{Path(path).name}:{line}:{func}") for (path, line, func), (_, nc, tt, _, _)
         in table.items()),
        reverse=True,
    )[:25]  # fmt: skip
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    report = {
        "requests": args.requests,
        "route": args.route,
        "gallery_people": len(people),
        "timer": args.timer,
        "faiss_threads": args.faiss_threads or "default",
        "load_before_after": os.getloadavg(),
        "wall_ms_per_request_profiled": round(1000 * wall / args.requests, 1),
        "cpu_ms_per_request_profiled": round(1000 * cpu / args.requests, 1),
        "profiled_ms_per_request": round(1000 * in_request / args.requests, 1),
        "stages_ms_per_request": stage_ms(stats, args.requests),
        "top_own_time": [
            {
                "function": name,
                "ms_per_request": round(1000 * tt / args.requests, 2),
                "calls_per_request": round(nc / args.requests, 1),
            }
            for tt, nc, name in own
        ],
    }
    print(json.dumps(report, indent=2))
    print(text.getvalue(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
