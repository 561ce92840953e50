"""Bulk indexing throughput: `marginface index` on a folder tree (default: all 13,233 LFW
images) as a user runs it, with its wall time, CPU time (itself and its workers), peak memory of
the whole process tree, and a stage breakdown measured in-process on a sample (one thread) that
shows where the ceiling is: cores x 1000 / (CPU ms per image).

Usage: python bench/index_throughput.py [--root ../shared/data/lfw/images] [--processes 2]
       [--sample 300]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = defaultdict(list)
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        p = int(entry.name)
        children[int(fields.get("PPid", "0").strip())].append(p)
        rss[p] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def run_index(root: Path, processes: int, gallery: Path) -> dict[str, object]:
    cmd = [sys.executable, "-m", "service.cli", "index", str(root), "--gallery", str(gallery),
           "--processes", str(processes), "--json", "--no-progress",
           "--report", str(gallery.parent / "report.json")]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_kb(proc.pid))
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    stop.set()
    watcher.join()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads(out)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "command": " ".join(cmd[1:]),
        "images": summary["total"],
        "enrolled": summary["enrolled"],
        "outcomes": {k: v for k, v in summary.items() if isinstance(v, int) and v},
        "wall_s": round(wall, 1),
        "images_per_s": round(summary["total"] / wall, 1),
        "indexing_images_per_s": summary["images_per_s"],
        "cpu_s": round(cpu, 1),
        "cpu_ms_per_image": round(1000 * cpu / max(1, summary["total"]), 1),
        "peak_rss_mb": round(peak / 1024, 1),
    }


def stage_breakdown(root: Path, sample: int) -> dict[str, object]:
    """Per-stage CPU ms per image, one thread, in this process."""
    from service.errors import MarginFaceError
    from service.recognition import build_pipeline
    from service.settings import Settings
    from service.vision.image import decode_image

    photos = sorted(root.glob("*/*.jpg"))[:: max(1, len(list(root.glob("*/*.jpg"))) // sample)]
    photos = photos[:sample]
    pipeline = build_pipeline(Settings(device="cpu", intra_op_threads=1), batching=False)
    times: dict[str, list[float]] = defaultdict(list)
    pipeline.observe = lambda stage, s: times[stage].append(s)
    totals, walls = [], []
    for path in photos:
        data = path.read_bytes()
        t0 = time.process_time()
        d0 = time.perf_counter()
        image = decode_image(data)
        times["decode"].append(time.perf_counter() - d0)
        with contextlib.suppress(MarginFaceError):  # a photo without a face costs its stages
            pipeline.choose_face(image)
        totals.append(time.process_time() - t0)
        walls.append(time.perf_counter() - d0)
    # stage times are wall times (the pipeline's observer); the rest of the wall time is the
    # quality measurement, the validity check and Python around them
    per_image = {k: round(1000 * sum(v) / len(photos), 2) for k, v in times.items()}
    wall_ms = 1000 * statistics.fmean(walls)
    per_image["other (quality, validity, Python)"] = round(wall_ms - sum(per_image.values()), 2)
    cpu_ms = 1000 * statistics.fmean(totals)
    cores = os.cpu_count() or 1
    return {
        "sample": len(photos),
        "ms_per_image_by_stage": per_image,
        "wall_ms_per_image": round(wall_ms, 2),
        "cpu_ms_per_image": round(cpu_ms, 2),
        "ceiling_images_per_s": round(cores * 1000 / cpu_ms, 1),
        "cores": cores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "lfw" / "images"))
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sample", type=int, default=300)
    args = parser.parse_args()
    root = Path(args.root)
    report: dict[str, object] = {"stages": stage_breakdown(root, args.sample)}
    with tempfile.TemporaryDirectory() as tmp:
        report["index"] = run_index(root, args.processes, Path(tmp) / "gallery")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
