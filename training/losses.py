"""The large-margin softmax family as one head: target logit = s * (cos(m1*θ + m2) - m3).

Other classes keep s * cos θ. Features and class weights are L2-normalised and there is no bias
(NormFace/SphereFace), except for the plain ``softmax`` baseline (a linear layer with bias).

Monotonic forms, so that a larger angle never gives a larger target logit:
- SphereFace (integer m1 > 1): ψ(θ) = (-1)^k cos(m1 θ) - 2k on [kπ/m1, (k+1)π/m1] (Liu et al. 2017).
- ArcFace (m2 > 0): past θ = π - m2, cos(θ + m2) would rise again; there we use the standard
  correction of the ArcFace reference code, ψ(θ) = cos θ - m2 sin(m2) (a CosFace-like penalty),
  which keeps ψ strictly decreasing on [0, π].
Margins are in radians (m2) or cosine units (m3); m1 is an integer multiplier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

HeadKind = Literal["softmax", "normface", "sphereface", "arcface", "cosface", "combined"]


@dataclass(frozen=True)
class MarginConfig:
    """One member of the family; ``validate`` refuses combinations we do not implement exactly."""

    kind: HeadKind = "arcface"
    scale: float = 64.0
    m1: int = 1
    m2_rad: float = 0.0
    m3: float = 0.0

    def validate(self) -> MarginConfig:
        """Raise ValueError with a specific message for an unsupported combination."""
        if self.scale <= 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if not isinstance(self.m1, int) or self.m1 < 1:
            raise ValueError(f"m1 (SphereFace) must be an integer >= 1, got {self.m1!r}")
        if not 0.0 <= self.m2_rad < math.pi / 2:
            raise ValueError(f"m2_rad (ArcFace) must be in [0, π/2), got {self.m2_rad}")
        if not 0.0 <= self.m3 < 1.0:
            raise ValueError(f"m3 (CosFace) must be in [0, 1), got {self.m3}")
        if self.m1 > 1 and self.m2_rad > 0:
            raise ValueError(
                "m1 > 1 together with m2 > 0 has no monotonic form implemented; use m1 with m3, "
                "or m2 with m3"
            )
        if self.kind == "softmax" and (self.m1, self.m2_rad, self.m3) != (1, 0.0, 0.0):
            raise ValueError("the softmax baseline has no margins; use normface/combined instead")
        expected = {
            "normface": lambda c: (c.m1, c.m2_rad, c.m3) == (1, 0.0, 0.0),
            "sphereface": lambda c: c.m1 > 1,
            "arcface": lambda c: c.m2_rad > 0 and c.m1 == 1 and c.m3 == 0,
            "cosface": lambda c: c.m3 > 0 and c.m1 == 1 and c.m2_rad == 0,
            "combined": lambda c: sum([c.m1 > 1, c.m2_rad > 0, c.m3 > 0]) >= 1,
            "softmax": lambda c: True,
        }[self.kind]
        if not expected(self):
            raise ValueError(
                f"margins m1={self.m1}, m2_rad={self.m2_rad}, m3={self.m3} do not describe "
                f"{self.kind!r}; pick the kind that matches, or 'combined'"
            )
        return self


PRESETS: dict[str, MarginConfig] = {
    "softmax": MarginConfig("softmax", scale=1.0),
    "normface": MarginConfig("normface", scale=30.0),
    "sphereface": MarginConfig("sphereface", scale=30.0, m1=4),
    "arcface": MarginConfig("arcface", scale=64.0, m2_rad=0.5),
    "cosface": MarginConfig("cosface", scale=64.0, m3=0.35),
    "combined": MarginConfig("combined", scale=64.0, m2_rad=0.3, m3=0.2),
}


def target_psi(cos_theta: torch.Tensor, config: MarginConfig) -> torch.Tensor:
    """ψ(θ) for the target class, from cos θ, with exact gradients (no in-place, no no_grad).

    cos θ is clamped just inside [-1, 1] so that arccos has a finite derivative.
    """
    m1, m2, m3 = config.m1, config.m2_rad, config.m3
    if m1 == 1 and m2 == 0.0:
        return cos_theta - m3
    eps = 1e-7
    theta = torch.acos(cos_theta.clamp(-1 + eps, 1 - eps))
    if m1 > 1:
        k = torch.floor(m1 * theta / math.pi).detach()  # piecewise constant: no gradient
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)^k
        return sign * torch.cos(m1 * theta) - 2.0 * k - m3
    arc = torch.cos(theta + m2)
    fallback = cos_theta - m2 * math.sin(m2)
    return torch.where(theta + m2 <= math.pi, arc, fallback) - m3


class MarginHead(nn.Module):
    """Class centres and the margin logit; ``forward`` returns (B, C) logits for cross-entropy."""

    def __init__(self, embedding_dim: int, num_classes: int, config: MarginConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if config.kind == "softmax" else None

    def cosine(self, features: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """cos θ between normalised features (B, D) and normalised class centres (C, D)."""
        w = self.weight if weight is None else weight
        return F.linear(F.normalize(features, dim=1), F.normalize(w, dim=1))  # (B, C)

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Apply ψ to the target column of a (B, C) cosine matrix and scale; labels -1 skip."""
        has_target = labels >= 0
        rows = torch.nonzero(has_target, as_tuple=True)[0]
        cols = labels[has_target]
        target = cos[rows, cols]
        # half precision: compute ψ (acos, cos) in fp32, then come back
        wide = target.float() if target.dtype in (torch.float16, torch.bfloat16) else target
        psi = target_psi(wide, self.config).to(cos.dtype)
        mask = torch.zeros_like(cos, dtype=torch.bool)
        mask[rows, cols] = True
        full = torch.zeros_like(cos)
        full = full.index_put((rows, cols), psi)
        return self.config.scale * torch.where(mask, full, cos)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits (B, C); train with ``F.cross_entropy(logits, labels)``."""
        if self.config.kind == "softmax":
            return F.linear(features, self.weight, self.bias)
        return self.margin_logits(self.cosine(features), labels)


def margin_loss(head: MarginHead, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the head's logits."""
    return F.cross_entropy(head(features, labels).float(), labels)
