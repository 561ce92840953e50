"""The large-margin softmax family as one head: target logit = s * (cos(m1*θ + m2) - m3).

Other classes keep s * cos θ. Features and class weights are L2-normalised and there is no bias
(NormFace/SphereFace), except for the plain ``softmax`` baseline (a linear layer, with a bias
unless ``bias=False``).

Monotonic forms, so that a larger angle never gives a larger target logit:
- SphereFace (integer m1 > 1): ψ(θ) = (-1)^k cos(m1 θ) - 2k on [kπ/m1, (k+1)π/m1] (Liu et al. 2017).
- ArcFace (m2 > 0): past θ = π - m2, cos(θ + m2) would rise again; there we use the standard
  correction of the ArcFace reference code, ψ(θ) = cos θ - m2 sin(m2) (a CosFace-like penalty),
  which keeps ψ strictly decreasing on [0, π]. ``arcface_fallback=False`` exists only for the
  ablation that checks whether the correction matters.
Margins are in radians (m2) or cosine units (m3); m1 is an integer multiplier.

The scale s (``default_scale``) when a config leaves it unset: from 10,000 classes up, the
published s = 64 (every published margin result, CASIA-WebFace to WebFace42M, used it); below,
derived from the number of classes (``derived_scale``): AdaCos's fixed scale √2·ln(C−1) (Zhang
et al. 2019), divided by ψ(0), the best target cosine the margin allows, so that every head's
best-case target logit is the same. A fixed s = 64 with a few hundred classes saturates the
softmax from the first step (docs/loss_study.md).

Schedules (``MarginSchedule``): a linear warm-up of m2 and m3 over the first steps, and
SphereFace's λ annealing, f = (λ·cos θ + ψ(θ)) / (1 + λ) with λ = max(λ_min, λ0·(1 + γ·t)^-p)
(the A-Softmax reference code: λ0 = 1000, γ = 0.12, p = 1, λ_min = 5). Both are functions of the
step, so a resumed run continues exactly. ``adaptive_scale`` replaces the fixed scale by AdaCos's
dynamic one, updated every training step from the batch (kept in the head's state).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

HeadKind = Literal["softmax", "normface", "sphereface", "arcface", "cosface", "combined"]


@dataclass(frozen=True)
class MarginConfig:
    """One member of the family; ``validate`` refuses combinations we do not implement exactly."""

    kind: HeadKind = "arcface"
    scale: float | None = None  # None: from the class count (``default_scale``)
    m1: int = 1
    m2_rad: float = 0.0
    m3: float = 0.0
    bias: bool = True  # the softmax baseline's bias (SphereFace's zero-bias claim: False)
    arcface_fallback: bool = True  # only for the ablation; without it ψ is not monotonic

    def validate(self) -> MarginConfig:
        """Raise ValueError with a specific message for an unsupported combination."""
        if self.scale is not None and self.scale <= 0:
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
        if self.kind != "softmax" and not self.bias:
            raise ValueError(
                "bias=False applies to the softmax baseline; normalised heads have none"
            )
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

    def resolved(self, num_classes: int) -> MarginConfig:
        """This config with its scale filled in (derived from ``num_classes`` when unset)."""
        if self.scale is not None:
            return self
        return dataclasses.replace(self, scale=default_scale(num_classes, self))


@dataclass(frozen=True)
class MarginSchedule:
    """How the margins come in over training (defaults: at full strength from step 0)."""

    warmup_steps: int = 0  # m2 and m3 rise linearly from 0 to their value over these steps
    lambda_base: float = 0.0  # SphereFace annealing λ0 (0: off); the paper uses 1000
    lambda_gamma: float = 0.12
    lambda_power: float = 1.0
    lambda_min: float = 5.0

    def validate(self) -> MarginSchedule:
        """Raise ValueError for a schedule that cannot work."""
        if self.warmup_steps < 0:
            raise ValueError(f"margin warm-up steps must be >= 0, got {self.warmup_steps}")
        if self.lambda_base < 0 or self.lambda_min < 0 or self.lambda_gamma < 0:
            raise ValueError("SphereFace λ annealing needs lambda_base, lambda_min, gamma >= 0")
        return self

    def margin_fraction(self, step: int) -> float:
        """How much of m2 and m3 applies at ``step`` (1 after the warm-up)."""
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, step / self.warmup_steps)

    def lam(self, step: int) -> float:
        """SphereFace's λ at ``step`` (0: no annealing)."""
        if self.lambda_base <= 0:
            return 0.0
        return max(
            self.lambda_min,
            self.lambda_base * (1.0 + self.lambda_gamma * step) ** -self.lambda_power,
        )


PRESETS: dict[str, MarginConfig] = {
    "softmax": MarginConfig("softmax", scale=1.0),
    "normface": MarginConfig("normface"),
    "sphereface": MarginConfig("sphereface", m1=4),
    "arcface": MarginConfig("arcface", m2_rad=0.5),
    "cosface": MarginConfig("cosface", m3=0.35),
    "combined": MarginConfig("combined", m2_rad=0.3, m3=0.2),
}
#: SphereFace trains with λ annealing (the A-Softmax reference code's values); others need none
PRESET_SCHEDULES: dict[str, MarginSchedule] = {"sphereface": MarginSchedule(lambda_base=1000.0)}


def adacos_fixed_scale(num_classes: int) -> float:
    """AdaCos's fixed scale √2·ln(C−1): where the softmax of cosines neither saturates nor stays
    flat at the start of training (Zhang et al., CVPR 2019, eq. 14)."""
    return math.sqrt(2.0) * math.log(max(num_classes - 1, 2))


def best_target_cosine(config: MarginConfig) -> float:
    """ψ(0): the highest target cosine the margins allow (1 without a margin)."""
    return math.cos(config.m2_rad) - config.m3


#: the scale every published margin recipe trains with (ArcFace, CosFace, insightface's
#: arcface_torch on CASIA-WebFace's 10,575 people, MS1MV2, Glint360K, WebFace42M)
PUBLISHED_SCALE = 64.0
#: from this many classes the default is the published scale; below it (no published margin
#: recipe; our study at 299 classes, docs/loss_study.md) the derived one
PUBLISHED_SCALE_MIN_CLASSES = 10_000


def default_scale(num_classes: int, config: MarginConfig) -> float:
    """The scale of a head that leaves it unset: the published s = 64 from 10,000 classes up
    (the regime every published result was trained in, so a user reproducing MS1MV2 or
    Glint360K gets the published recipe), ``derived_scale`` below (where s = 64 saturates the
    softmax from the first step: docs/loss_study.md)."""
    if num_classes >= PUBLISHED_SCALE_MIN_CLASSES:
        return PUBLISHED_SCALE
    return derived_scale(num_classes, config)


def derived_scale(num_classes: int, config: MarginConfig) -> float:
    """The scale a head uses when none is set: AdaCos's fixed scale divided by ψ(0), so that a
    margin head's best-case target logit s·ψ(0) equals AdaCos's value (e.g. C = 299: normface
    8.06, arcface m2 = 0.5 9.18, cosface m3 = 0.35 12.4)."""
    return adacos_fixed_scale(num_classes) / best_target_cosine(config)


def target_psi(
    cos_theta: torch.Tensor, config: MarginConfig, *, margin_fraction: float = 1.0
) -> torch.Tensor:
    """ψ(θ) for the target class, from cos θ, with exact gradients (no in-place, no no_grad).

    ``margin_fraction`` scales m2 and m3 (the warm-up). cos θ is clamped just inside [-1, 1] so
    that arccos has a finite derivative.
    """
    m1, m2, m3 = config.m1, config.m2_rad * margin_fraction, config.m3 * margin_fraction
    if m1 == 1 and m2 == 0.0:
        return cos_theta - m3
    eps = 1e-7
    theta = torch.acos(cos_theta.clamp(-1 + eps, 1 - eps))
    if m1 > 1:
        k = torch.floor(m1 * theta / math.pi).detach()  # piecewise constant: no gradient
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)^k
        return sign * torch.cos(m1 * theta) - 2.0 * k - m3
    arc = torch.cos(theta + m2)
    if not config.arcface_fallback:
        return arc - m3
    fallback = cos_theta - m2 * math.sin(m2)
    return torch.where(theta + m2 <= math.pi, arc, fallback) - m3


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def adacos_dynamic_scale(cos: torch.Tensor, labels: torch.Tensor, scale: float) -> float:
    """AdaCos's dynamic scale from one batch: ln(B_avg) / cos(min(π/4, θ_med)), where B_avg is
    the mean over samples of Σ_{j≠y} exp(s·cos θ_j) at the current s and θ_med the median target
    angle. Columns may be sharded across ranks (Partial FC): sums are all-reduced; labels -1
    mark rows whose target column lives on another rank."""
    cos = cos.float()
    here = labels >= 0
    rows = torch.nonzero(here, as_tuple=True)[0]
    target = torch.zeros(cos.shape[0], device=cos.device)
    target[rows] = cos[rows, labels[here]]
    exp = torch.exp(scale * cos)
    others = exp.sum(dim=1)
    others[rows] -= exp[rows, labels[here]]
    others, target = _all_reduce_sum(others), _all_reduce_sum(target)
    b_avg = float(others.mean())
    theta_med = float(torch.acos(target.clamp(-1.0, 1.0)).median())
    return math.log(max(b_avg, 1e-12)) / math.cos(min(math.pi / 4, theta_med))


class MarginHead(nn.Module):
    """Class centres and the margin logit; ``forward`` returns (B, C) logits for cross-entropy.

    ``num_classes`` resolves an unset scale; ``set_step`` tells the head where training is, for
    the margin schedule. The current scale and step are buffers: saved and resumed with the head.
    """

    scale: torch.Tensor
    step: torch.Tensor

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        config: MarginConfig,
        *,
        schedule: MarginSchedule | None = None,
        adaptive_scale: bool = False,
        scale_classes: int | None = None,
    ) -> None:
        super().__init__()
        # the scale follows the whole problem's class count (Partial FC holds a shard of it)
        self.config = config.validate().resolved(scale_classes or num_classes)
        self.schedule = (schedule or MarginSchedule()).validate()
        self.adaptive_scale = adaptive_scale
        if adaptive_scale and config.kind == "softmax":
            raise ValueError("adaptive_scale (AdaCos) needs a normalised head, not softmax")
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        with_bias = config.kind == "softmax" and config.bias
        self.bias = nn.Parameter(torch.zeros(num_classes)) if with_bias else None
        assert self.config.scale is not None
        self.register_buffer("scale", torch.tensor(float(self.config.scale)))
        self.register_buffer("step", torch.tensor(0, dtype=torch.long))

    def set_step(self, step: int) -> None:
        """The training step the next forward belongs to (margin warm-up, λ annealing)."""
        self.step.fill_(step)

    @property
    def current_scale(self) -> float:
        """The scale in use (AdaCos's dynamic one when adaptive)."""
        return float(self.scale)

    def cosine(self, features: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """cos θ between normalised features (B, D) and normalised class centres (C, D)."""
        w = self.weight if weight is None else weight
        return F.linear(F.normalize(features, dim=1), F.normalize(w, dim=1))  # (B, C)

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Apply ψ to the target column of a (B, C) cosine matrix and scale; labels -1 skip."""
        if self.adaptive_scale and self.training:
            self.scale.fill_(adacos_dynamic_scale(cos.detach(), labels, float(self.scale)))
        step = int(self.step)
        has_target = labels >= 0
        rows = torch.nonzero(has_target, as_tuple=True)[0]
        cols = labels[has_target]
        target = cos[rows, cols]
        # half precision: compute ψ (acos, cos) in fp32, then come back
        wide = target.float() if target.dtype in (torch.float16, torch.bfloat16) else target
        psi = target_psi(wide, self.config, margin_fraction=self.schedule.margin_fraction(step))
        lam = self.schedule.lam(step)
        if lam > 0:  # SphereFace's annealing: mostly the plain cosine early on
            psi = (lam * wide + psi) / (1.0 + lam)
        psi = psi.to(cos.dtype)
        mask = torch.zeros_like(cos, dtype=torch.bool)
        mask[rows, cols] = True
        full = torch.zeros_like(cos)
        full = full.index_put((rows, cols), psi)
        return self.scale.to(cos.dtype) * torch.where(mask, full, cos)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits (B, C); train with ``F.cross_entropy(logits, labels)``."""
        if self.config.kind == "softmax":
            return F.linear(features, self.weight, self.bias)
        return self.margin_logits(self.cosine(features), labels)


def margin_loss(head: MarginHead, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the head's logits."""
    return F.cross_entropy(head(features, labels).float(), labels)
