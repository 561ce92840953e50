"""bench/gpu_check.py's CPU mode: the GPU check runs end to end before a GPU is lent for it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_the_gpu_check_runs_every_section_on_the_cpu_and_prints_each_figure() -> None:
    """Was: check_faiss called FaissIndex.rebuild with one argument too many (a TypeError on
    any machine), after the ONNX figures had been measured but not yet printed."""
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]  # each line is JSON
    errors = [line for line in lines if "error" in line]
    assert proc.returncode == 0 and not errors, (errors, proc.stderr[-3000:])
    by_section: dict[str, list[dict]] = {}
    for line in lines:
        by_section.setdefault(line["section"], []).append(line)
    embed = [f for f in by_section["onnxruntime"] if f.get("figure") == "embed_faces_per_s"]
    assert [f["batch"] for f in embed] == [1, 32, 256] and all(f["value"] > 0 for f in embed)
    points = {(p["mode"], p["clients"]) for p in by_section["batching"] if "mode" in p}
    assert points == {(m, n) for m in ("batching_off", "batching_on") for n in (1, 4)}
    assert all(p["errors"] == 0 for p in by_section["batching"] if "mode" in p)
    faiss = [f for f in by_section["faiss"] if f.get("device") == "cpu"]
    assert faiss and faiss[0]["top1_found"] == 1.0
    gpu = [f for f in by_section["faiss"] if f.get("device") == "gpu"]
    assert gpu and "missing" in gpu[0]  # said, not silently left out
    assert lines[-1] == {"section": "done", "failed_sections": 0}
