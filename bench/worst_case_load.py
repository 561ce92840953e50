"""Worst-case load (issue 25): 64 uploads that cost the most to decode stay in flight against a
real `marginface serve` while another key sends small identify requests. Reports the server's
peak RSS (its process tree, sampled every 0.1 s, and its own VmHWM), its CPU seconds, and the
p50/p99 latency and answers of the keyed requests. Prints JSON.

The uploads, each within every byte and pixel limit, sent over and over: 36-megapixel flat TIFFs
(RGB, RGBA, float), 36 MP grey PNGs, 36 MP progressive JPEGs at the 64-scan bound, and the
finding's 5,000-scan JPEG bomb. They come from two attacker keys (one key may hold only half the
in-flight slots by default), with ``limits.max_inflight_requests`` at 72 so that 64 fit and the
probe key keeps a few.

Usage: nice -n 10 python bench/worst_case_load.py [--seconds 60] [--uploads 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reliability import decode_bombs as bombs  # noqa: E402
from tests.test_server import free_port, server  # noqa: E402

ATTACKER_KEYS = ["attacker-key-0123456789-a", "attacker-key-0123456789-b"]
PROBE_KEY = "probe-key-0123456789"
GLINT = ROOT.parent / "shared" / "data" / "glint24_aligned"


def uploads() -> dict[str, tuple[str, bytes]]:
    """The worst cases, by name: (file name, bytes)."""
    grey = Image.new("L", (6000, 6000), 128)
    return {
        "tiff_rgb_36mp": ("a.tif", bombs.flat_tiff()),
        "tiff_rgba_36mp": ("a.tif", bombs.flat_tiff(mode="RGBA")),
        "tiff_float_36mp": (
            "a.tif",
            bombs.encode(grey.convert("F"), "TIFF", compression="tiff_deflate"),
        ),
        "png_grey_36mp": ("a.png", bombs.encode(grey, "PNG")),
        "jpeg_64_scans_36mp": ("a.jpg", bombs.progressive_jpeg_bomb(64)),
        "jpeg_5000_scans_36mp": ("a.jpg", bombs.progressive_jpeg_bomb(5000)),
    }


def tree_rss_kb(pid: int) -> int:
    """Resident KiB of a process and its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--uploads", type=int, default=64, help="worst-case uploads in flight")
    args = parser.parse_args()
    cases = uploads()
    names = sorted(cases)
    env = {
        "MARGINFACE_AUTH__API_KEYS": json.dumps([*ATTACKER_KEYS, PROBE_KEY]),
        "MARGINFACE_LIMITS__MAX_INFLIGHT_REQUESTS": str(args.uploads + 8),
    }
    probe_path = sorted((GLINT / sorted(p.name for p in GLINT.iterdir())[0]).glob("*.jpg"))[0]
    probe = probe_path.read_bytes()
    answers: Counter[str] = Counter()
    probes: list[tuple[int, float]] = []
    stop = threading.Event()
    lock = threading.Lock()

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with server(Path(tmp) / "gallery", port, env) as proc:

            def attack(i: int) -> None:
                name = names[i % len(names)]
                filename, data = cases[name]
                headers = {"X-API-Key": ATTACKER_KEYS[i % len(ATTACKER_KEYS)]}
                with httpx.Client(base_url=base, headers=headers, timeout=150) as c:
                    while not stop.is_set():
                        try:
                            r = c.post("/v1/identify", files={"image": (filename, data)})
                            code = f"{r.status_code} {r.json().get('error', {}).get('code', '')}"
                        except (httpx.HTTPError, ValueError) as exc:
                            code = type(exc).__name__
                        with lock:
                            answers[f"{name}: {code.strip()}"] += 1

            def keyed() -> None:
                with httpx.Client(
                    base_url=base, headers={"X-API-Key": PROBE_KEY}, timeout=150
                ) as c:
                    while not stop.is_set():
                        started = time.perf_counter()
                        try:
                            status = c.post(
                                "/v1/identify",
                                files={"image": (probe_path.name, probe, "image/jpeg")},
                                data={"aligned": "true"},
                            ).status_code
                        except httpx.HTTPError:
                            status = 0
                        probes.append((status, time.perf_counter() - started))
                        stop.wait(0.2)

            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM from here
            settled_kb = tree_rss_kb(proc.pid)
            cpu_before = cpu_s(proc.pid)
            threads = [threading.Thread(target=attack, args=(i,)) for i in range(args.uploads)]
            threads.append(threading.Thread(target=keyed))
            started = time.monotonic()
            for t in threads:
                t.start()
            peak_kb = settled_kb
            while time.monotonic() - started < args.seconds:
                peak_kb = max(peak_kb, tree_rss_kb(proc.pid))
                time.sleep(0.1)
            stop.set()
            for t in threads:
                t.join(timeout=180)
            wall = time.monotonic() - started
            hwm_kb = status_kb(proc.pid, "VmHWM")
            cpu = cpu_s(proc.pid) - cpu_before
            after_kb = tree_rss_kb(proc.pid)

    latencies = sorted(s for _, s in probes)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    report = {
        "command": "nice -n 10 python bench/worst_case_load.py " + " ".join(sys.argv[1:]),
        "uploads_in_flight": args.uploads,
        "upload_bytes": {name: len(cases[name][1]) for name in names},
        "seconds": round(wall, 1),
        "server_cpu_s": round(cpu, 1),
        "rss_settled_mb": round(settled_kb / 1024),
        "rss_peak_tree_mb": round(peak_kb / 1024),
        "vmhwm_mb": round(hwm_kb / 1024),
        "rss_after_mb": round(after_kb / 1024),
        "upload_answers": dict(sorted(answers.items())),
        "keyed_requests": len(probes),
        "keyed_answers": dict(Counter(str(s) for s, _ in probes)),
        "keyed_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "keyed_p99_ms": round(quantiles[98] * 1000, 1) if latencies else None,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
