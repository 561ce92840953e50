"""The training loop: read it top to bottom.

One process or torchrun DDP (gloo on the CPU, NCCL on GPUs; no process group at all for a single
process, so one GPU needs no NCCL). AMP (bf16, or fp16 with loss scaling) on CUDA, fp32 on the
CPU. Checkpoints carry their config and every RNG state, so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from service.evaluation import kfold_accuracy, read_lfw_pairs, tar_at, threshold_at_far
from training.backbones import create_backbone
from training.config import TrainConfig
from training.data import FaceDataset, image_folder, record_dataset, to_tensor
from training.partial_fc import PartialFC

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass
class Distributed:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and writes the shared files."""
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    """Join the torchrun job if there is one (WORLD_SIZE > 1); never for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def pick_device(config: TrainConfig) -> torch.device:
    """CUDA when asked or available (auto); the local rank's GPU under torchrun."""
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but torch sees no CUDA device")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 or fp16 autocast on CUDA; None (fp32) on the CPU or when off."""
    if device.type != "cuda" or config.amp == "off":
        return None
    return torch.float16 if config.amp == "fp16" else torch.bfloat16


def lr_lambda(config: TrainConfig) -> Any:
    """Linear warmup, then cosine or polynomial decay to zero at max_steps."""
    warmup, total = config.optim.warmup_steps, config.max_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if config.optim.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return (1.0 - progress) ** config.optim.poly_power

    return factor


def build_dataset(config: TrainConfig) -> FaceDataset:
    """The training set the config names."""
    if config.data.root:
        return image_folder(Path(config.data.root), flip=config.data.flip, seed=config.seed)
    return record_dataset(Path(config.data.rec), flip=config.data.flip, seed=config.seed)


def infinite_batches(
    loader: DataLoader[Any], dataset: FaceDataset, start_epoch: int
) -> Iterator[tuple[int, Any]]:
    """(epoch, batch) forever; each epoch reshuffles (sampler seeded by epoch)."""
    epoch = start_epoch
    while True:
        dataset.epoch = epoch
        sampler = loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        elif isinstance(sampler, RandomSampler) and sampler.generator is not None:
            sampler.generator.manual_seed(dataset.seed * 1_000_003 + epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1


class Validator:
    """LFW-protocol verification during training, on crops aligned once by the service pipeline."""

    def __init__(self, config: TrainConfig, cache: Path) -> None:
        pairs = read_lfw_pairs(Path(config.data.val_pairs), Path(config.data.val_images))
        if config.data.val_pair_limit:
            # keep whole folds' balance: an equal share of each fold
            per_fold = max(2, config.data.val_pair_limit // 10)
            pairs = [p for f in range(10) for p in [q for q in pairs if q.fold == f][:per_fold]]
        self.pairs = pairs
        self.crops, self.index = self._crops(cache)

    def _crops(self, cache: Path) -> tuple[np.ndarray, dict[Path, int]]:
        paths = sorted({p.a for p in self.pairs} | {p.b for p in self.pairs})
        if cache.is_file():
            data = np.load(cache, allow_pickle=False)
            if list(data["paths"]) == [str(p) for p in paths]:
                return data["crops"], {p: i for i, p in enumerate(paths)}
        from service.calibration import central_face
        from service.recognition import build_pipeline
        from service.settings import Settings
        from service.vision.image import decode_image

        pipeline = build_pipeline(Settings(device="cpu"), batching=False)
        crops = np.zeros((len(paths), 112, 112, 3), dtype=np.uint8)
        for i, path in enumerate(paths):
            image = decode_image(path.read_bytes())
            face, _ = central_face(pipeline, image)  # the same protocol as `marginface eval`
            if face is not None:
                crops[i] = pipeline.align(image, face.landmarks)
            else:  # documented fallback: the central 112x112 region, resized
                h, w = image.shape[:2]
                side = min(h, w) // 2
                crop = image[
                    h // 2 - side // 2 : h // 2 + side // 2, w // 2 - side // 2 : w // 2 + side // 2
                ]
                crops[i] = cv2.resize(crop, (112, 112), interpolation=cv2.INTER_AREA)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, crops=crops, paths=np.array([str(p) for p in paths]))
        return crops, {p: i for i, p in enumerate(paths)}

    @torch.no_grad()
    def evaluate(
        self, backbone: nn.Module, device: torch.device, batch: int = 128
    ) -> dict[str, float]:
        """10-fold accuracy and TAR at FAR 1e-2 (flip-averaged embeddings)."""
        was_training = backbone.training
        backbone.eval()
        feats = []
        for start in range(0, len(self.crops), batch):
            x = torch.stack([to_tensor(c) for c in self.crops[start : start + batch]]).to(device)
            f = backbone(x) + backbone(torch.flip(x, dims=[3]))
            feats.append(torch.nn.functional.normalize(f.float(), dim=1).cpu())
        backbone.train(was_training)
        emb = torch.cat(feats).numpy()
        scores = np.array([float(emb[self.index[p.a]] @ emb[self.index[p.b]]) for p in self.pairs])
        same = np.array([p.same for p in self.pairs])
        folds = np.array([p.fold for p in self.pairs])
        mean, std, _ = kfold_accuracy(scores, same, folds)
        out = {"lfw_accuracy": mean, "lfw_accuracy_std": std}
        impostors = scores[~same]
        if len(impostors) >= 100:
            out["lfw_tar_at_far_1e-2"] = tar_at(scores[same], threshold_at_far(impostors, 1e-2))
        return out


def write_curves(log_path: Path, out: Path) -> None:
    """Loss and accuracy curves as PNG (matplotlib, from the train extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "lfw_accuracy" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot(
        [r["step"] for r in train], [r["accuracy"] for r in train], label="train (margin logits)"
    )
    if val:
        axes[1].plot(
            [r["step"] for r in val], [r["lfw_accuracy"] for r in val], "o-", label="LFW 10-fold"
        )
    axes[1].set(title="accuracy", xlabel="step", ylim=(0, 1))
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns the final metrics. Raises RuntimeError on a NaN loss."""
    config.validate()
    device = pick_device(config)
    world = setup_distributed(device)
    out = Path(config.output_dir)
    if world.is_main:
        config.save(out / "config.json")
    torch.manual_seed(config.seed + world.rank)
    np.random.seed(config.seed + world.rank)
    random.seed(config.seed + world.rank)

    dataset = build_dataset(config)
    if world.world_size > 1:
        sampler: Any = DistributedSampler(
            dataset, world.world_size, world.rank, shuffle=True, seed=config.seed
        )
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(config.seed))
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.data.workers,
        drop_last=True,
        persistent_workers=False,
    )
    backbone = create_backbone(
        config.model.backbone, embedding_dim=config.model.embedding_dim, **config.model.kwargs()
    ).to(device)
    margin = config.head.margin()
    head: nn.Module
    if margin.kind == "softmax":
        from training.losses import MarginHead

        head = MarginHead(config.model.embedding_dim, dataset.num_classes, margin).to(device)
    else:
        head = PartialFC(
            config.model.embedding_dim,
            dataset.num_classes,
            margin,
            sample_rate=config.head.sample_rate,
        ).to(device)
    model: nn.Module = backbone
    if world.world_size > 1:
        model = DistributedDataParallel(
            backbone, device_ids=[device.index] if device.type == "cuda" else None
        )
        if margin.kind == "softmax":
            head = DistributedDataParallel(head)

    params = [{"params": model.parameters()}, {"params": head.parameters()}]
    if config.optim.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params,
            lr=config.optim.lr,
            momentum=config.optim.momentum,
            weight_decay=config.optim.weight_decay,
        )
    else:
        optimizer = torch.optim.AdamW(
            params, lr=config.optim.lr, weight_decay=config.optim.weight_decay
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    dtype = amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    step, epoch = 0, 0
    ckpt_path = out / (CHECKPOINT if world.world_size == 1 else f"checkpoint.rank{world.rank}.pt")
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        backbone.load_state_dict(state["backbone"])
        (head.module if isinstance(head, DistributedDataParallel) else head).load_state_dict(
            state["head"]
        )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, epoch = state["step"], state["epoch"]
        _set_rng_state(state["rng"])
        log.warning("resumed from %s at step %d", ckpt_path, step)

    validator = None
    if world.is_main and config.data.val_pairs:
        cache = Path(config.data.val_cache) if config.data.val_cache else out / "val_crops.npz"
        validator = Validator(config, cache)
    log_path = out / "log.jsonl"
    batches = infinite_batches(loader, dataset, epoch)
    seen, tick = 0, time.perf_counter()
    metrics: dict[str, Any] = {}

    def save(step: int, epoch: int) -> None:
        state = {
            "config": config.to_dict(),
            "backbone": backbone.state_dict(),
            "head": (
                head.module if isinstance(head, DistributedDataParallel) else head
            ).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "epoch": epoch,
            "rng": _rng_state(),
            "num_classes": dataset.num_classes,
        }
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(ckpt_path)

    model.train()
    head.train()
    # Resuming mid-epoch: skip the batches this epoch already used, so the data order is exact.
    skip = step % max(1, len(loader))
    for _ in range(skip):
        next(batches)
    while step < config.max_steps:
        epoch, (images, labels) = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        context = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with context:
            features = model(images)
            if isinstance(head, PartialFC):
                loss, accuracy = head(features.float(), labels)
            else:
                logits = head(features.float(), labels)
                loss = torch.nn.functional.cross_entropy(logits, labels)
                accuracy = (logits.argmax(1) == labels).float().mean()
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"loss is {loss.item()} at step {step} (lr {scheduler.get_last_lr()[0]:.4g}); "
                "lower optim.lr, raise optim.warmup_steps, or use amp=bf16 instead of fp16"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], config.optim.grad_clip
        )
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        seen += len(images) * world.world_size
        if world.is_main and (step % config.log_every == 0 or step == config.max_steps):
            elapsed = time.perf_counter() - tick
            row = {
                "step": step,
                "epoch": epoch,
                "loss": float(loss.item()),
                "accuracy": float(accuracy.item()),
                "lr": scheduler.get_last_lr()[0],
                "samples_per_s": seen / max(elapsed, 1e-9),
            }
            seen, tick = 0, time.perf_counter()
            with log_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            log.warning(
                "step %d loss %.4f acc %.3f lr %.4g %.1f samples/s",
                step,
                row["loss"],
                row["accuracy"],
                row["lr"],
                row["samples_per_s"],
            )
            metrics.update(row)
        at_eval = config.eval_every and step % config.eval_every == 0
        if validator is not None and (at_eval or step == config.max_steps):
            result = validator.evaluate(backbone, device)
            with log_path.open("a") as fh:
                fh.write(json.dumps({"step": step, **result}) + "\n")
            log.warning("step %d LFW %s", step, result)
            metrics.update(result)
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            save(step, epoch)
    if world.is_main and log_path.is_file():
        write_curves(log_path, out / "curves.png")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if world.world_size > 1:
        dist.barrier()
    return metrics


__all__ = ["Distributed", "train"]
