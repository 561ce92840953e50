"""GPU self-check and figures: one JSON line per figure, printed as it is measured.

Run through scripts/gpu_check.sh on a machine with a GPU; with ``--cpu`` the same sections run
on the CPU at small sizes (tests/test_gpu_check.py runs that, so the check is known to work
before a GPU is lent for a few minutes). A section that fails prints an ``error`` line and the
next one runs; the exit status is 1 if any failed.

1. ``cuda_libraries``: the CUDA and cuDNN libraries onnxruntime-gpu loads, from the NVIDIA
   runtime wheels (``pip install 'onnxruntime-gpu[cuda,cudnn]'``); what is missing is named,
   with the package that ships it.
2. ``onnxruntime``: the service's start-up self-check on the device (both models on the CUDA
   execution provider, or the service refuses to start), embedding throughput (faces/s) at
   batch 1, 32 and 256, and the largest difference between device and CPU embeddings.
3. ``batching``: bench/batching_benchmark.py against a real `marginface serve` on the device,
   micro-batching off and on, at 1/4/16/64 clients (1 and 4 with ``--cpu``).
4. ``faiss``: exact search over 1M 128-d unit vectors (20k with ``--cpu``), CPU and faiss-gpu.
5. ``training``: IResNet-50 + ArcFace samples/s with AMP, when torch sees CUDA.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: what onnxruntime-gpu's CUDA execution provider loads (CUDA 12, cuDNN 9) -> the wheel with it
CUDA_LIBRARIES = {
    "libcudart.so.12": "nvidia-cuda-runtime-cu12",
    "libcublas.so.12": "nvidia-cublas-cu12",
    "libcublasLt.so.12": "nvidia-cublas-cu12",
    "libcurand.so.10": "nvidia-curand-cu12",
    "libcufft.so.11": "nvidia-cufft-cu12",
    "libcudnn.so.9": "nvidia-cudnn-cu12",
}


def emit(section: str, **fields: Any) -> None:
    """One JSON line, flushed at once: a later crash loses nothing already measured."""
    print(json.dumps({"section": section, **fields}), flush=True)


def crops_from(folder: Path | None, n: int, size: int) -> np.ndarray:
    """``n`` aligned crops (real faces from ``folder`` when given, else noise)."""
    from service.vision.image import decode_image

    if folder is not None and folder.is_dir():
        files = sorted(folder.rglob("*.jpg"))[:n]
        if files:
            images = [decode_image(p.read_bytes()) for p in files]
            reps = [images[i % len(images)] for i in range(n)]
            return np.stack([np.asarray(im[:size, :size]) for im in reps])
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def rate(fn: Callable[[], Any], items: int, seconds: float) -> float:
    """Items per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        done += items
    return done / (time.perf_counter() - start)


def check_cuda_libraries() -> bool:
    """Whether every library onnxruntime-gpu needs loads; names the missing ones."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:  # loads them from the nvidia-*-cu12 wheels in site-packages
        try:
            preload()
        except Exception as exc:  # reported below by what does not load
            emit("cuda_libraries", note=f"onnxruntime.preload_dlls failed: {exc}")
    missing: dict[str, str] = {}
    for name, package in CUDA_LIBRARIES.items():
        try:
            ctypes.CDLL(name)
        except OSError:
            missing[name] = package
    emit(
        "cuda_libraries",
        onnxruntime=ort.__version__,
        providers=ort.get_available_providers(),
        missing=missing,
        install=(
            f"pip install 'onnxruntime-gpu[cuda,cudnn]' (or: pip install "
            f"{' '.join(sorted(set(missing.values())))})"
            if missing
            else None
        ),
    )
    return not missing


def check_onnx(device: str, crops_dir: Path | None, seconds: float) -> None:
    """The service's self-check on ``device``, embedding throughput, device-vs-CPU difference."""
    from service.recognition import build_pipeline
    from service.settings import Settings

    pipe = build_pipeline(Settings(device=device), batching=False)  # raises if CUDA is unused
    emit(
        "onnxruntime",
        device=device,
        providers={"detector": pipe.detector.providers, "recognizer": pipe.embedder.providers},
    )
    crops = crops_from(crops_dir, 256, 112)
    for batch in (1, 32, 256):
        value = rate(lambda b=batch: pipe.embedder.embed(list(crops[:b])), batch, seconds)
        emit(
            "onnxruntime",
            device=device,
            figure="embed_faces_per_s",
            batch=batch,
            value=round(value, 1),
        )
    if device != "cpu":
        cpu = build_pipeline(Settings(device="cpu"), batching=False)
        diff = np.abs(pipe.embedder.embed(list(crops[:32])) - cpu.embedder.embed(list(crops[:32])))
        emit("onnxruntime", device=device, figure="max_abs_diff_vs_cpu", value=float(diff.max()))


def check_batching(device: str, clients: list[int], seconds: float) -> None:
    """The batching benchmark against a real server on ``device``, each point as measured."""
    from bench.batching_benchmark import run

    def point(mode: str, figures: dict[str, float]) -> None:
        emit("batching", device=device, mode=mode, **figures)

    result = run(clients, seconds, device=device, on_point=point)
    emit("batching", device=device, figure="batches", **result.get("batches", {}))  # type: ignore[arg-type]


def check_faiss(vectors_count: int, use_gpu: bool) -> None:
    """Exact search over unit vectors: 1000 queries in one batch, and 100 single queries."""
    from service.gallery.index import FaissIndex, gpu_available

    rng = np.random.default_rng(1)
    dim = 128
    vectors = rng.standard_normal((vectors_count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, vectors_count, 1000)]
    emit("faiss", vectors=vectors_count, gpu_available=gpu_available())
    for on_gpu in (False, True):
        where = "gpu" if on_gpu else "cpu"
        if on_gpu and not (use_gpu and gpu_available()):
            emit("faiss", device=where, missing="no GPU (or no faiss-gpu) here")
            continue
        index = FaissIndex(dim, "Flat", use_gpu=on_gpu)
        index.rebuild(np.arange(vectors_count, dtype=np.int64), vectors)
        index.search(queries[:10], 10)
        t = time.perf_counter()
        _, ids = index.search(queries, 10)
        batch_ms = (time.perf_counter() - t) * 1000 / len(queries)
        single = []
        for q in queries[:100]:
            t = time.perf_counter()
            index.search(q[None, :], 10)
            single.append((time.perf_counter() - t) * 1000)
        emit(
            "faiss",
            device=where,
            batch_1000_ms_per_query=round(batch_ms, 4),
            single_query_p50_ms=round(float(np.percentile(single, 50)), 3),
            top1_found=float(np.mean(ids[:, 0] >= 0)),
        )


def check_training() -> None:
    """Training throughput with AMP on the GPU (skipped where torch sees none)."""
    try:
        import torch

        from training.backbones import create_backbone
        from training.losses import PRESETS, MarginHead, margin_loss
    except ImportError as exc:
        emit("training", missing=f"torch or training not importable: {exc}")
        return
    if not torch.cuda.is_available():
        emit("training", missing="torch sees no CUDA device")
        return
    device = torch.device("cuda")
    model = (
        create_backbone("iresnet50", embedding_dim=512)
        .to(device)
        .to(memory_format=torch.channels_last)
    )
    head = MarginHead(512, 10_000, PRESETS["arcface"]).to(device)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    batch = 256
    x = torch.randn(batch, 3, 112, 112, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10_000, (batch,), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.float16):
            loss = margin_loss(head, model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 10:
        step()
        steps += 1
    torch.cuda.synchronize()
    emit(
        "training",
        backbone="iresnet50",
        head="arcface",
        batch=batch,
        amp="fp16",
        samples_per_s=round(steps * batch / (time.perf_counter() - start), 1),
        device=torch.cuda.get_device_name(0),
        torch=torch.__version__,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=Path, help="folder of aligned 112x112 face crops")
    parser.add_argument(
        "--cpu", action="store_true", help="every section on the CPU at small sizes (CI)"
    )
    args = parser.parse_args()
    device = "cpu" if args.cpu else "cuda"
    sections: list[tuple[str, Callable[[], None]]] = [
        ("onnxruntime", lambda: check_onnx(device, args.crops, 0.3 if args.cpu else 3.0)),
        (
            "batching",
            lambda: check_batching(
                device, [1, 4] if args.cpu else [1, 4, 16, 64], 1.0 if args.cpu else 10.0
            ),
        ),
        ("faiss", lambda: check_faiss(20_000 if args.cpu else 1_000_000, not args.cpu)),
        ("training", check_training),
    ]
    failed = 0
    if not args.cpu and not check_cuda_libraries():
        for name in ("onnxruntime", "batching"):
            emit(name, device=device, missing="CUDA libraries missing (see cuda_libraries)")
        sections = sections[2:]
        failed += 1
    for name, section in sections:
        try:
            section()
        except Exception as exc:  # one failed section must not hide the others
            failed += 1
            emit(name, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    emit("done", failed_sections=failed)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
