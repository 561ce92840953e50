"""GPU self-check and figures; prints one JSON object. Run through scripts/gpu_check.sh.

1. The service's start-up self-check with device=cuda: ONNX Runtime must run both models on the
   CUDA execution provider (otherwise the service refuses to start; so does this check).
2. Embedding throughput (faces/s) at batch 1, 32 and 256 on CUDA, and the largest difference
   between CUDA and CPU embeddings of the same crops (real aligned faces when --crops is given).
3. FAISS exact search over 1M 128-d unit vectors on the GPU (faiss-gpu) and on the CPU.
4. Training throughput (samples/s) of IResNet-50 + ArcFace head with AMP, when torch sees CUDA.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.recognition import build_pipeline
from service.settings import Settings
from service.vision.image import decode_image


def crops_from(folder: Path | None, n: int, size: int) -> np.ndarray:
    if folder is not None and folder.is_dir():
        files = sorted(folder.rglob("*.jpg"))[:n]
        if files:
            images = [decode_image(p.read_bytes()) for p in files]
            reps = [images[i % len(images)] for i in range(n)]
            return np.stack([np.asarray(im[:size, :size]) for im in reps])
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def rate(fn: Any, items: int, seconds: float = 3.0) -> float:
    fn()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        done += items
    return done / (time.perf_counter() - start)


def check_onnx(crops_dir: Path | None) -> dict[str, Any]:
    cuda = build_pipeline(Settings(device="cuda"), batching=False)  # raises if CUDA is not used
    cpu = build_pipeline(Settings(device="cpu"), batching=False)
    crops = crops_from(crops_dir, 256, 112)
    out: dict[str, Any] = {
        "providers": {"detector": cuda.detector.providers, "recognizer": cuda.embedder.providers}
    }
    for batch in (1, 32, 256):
        out[f"embed_faces_per_s_batch_{batch}"] = round(
            rate(lambda b=batch: cuda.embedder.embed(list(crops[:b])), batch), 1
        )
    diff = np.abs(cuda.embedder.embed(list(crops[:32])) - cpu.embedder.embed(list(crops[:32])))
    out["max_abs_diff_cuda_vs_cpu"] = float(diff.max())
    return out


def check_faiss() -> dict[str, Any]:
    from service.gallery.index import VectorIndex, gpu_available

    rng = np.random.default_rng(1)
    n, dim = 1_000_000, 128
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, n, 1000)]
    out: dict[str, Any] = {"vectors": n, "gpu_available": gpu_available()}
    for use_gpu in (False, True):
        if use_gpu and not gpu_available():
            continue
        index = VectorIndex(dim, "Flat", use_gpu=use_gpu)
        index.rebuild(np.arange(n, dtype=np.int64), vectors, 1)
        index.search(queries[:10], 10)
        t = time.perf_counter()
        _, ids = index.search(queries, 10)
        batch_ms = (time.perf_counter() - t) * 1000 / len(queries)
        single = []
        for q in queries[:100]:
            t = time.perf_counter()
            index.search(q[None, :], 10)
            single.append((time.perf_counter() - t) * 1000)
        key = "gpu" if use_gpu else "cpu"
        out[key] = {
            "batch_1000_ms_per_query": round(batch_ms, 4),
            "single_query_p50_ms": round(float(np.percentile(single, 50)), 3),
            "top1_is_self": float(np.mean(ids[:, 0] >= 0)),
        }
    return out


def check_training() -> dict[str, Any]:
    try:
        import torch

        from training.backbones import create_backbone
        from training.losses import PRESETS, MarginHead, margin_loss
    except ImportError as exc:
        return {"skipped": f"torch or training not importable: {exc}"}
    if not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA device"}
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
    return {
        "backbone": "iresnet50",
        "head": "arcface",
        "batch": batch,
        "amp": "fp16",
        "samples_per_s": round(steps * batch / (time.perf_counter() - start), 1),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=Path, help="folder of aligned 112x112 face crops")
    args = parser.parse_args()
    result = {"onnxruntime": check_onnx(args.crops), "faiss": check_faiss()}
    result["training"] = check_training()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
