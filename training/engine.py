"""The training loop: read it top to bottom.

One process or torchrun DDP (gloo on the CPU, NCCL on GPUs; no process group at all for a single
process, so one GPU needs no NCCL). AMP: bf16 on CUDA by default, fp16 with loss scaling on CUDA
when asked, bf16 on the CPU when asked (amp=bf16), fp32 otherwise. Checkpoints carry their config
and every RNG state, so a resumed run continues exactly.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from training.clipping import clip_global_grad_norm
from training.config import TrainConfig
from training.data import FaceDataset, Normalisation, image_folder, record_dataset
from training.losses import PUBLISHED_SCALE_MIN_CLASSES, MarginHead
from training.partial_fc import HeadOutput, PartialFC
from training.pretrained import backbone_for
from training.tensorboard_log import TensorBoardLog
from training.validation import (
    AngleMonitor,
    BinValidator,
    OpenSetValidator,
    Validator,
    degrees,
    past_fallback_fraction,
    snapshot_steps,
)

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
    """The autocast dtype: bf16 when asked on any device (CPU autocast supports it), auto is
    bf16 on CUDA and fp32 (None) on the CPU, fp16 only on CUDA (its loss scaler is CUDA's).
    Raises ValueError for fp16 on the CPU (device=auto without a GPU)."""
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    if config.amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp=fp16 needs CUDA (loss scaling); use amp=bf16 or off on the CPU")
        return torch.float16
    return torch.bfloat16


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


def build_dataset(config: TrainConfig, norm: Normalisation) -> FaceDataset:
    """The training set the config names."""
    if config.data.root:
        return image_folder(
            Path(config.data.root),
            flip=config.data.flip,
            seed=config.seed,
            max_identities=config.data.max_identities,
            norm=norm,
        )
    return record_dataset(Path(config.data.rec), flip=config.data.flip, seed=config.seed, norm=norm)


class EpochSampler(Sampler[int]):
    """The training order: one reshuffle per epoch (seeded by the epoch, so any epoch can be
    replayed), and a resume point inside an epoch that skips the used indices without loading
    their images (decoding an epoch's worth of skipped batches would take hours at scale)."""

    def __init__(self, inner: RandomSampler | DistributedSampler[Any], seed: int) -> None:
        self.inner = inner
        self.seed = seed
        self.skip = 0  # indices of the next pass to drop (then back to 0)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``."""
        if isinstance(self.inner, DistributedSampler):
            self.inner.set_epoch(epoch)
        elif self.inner.generator is not None:
            self.inner.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)


def infinite_batches(
    loader: DataLoader[Any], dataset: FaceDataset, step: int
) -> Iterator[tuple[int, Any]]:
    """(epoch, batch) forever, starting where ``step`` batches from the start leave off: every
    step uses one batch, so step // batches-per-epoch is the epoch (a checkpoint at an epoch's
    last step resumes with the next epoch, not a replay) and the remainder the batches to skip."""
    sampler = loader.sampler
    assert isinstance(sampler, EpochSampler)
    per_epoch = len(loader)  # drop_last: whole batches only
    epoch, skip = divmod(step, per_epoch)
    sampler.skip = skip * (loader.batch_size or 1)
    while True:
        dataset.epoch = epoch
        sampler.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1


def write_curves(log_path: Path, out: Path) -> None:
    """Loss and accuracy curves as PNG (matplotlib, from the train extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    val_keys = sorted({k for r in rows if "loss" not in r for k in r if k.endswith("_accuracy")})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="training loss", xlabel="step")
    steps = [r["step"] for r in train]
    axes[1].plot(steps, [r["accuracy"] for r in train], label="train (margin logits)")
    if train and "plain_accuracy" in train[0]:
        axes[1].plot(steps, [r["plain_accuracy"] for r in train], label="train (plain cosines)")
    for key in val_keys:  # lfw_accuracy (pairs.txt or lfw.bin), cfp_fp_accuracy, ...
        val = [r for r in rows if key in r]
        label = key.removesuffix("_accuracy") + " 10-fold"
        axes[1].plot([r["step"] for r in val], [r[key] for r in val], "o-", label=label)
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
    dtype = amp_dtype(config, device)  # refuses fp16 on the CPU before any work
    world = setup_distributed(device)
    out = Path(config.output_dir)
    if world.is_main:
        config.save(out / "config.json")
    torch.manual_seed(config.seed + world.rank)
    np.random.seed(config.seed + world.rank)
    random.seed(config.seed + world.rank)

    backbone, norm, init_manifest = backbone_for(config.model)
    backbone = backbone.to(device)
    dataset = build_dataset(config, norm)
    order: RandomSampler | DistributedSampler[Any]
    if world.world_size > 1:
        order = DistributedSampler(
            dataset, world.world_size, world.rank, shuffle=True, seed=config.seed
        )
    else:
        order = RandomSampler(dataset, generator=torch.Generator().manual_seed(config.seed))
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=EpochSampler(order, config.seed),
        # its own generator for the workers' base seed: starting an epoch's iterator must not
        # draw from the global RNG, which a resumed run restores at its checkpoint's step
        generator=torch.Generator().manual_seed(config.seed + world.rank),
        num_workers=config.data.workers,
        drop_last=True,
        persistent_workers=False,
    )
    margin = config.head.margin(num_classes=dataset.num_classes)
    head: nn.Module
    if margin.kind == "softmax":
        head = MarginHead(config.model.embedding_dim, dataset.num_classes, margin).to(device)
    else:
        head = PartialFC(
            config.model.embedding_dim,
            dataset.num_classes,
            margin,
            sample_rate=config.head.sample_rate,
            schedule=config.head.schedule(),
            adaptive_scale=config.head.adaptive_scale,
        ).to(device)
    if world.is_main:
        log.info(
            "%s head, %d classes, scale %.3g (%s)%s",
            margin.kind,
            dataset.num_classes,
            margin.scale,
            "set"
            if config.head.scale is not None
            else "the published s = 64: 10,000 classes or more"
            if dataset.num_classes >= PUBLISHED_SCALE_MIN_CLASSES
            else "derived from the class count: below 10,000 classes, docs/loss_study.md",
            ", AdaCos dynamic" if config.head.adaptive_scale else "",
        )
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
        log.info("resumed from %s at step %d", ckpt_path, step)

    validator = openset = angles = None
    if world.is_main and config.data.val_pairs:
        cache = Path(config.data.val_cache) if config.data.val_cache else out / "val_crops.npz"
        validator = Validator(config, cache, norm)
    bins = [BinValidator(path, norm) for path in config.data.bin_paths()] if world.is_main else []
    if world.is_main and config.data.openset_images:
        openset = OpenSetValidator(config, norm)
    angle_steps = snapshot_steps(config.max_steps, config.angle_snapshots)
    if world.is_main and angle_steps:
        angles = AngleMonitor(dataset, config.angle_samples, out / "angles.jsonl")
    log_path = out / "log.jsonl"
    board = (
        TensorBoardLog(out / "tensorboard", resume_step=step)
        if world.is_main and config.tensorboard
        else None
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(dataset)} training faces per rank make no whole batch of {config.batch_size}"
        )
    batches = infinite_batches(loader, dataset, step * config.accumulate)
    seen, tick, last_logged_step = 0, time.perf_counter(), step
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

    def class_centres() -> torch.Tensor:
        inner = head.module if isinstance(head, DistributedDataParallel) else head
        return inner.weight  # this rank's shard with Partial FC across ranks

    if angles is not None and step == 0 and 0 in angle_steps:
        angles.snapshot(0, backbone, class_centres(), device)

    def forward(images: torch.Tensor, labels: torch.Tensor, frozen: bool) -> HeadOutput:
        """One micro-batch's loss and what is logged beside it."""
        context = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with context:
            if frozen:
                with torch.no_grad():
                    features = model(images)
            else:
                features = model(images)
            if isinstance(head, PartialFC):
                return head(features.float(), labels)
            logits = head(features.float(), labels)
            inner = head.module if isinstance(head, DistributedDataParallel) else head
            with torch.no_grad():
                cos = inner.cosine(features.float())
                target_cos = cos.gather(1, labels[:, None])[:, 0]
            accuracy = (logits.argmax(1) == labels).float().mean()
            return HeadOutput(
                torch.nn.functional.cross_entropy(logits, labels),
                accuracy,
                accuracy,  # no margin: the logits' accuracy is the plain one
                target_cos,
            )

    model.train()
    head.train()
    while step < config.max_steps:
        frozen = step < config.model.freeze_steps
        model.train(not frozen)
        if isinstance(head, PartialFC):
            head.set_step(step)  # the margin schedule counts optimizer steps
        optimizer.zero_grad(set_to_none=True)
        parts: list[HeadOutput] = []
        for micro in range(config.accumulate):
            epoch, (images, labels) = next(batches)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with ExitStack() as no_sync:
                if micro < config.accumulate - 1:  # DDP averages once, on the last backward
                    for wrapped in (model, head):
                        if isinstance(wrapped, DistributedDataParallel):
                            no_sync.enter_context(wrapped.no_sync())
                part = forward(images, labels, frozen)
                if not torch.isfinite(part.loss):
                    raise RuntimeError(
                        f"loss is {part.loss.item()} at step {step} "
                        f"(lr {scheduler.get_last_lr()[0]:.4g}); lower optim.lr, raise "
                        "optim.warmup_steps, or use amp=bf16 instead of fp16"
                    )
                # each micro-batch's mean loss over accumulate: the gradients sum to those of
                # the mean over the whole step's batch
                scaler.scale(part.loss / config.accumulate).backward()
            parts.append(replace(part, loss=part.loss.detach()))  # its graph is freed
            seen += len(images) * world.world_size
        output = HeadOutput(
            torch.stack([p.loss for p in parts]).mean(),
            torch.stack([p.accuracy for p in parts]).mean(),
            torch.stack([p.plain_accuracy for p in parts]).mean(),
            torch.cat([p.target_cos for p in parts]),
        )
        loss = output.loss
        scaler.unscale_(optimizer)
        # once per optimizer step, on the accumulated gradients: one global norm on every rank,
        # the backbone's (DDP-averaged) gradients and, with Partial FC across ranks, every
        # shard's class centres (training/clipping.py)
        sharded_head = isinstance(head, PartialFC) and world.world_size > 1
        grad_norm = clip_global_grad_norm(
            [*model.parameters(), *([] if sharded_head else head.parameters())],
            head.parameters() if sharded_head else [],
            config.optim.grad_clip,
            device,
        )
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        if world.is_main and (step % config.log_every == 0 or step == config.max_steps):
            elapsed = time.perf_counter() - tick
            inner_head = head.module if isinstance(head, DistributedDataParallel) else head
            current_scale = (
                inner_head.head.current_scale if isinstance(inner_head, PartialFC) else 1.0
            )
            row = {
                "step": step,
                "epoch": epoch,
                "loss": float(loss.item()),
                "accuracy": float(output.accuracy.item()),
                "plain_accuracy": float(output.plain_accuracy.item()),
                "target_angle_deg": float(degrees(output.target_cos).mean()),
                "past_arcface_fallback": past_fallback_fraction(output.target_cos, margin.m2_rad),
                "scale": current_scale,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,  # before clipping (optim.grad_clip)
                "amp": str(dtype).removeprefix("torch.") if dtype is not None else "fp32",
                "samples_per_s": seen / max(elapsed, 1e-9),
                # the steps left at this interval's pace (validation pauses not counted)
                "eta_s": (config.max_steps - step) * elapsed / max(1, step - last_logged_step),
            }
            seen, tick, last_logged_step = 0, time.perf_counter(), step
            with log_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            if board is not None:
                board.scalars(step, row, "train/")
                board.angles(step, degrees(output.target_cos))
            log.info(
                "step %d/%d loss %.4f acc %.3f (plain %.3f) lr %.4g %.1f samples/s, ETA %.0f s",
                step,
                config.max_steps,
                row["loss"],
                row["accuracy"],
                row["plain_accuracy"],
                row["lr"],
                row["samples_per_s"],
                row["eta_s"],
            )
            metrics.update(row)
        at_eval = config.eval_every and step % config.eval_every == 0
        if validator is not None and (at_eval or step == config.max_steps):
            result = validator.evaluate(backbone, device)
            with log_path.open("a") as fh:
                fh.write(json.dumps({"step": step, **result}) + "\n")
            log.info("step %d LFW %s", step, result)
            if board is not None:
                board.scalars(step, result, "val/")
            metrics.update(result)
        if bins and (at_eval or step == config.max_steps):
            result = {}
            for bin_validator in bins:
                result.update(bin_validator.evaluate(backbone, device))
            with log_path.open("a") as fh:
                fh.write(json.dumps({"step": step, **result}) + "\n")
            log.info("step %d %s", step, result)
            if board is not None:
                board.scalars(step, result, "val/")
            metrics.update(result)
        if angles is not None and step in angle_steps:
            angles.snapshot(step, backbone, class_centres(), device)
        if openset is not None and step == config.max_steps:
            found = openset.evaluate(backbone, device)
            with log_path.open("a") as fh:
                fh.write(json.dumps({"step": step, **found}) + "\n")
            if board is not None:
                board.scalars(step, found, "val/")
            metrics.update(found)
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            save(step, epoch)
    if board is not None:
        board.close()
    if world.is_main and log_path.is_file():
        write_curves(log_path, out / "curves.png")
        metrics["num_classes"] = dataset.num_classes
        metrics["init"] = init_manifest.model_id if init_manifest is not None else None
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if world.world_size > 1:
        dist.barrier()
    return metrics


__all__ = ["Distributed", "train"]
