"""Partial FC: class centres sharded across ranks, a sampled fraction of them used per step.

With one process and sample_rate=1.0 it computes exactly the full margin head's loss. Across
ranks, features are all-gathered, each rank scores them against its shard, and a distributed
softmax cross-entropy combines the shards (max and sum-exp all-reduced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from training.losses import MarginConfig, MarginHead, MarginSchedule


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """All-gather with a backward that sums every rank's gradient for this rank's slice.

    The gradient is multiplied by the world size, so that after DDP averages the backbone's
    gradients over ranks, the backbone receives the exact gradient of the global loss.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        rank, world = _world()
        ctx.rank, ctx.world, ctx.batch = rank, world, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.batch
        return grad[start : start + ctx.batch] * ctx.world


class _DistCrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy over logits split by columns across ranks (labels -1: elsewhere)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, world = _world()
        logits = logits.float()
        row_max = logits.max(dim=1, keepdim=True).values
        if world > 1:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        exp = torch.exp(logits - row_max)
        denom = exp.sum(dim=1, keepdim=True)
        if world > 1:
            dist.all_reduce(denom, op=dist.ReduceOp.SUM)
        prob = exp / denom  # (N, S_local)
        here = labels >= 0
        target = torch.zeros(logits.shape[0], device=logits.device)
        target[here] = logits[here, labels[here]]
        if world > 1:
            dist.all_reduce(target, op=dist.ReduceOp.SUM)
        ctx.save_for_backward(prob, labels)
        # log space: at scale 64 a target's probability can underflow float32
        return (torch.log(denom.squeeze(1)) + row_max.squeeze(1) - target).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        prob, labels = ctx.saved_tensors
        here = labels >= 0
        grad_logits = prob.clone()
        grad_logits[here, labels[here]] -= 1.0
        return grad_logits * (grad / prob.shape[0]), None


@dataclass(frozen=True)
class HeadOutput:
    """A training step's loss and what is logged beside it (all over the global batch)."""

    loss: torch.Tensor
    accuracy: torch.Tensor  # on the margin logits: right only when the target wins by the margin
    plain_accuracy: torch.Tensor  # on the plain cosines: what a margin-free head would score
    target_cos: torch.Tensor  # (N,) cos θ between each feature and its class centre


class PartialFC(nn.Module):
    """This rank's shard of class centres and the sampled, distributed margin loss."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        margin: MarginConfig,
        *,
        sample_rate: float = 1.0,
        rank: int | None = None,
        world_size: int | None = None,
        schedule: MarginSchedule | None = None,
        adaptive_scale: bool = False,
    ) -> None:
        super().__init__()
        default_rank, default_world = _world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.num_classes = num_classes
        self.class_start = num_classes * self.rank // self.world_size
        self.class_end = num_classes * (self.rank + 1) // self.world_size
        self.num_local = self.class_end - self.class_start
        self.sample_rate = sample_rate
        # holds this shard's weight; the scale follows the global class count
        self.head = MarginHead(
            embedding_dim,
            self.num_local,
            margin,
            schedule=schedule,
            adaptive_scale=adaptive_scale,
            scale_classes=num_classes,
        )

    @property
    def weight(self) -> nn.Parameter:
        """This rank's class centres (num_local, D)."""
        return self.head.weight

    def _sample(self, local_labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Columns to use (None: all) and labels mapped onto them (-1 where not on this shard)."""
        here = (local_labels >= 0) & (local_labels < self.num_local)
        mapped = torch.where(here, local_labels, torch.full_like(local_labels, -1))
        if self.sample_rate >= 1.0:
            return None, mapped
        positives = torch.unique(mapped[here])
        wanted = max(math.ceil(self.sample_rate * self.num_local), len(positives))
        score = torch.rand(self.num_local, device=local_labels.device)
        score[positives] = 2.0  # positives always kept
        index = torch.topk(score, wanted, sorted=False).indices.sort().values
        lookup = torch.full((self.num_local,), -1, dtype=torch.long, device=local_labels.device)
        lookup[index] = torch.arange(len(index), device=local_labels.device)
        remapped = torch.where(here, lookup[mapped.clamp_min(0)], mapped)
        return index, remapped

    def set_step(self, step: int) -> None:
        """The training step of the next forward (the margin schedule)."""
        self.head.set_step(step)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """Loss and accuracies over the global batch; features (B, D), labels (B,) global ids."""
        if self.world_size > 1:
            features = _AllGather.apply(features)
            gathered = [torch.empty_like(labels) for _ in range(self.world_size)]
            dist.all_gather(gathered, labels.contiguous())
            labels = torch.cat(gathered)
        index, mapped = self._sample(labels - self.class_start)
        weight = self.weight if index is None else self.weight[index]
        cos = F.linear(F.normalize(features.float(), dim=1), F.normalize(weight.float(), dim=1))
        logits = self.head.margin_logits(cos, mapped)  # (N, S_local)
        loss = _DistCrossEntropy.apply(logits, mapped)
        with torch.no_grad():
            here = mapped >= 0
            best = logits.max(dim=1).values
            target = torch.zeros_like(best)
            target[here] = logits[here, mapped[here]]
            best_cos = cos.max(dim=1).values
            target_cos = torch.zeros_like(best_cos)
            target_cos[here] = cos[here, mapped[here]]
            if self.world_size > 1:
                for tensor, op in (
                    (best, dist.ReduceOp.MAX),
                    (target, dist.ReduceOp.SUM),
                    (best_cos, dist.ReduceOp.MAX),
                    (target_cos, dist.ReduceOp.SUM),
                ):
                    dist.all_reduce(tensor, op=op)
            accuracy = (target >= best).float().mean()
            plain_accuracy = (target_cos >= best_cos).float().mean()
        return HeadOutput(loss, accuracy, plain_accuracy, target_cos)
