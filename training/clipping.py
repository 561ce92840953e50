"""Gradient clipping by one global norm that every rank agrees on.

With Partial FC each rank holds its own shard of class centres, so ``clip_grad_norm_`` over
"this rank's parameters" computes a different norm, hence a different scale factor, on every
rank: the backbones (whose gradients DDP had just made identical) then drift apart, and the
exported model is only rank 0's copy. Here the norm is that of the whole model as one process
would see it: the replicated parameters (backbone, a DDP-wrapped softmax head) counted once, the
sharded class centres summed over ranks with one all-reduce. Every rank gets the same factor.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


def _sum_of_squares(params: Iterable[nn.Parameter], device: torch.device) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=device)
    for p in params:
        if p.grad is not None:
            total += p.grad.detach().double().pow(2).sum()
    return total


def clip_global_grad_norm(
    replicated: Iterable[nn.Parameter],
    sharded: Iterable[nn.Parameter],
    max_norm: float,
    device: torch.device,
) -> float:
    """Scale all gradients so the global norm is at most ``max_norm``; returns the norm before.

    ``replicated``: parameters whose gradients are already identical on every rank (DDP's
    averaged ones); ``sharded``: this rank's slice of parameters split across ranks. Under fp16
    the caller unscales first; an infinite norm is returned as is (the scaler skips the step).
    """
    replicated, sharded = list(replicated), list(sharded)
    shard_sq = _sum_of_squares(sharded, device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(shard_sq, op=dist.ReduceOp.SUM)
    total = float((_sum_of_squares(replicated, device) + shard_sq).sqrt())
    coefficient = max_norm / (total + 1e-6)
    if coefficient < 1.0:
        for p in (*replicated, *sharded):
            if p.grad is not None:
                p.grad.detach().mul_(coefficient)
    return total


__all__ = ["clip_global_grad_norm"]
