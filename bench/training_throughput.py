"""Training samples/s per stage on this machine, so a GPU run can be sized not to starve: decode
(the loader's own JPEG decode of the aligned crops from disk, one core), augment (flip,
normalise, collate: one core), forward + backward + optimizer step (Partial FC ArcFace head,
the torch threads this process has) per backbone and batch size, and the loader end to end
(the default worker count, as ``marginface train`` builds it). From the per-core decode and
augment figures it derives how many loader workers feed a GPU doing N samples/s. Prints JSON.

Usage: python bench/training_throughput.py [--root data/celeba299_aligned] [--images 512]
       [--repeats 3] [--steps 3] [--batches 64 128] [--backbones iresnet18 mobilefacenet]
       [--gpu-samples-per-s 660 1600 5000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL
import torch
from PIL import features
from torch.utils.data import DataLoader, default_collate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.backbones import create_backbone  # noqa: E402
from training.config import DataConfig, HeadConfig  # noqa: E402
from training.data import _load_rgb, augment, image_folder, to_tensor  # noqa: E402
from training.partial_fc import PartialFC  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(work: Callable[[], int], repeats: int) -> dict[str, float]:
    """Median samples/s of ``work`` (which returns the samples it did) over ``repeats`` runs,
    by the wall clock and per CPU second (what one dedicated core would do: on a loaded
    machine the wall clock mostly measures the other processes), with the wall and CPU
    seconds of all runs."""
    rates, cpu_rates, wall0, cpu0 = [], [], time.perf_counter(), cpu_seconds()
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), cpu_seconds()
        done = work()
        rates.append(done / (time.perf_counter() - start))
        cpu_rates.append(done / max(cpu_seconds() - cpu_start, 1e-9))
    return {
        "samples_per_s": round(statistics.median(rates), 1),
        "samples_per_cpu_s": round(statistics.median(cpu_rates), 1),
        "wall_s": round(time.perf_counter() - wall0, 2),
        "cpu_s": round(cpu_seconds() - cpu0, 2),
    }


def decode_stage(paths: list[Path], repeats: int) -> dict[str, Any]:
    """The loader's decode (Pillow, as ``image_folder`` reads a crop) and OpenCV's beside it."""

    def pillow() -> int:
        for p in paths:
            _load_rgb(p)
        return len(paths)

    def opencv() -> int:
        for p in paths:
            bgr = cv2.imdecode(np.frombuffer(p.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return len(paths)

    return {"pillow (the loader)": timed(pillow, repeats), "opencv": timed(opencv, repeats)}


def augment_stage(images: list[np.ndarray], batch: int, repeats: int) -> dict[str, float]:
    """Flip, normalise to a tensor, and collate into batches: the rest of a loader worker's
    per-sample work."""

    def work() -> int:
        rng = np.random.default_rng(0)
        samples = [(to_tensor(augment(im, rng)), 0) for im in images]
        for i in range(0, len(samples) - batch + 1, batch):
            default_collate(samples[i : i + batch])
        return len(samples)

    return timed(work, repeats)


def step_stage(name: str, batch: int, steps: int, classes: int) -> dict[str, float]:
    """Forward + backward + SGD step of backbone ``name`` with the default ArcFace Partial FC
    head on random 112x112 input (the compute alone: no loader)."""
    torch.manual_seed(0)
    backbone = create_backbone(name, embedding_dim=512 if name.startswith("iresnet") else 128)
    dim = 512 if name.startswith("iresnet") else 128
    head = PartialFC(dim, classes, HeadConfig().margin(num_classes=classes))
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.01)
    images = torch.randn(batch, 3, 112, 112)
    labels = torch.randint(0, classes, (batch,))
    backbone.train()

    def one() -> int:
        optimizer.zero_grad(set_to_none=True)
        head(backbone(images), labels).loss.backward()
        optimizer.step()
        return batch

    one()  # warm-up: allocator and kernel choice
    return timed(one, steps)


def loader_stage(root: Path, batch: int, batches: int) -> dict[str, float]:
    """The loader end to end with the default worker count: the batches after the first
    (worker start-up and the first batch are reported apart)."""
    dataset = image_folder(root)
    workers = DataConfig().workers
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=workers,
        drop_last=True,
    )
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - wall0
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    wall = time.perf_counter() - start
    del it  # workers exit and are reaped: their CPU counts as the children's
    return {
        "workers": workers,
        "first_batch_s": round(first, 2),
        "samples_per_s": round(batches * batch / wall, 1),
        "wall_s": round(time.perf_counter() - wall0, 2),
        "cpu_s": round(cpu_seconds() - cpu0, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "data" / "celeba299_aligned")
    parser.add_argument("--images", type=int, default=512, help="crops decoded per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    parser.add_argument(
        "--backbones", nargs="+", default=["iresnet18", "mobilefacenet"], help="registry names"
    )
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument(
        "--gpu-samples-per-s",
        type=float,
        nargs="+",
        default=[660.0, 1600.0, 5000.0],
        help="GPU training rates to size the loader for (assumptions: see docs/benchmarks.md)",
    )
    args = parser.parse_args()

    dataset = image_folder(args.root, train=False)
    every = sorted(
        p for d in args.root.iterdir() if d.is_dir() for p in d.iterdir() if p.suffix == ".jpg"
    )
    paths = every[:: max(1, len(every) // args.images)][: args.images]  # across identities
    images = [_load_rgb(p) for p in paths]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker (torch gives each one thread)
    decode = decode_stage(paths, args.repeats)
    augment_rates = {str(b): augment_stage(images, b, args.repeats) for b in args.batches}
    torch.set_num_threads(threads)
    steps = {
        name: {str(b): step_stage(name, b, args.steps, dataset.num_classes) for b in args.batches}
        for name in args.backbones
    }
    loader = loader_stage(args.root, args.batches[0], args.loader_batches)

    # a worker decodes and augments each of its samples: its rate on a core of its own
    per_worker = 1 / (
        1 / decode["pillow (the loader)"]["samples_per_cpu_s"]
        + 1 / augment_rates[str(args.batches[0])]["samples_per_cpu_s"]
    )
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "pillow": PIL.__version__,
            "pillow_libjpeg_turbo": features.check_feature("libjpeg_turbo"),
            "opencv": cv2.__version__,
            "python": platform.python_version(),
            "load_average_at_start": LOAD_AT_START,
            "load_average_at_end": list(os.getloadavg()),
        },
        "images": len(paths),
        "classes": dataset.num_classes,
        "decode_per_core": decode,
        "augment_per_core": augment_rates,
        "forward_backward_step": steps,
        "loader_end_to_end": loader,
        "loader_worker_samples_per_cpu_s": round(per_worker, 1),
        "workers_to_feed_gpu": {
            str(int(rate)): math.ceil(rate / per_worker) for rate in args.gpu_samples_per_s
        },
    }
    print(json.dumps(result, indent=2))


LOAD_AT_START = list(os.getloadavg())

if __name__ == "__main__":
    main()
