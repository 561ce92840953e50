"""The margin head against a naive per-sample reference, gradcheck, fp16, and monotonicity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    PRESETS,
    MarginConfig,
    MarginHead,
    MarginSchedule,
    adacos_dynamic_scale,
    derived_scale,
    margin_loss,
    target_psi,
)

MARGIN_PRESETS = [k for k in PRESETS if k != "softmax"]


def naive_psi(cos_t: float, c: MarginConfig) -> float:
    """ψ(θ) written out per sample, from the papers."""
    theta = math.acos(max(-1.0, min(1.0, cos_t)))
    if c.m1 > 1:
        k = math.floor(c.m1 * theta / math.pi)
        return (-1) ** k * math.cos(c.m1 * theta) - 2 * k - c.m3
    if theta + c.m2_rad > math.pi:
        return cos_t - c.m2_rad * math.sin(c.m2_rad) - c.m3
    return math.cos(theta + c.m2_rad) - c.m3


def naive_logits_and_loss(
    features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, c: MarginConfig
) -> tuple[torch.Tensor, float]:
    logits = torch.zeros(features.shape[0], weight.shape[0], dtype=torch.float64)
    total = 0.0
    for i in range(features.shape[0]):
        f = features[i].double() / features[i].double().norm()
        row = []
        for j in range(weight.shape[0]):
            w = weight[j].double() / weight[j].double().norm()
            cos_t = float(f @ w)
            row.append(c.scale * (naive_psi(cos_t, c) if j == int(labels[i]) else cos_t))
        logits[i] = torch.tensor(row, dtype=torch.float64)
        top = max(row)
        total += -(row[int(labels[i])] - top - math.log(sum(math.exp(v - top) for v in row)))
    return logits, total / features.shape[0]


def batch(
    seed: int, b: int = 8, d: int = 16, c: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, d, generator=g),
        torch.randn(c, d, generator=g),
        torch.randint(0, c, (b,), generator=g),
    )


@pytest.mark.parametrize("preset", MARGIN_PRESETS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_and_loss_match_naive_reference_fp32(preset: str, seed: int) -> None:
    config = PRESETS[preset].resolved(10)
    features, weight, labels = batch(seed)
    head = MarginHead(16, 10, config)
    with torch.no_grad():
        head.weight.copy_(weight)
    logits = head(features, labels)
    ref_logits, ref_loss = naive_logits_and_loss(features, weight, labels, config)
    torch.testing.assert_close(logits.double(), ref_logits, atol=1e-3 * config.scale, rtol=1e-4)
    assert float(margin_loss(head, features, labels)) == pytest.approx(ref_loss, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("preset", MARGIN_PRESETS)
def test_fp16_logits_within_half_precision_tolerance(preset: str) -> None:
    config = PRESETS[preset].resolved(10)
    features, weight, labels = batch(7)
    head = MarginHead(16, 10, config)
    with torch.no_grad():
        head.weight.copy_(weight)
    ref_logits, _ = naive_logits_and_loss(features, weight, labels, config)
    cos = head.cosine(features.half(), head.weight.half())
    logits16 = head.margin_logits(cos, labels)
    assert logits16.dtype == torch.float16
    torch.testing.assert_close(logits16.double(), ref_logits, atol=2e-2 * config.scale, rtol=2e-2)


@pytest.mark.parametrize("preset", MARGIN_PRESETS)
def test_gradcheck_float64(preset: str) -> None:
    config = PRESETS[preset]
    head = MarginHead(6, 5, config).double()
    g = torch.Generator().manual_seed(3)
    features = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])

    def fn(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head.margin_logits(head.cosine(f, w), labels), labels)

    weight = head.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (features, weight), eps=1e-6, atol=1e-5)


def test_softmax_baseline_is_a_plain_linear_layer() -> None:
    features, weight, labels = batch(4)
    head = MarginHead(16, 10, PRESETS["softmax"])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(torch.arange(10.0))  # type: ignore[union-attr]
    torch.testing.assert_close(head(features, labels), features @ weight.T + torch.arange(10.0))


@pytest.mark.parametrize(
    "config",
    [
        PRESETS["arcface"],
        PRESETS["sphereface"],
        PRESETS["cosface"],
        PRESETS["combined"],
        MarginConfig("arcface", m2_rad=1.2),
        MarginConfig("sphereface", m1=2, m3=0.1),
    ],
    ids=["arcface", "sphereface-m4", "cosface", "combined", "arcface-m1.2", "sphereface-m2-cos"],
)
def test_target_logit_decreases_monotonically_over_all_angles(config: MarginConfig) -> None:
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    psi = target_psi(torch.cos(theta), config)
    assert bool((psi[1:] <= psi[:-1] + 1e-12).all())
    # and the gradient never turns round (it would past ~135° for m2 = 0.5 in the naive form)
    cos = torch.cos(theta[1:-1]).clone().requires_grad_(True)
    target_psi(cos, config).sum().backward()
    assert bool((cos.grad >= -1e-9).all())  # type: ignore[operator]


def test_naive_arcface_would_not_be_monotonic() -> None:
    """The reason for the fallback: cos(θ + m2) rises again past θ = π - m2."""
    theta = torch.linspace(0, math.pi, 1001, dtype=torch.float64)
    naive = torch.cos(theta + 0.5)
    assert bool((naive[1:] > naive[:-1]).any())


def test_sphereface_m4_is_continuous_at_piece_boundaries() -> None:
    config = PRESETS["sphereface"]
    for k in range(1, 4):
        edge = k * math.pi / 4
        lo, hi = torch.cos(torch.tensor([edge - 1e-7, edge + 1e-7], dtype=torch.float64))
        a, b = target_psi(torch.stack([lo, hi]), config)
        assert float(a) == pytest.approx(float(b), abs=1e-5)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (MarginConfig("sphereface", m1=4, m2_rad=0.2), "no monotonic form"),
        (MarginConfig("arcface", m2_rad=0.0), "do not describe 'arcface'"),
        (MarginConfig("cosface", m3=1.5), "m3"),
        (MarginConfig("combined", m1=0), "integer >= 1"),
        (MarginConfig("softmax", m3=0.2), "no margins"),
        (MarginConfig("arcface", m2_rad=0.5, scale=0), "scale"),
    ],
)
def test_unsupported_combinations_fail_at_config_load(config: MarginConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_an_unset_scale_is_derived_from_the_class_count() -> None:
    head = MarginHead(16, 299, PRESETS["cosface"])
    assert head.current_scale == pytest.approx(math.sqrt(2) * math.log(298) / 0.65)
    assert derived_scale(299, PRESETS["normface"]) == pytest.approx(math.sqrt(2) * math.log(298))
    assert MarginHead(16, 10, MarginConfig("cosface", scale=64.0, m3=0.35)).current_scale == 64


def naive_scheduled_psi(cos_t: float, c: MarginConfig, s: MarginSchedule, step: int) -> float:
    """ψ with the margins scaled by the warm-up and SphereFace's λ mixing, per sample."""
    fraction = min(1.0, step / s.warmup_steps) if s.warmup_steps else 1.0
    scaled = MarginConfig(c.kind, c.scale, c.m1, c.m2_rad * fraction, c.m3 * fraction)
    psi = naive_psi(cos_t, scaled)
    if s.lambda_base > 0:
        lam = max(s.lambda_min, s.lambda_base * (1 + s.lambda_gamma * step) ** -s.lambda_power)
        psi = (lam * cos_t + psi) / (1 + lam)
    return psi


@pytest.mark.parametrize(
    ("preset", "schedule"),
    [
        ("arcface", MarginSchedule(warmup_steps=10)),
        ("cosface", MarginSchedule(warmup_steps=4)),
        ("sphereface", MarginSchedule(lambda_base=1000.0)),
        ("combined", MarginSchedule(warmup_steps=7, lambda_base=50.0, lambda_min=1.0)),
    ],
)
@pytest.mark.parametrize("step", [0, 3, 10, 500])
def test_scheduled_margins_match_the_naive_formula(
    preset: str, schedule: MarginSchedule, step: int
) -> None:
    config = PRESETS[preset].resolved(10)
    features, weight, labels = batch(11)
    head = MarginHead(16, 10, config, schedule=schedule)
    with torch.no_grad():
        head.weight.copy_(weight)
    head.set_step(step)
    logits = head(features, labels)
    f = F.normalize(features.double(), dim=1)
    w = F.normalize(weight.double(), dim=1)
    for i, label in enumerate(labels.tolist()):
        cos_t = float(f[i] @ w[label])
        expected = config.scale * naive_scheduled_psi(cos_t, config, schedule, step)  # type: ignore[operator]
        assert float(logits[i, label]) == pytest.approx(expected, abs=1e-4)


def test_sphereface_annealing_follows_the_paper() -> None:
    """λ = max(λ_min, λ0 (1 + γ t)^-p) with the A-Softmax code's λ0 = 1000, γ = 0.12, p = 1."""
    schedule = MarginSchedule(lambda_base=1000.0)
    assert schedule.lam(0) == 1000.0
    assert schedule.lam(100) == pytest.approx(1000.0 / 13.0)
    assert schedule.lam(100_000) == 5.0
    assert MarginSchedule(warmup_steps=4).margin_fraction(2) == 0.5


def test_adacos_dynamic_scale_matches_its_formula_and_is_kept_in_the_state() -> None:
    features, weight, labels = batch(12, b=16, c=10)
    head = MarginHead(16, 10, PRESETS["normface"], adaptive_scale=True)
    with torch.no_grad():
        head.weight.copy_(weight)
    cos = head.cosine(features).double()
    s0 = head.current_scale
    others = [
        sum(math.exp(s0 * float(cos[i, j])) for j in range(10) if j != int(labels[i]))
        for i in range(16)
    ]
    theta_med = float(torch.acos(cos[torch.arange(16), labels]).median())
    expected = math.log(sum(others) / 16) / math.cos(min(math.pi / 4, theta_med))
    assert adacos_dynamic_scale(cos.float(), labels, s0) == pytest.approx(expected, rel=1e-4)
    head.train()
    head(features, labels)
    assert head.current_scale == pytest.approx(expected, rel=1e-4)
    assert float(head.state_dict()["scale"]) == pytest.approx(expected, rel=1e-4)


def test_arcface_without_its_fallback_is_the_naive_form() -> None:
    """Only for the ablation: past θ = π − m2 the target logit rises again."""
    naive = MarginConfig("arcface", scale=1.0, m2_rad=0.5, arcface_fallback=False)
    theta = torch.tensor([math.pi - 0.2], dtype=torch.float64)
    assert float(target_psi(torch.cos(theta), naive)) == pytest.approx(math.cos(math.pi + 0.3))
    fixed = MarginConfig("arcface", scale=1.0, m2_rad=0.5)
    assert float(target_psi(torch.cos(theta), fixed)) == pytest.approx(
        math.cos(math.pi - 0.2) - 0.5 * math.sin(0.5)
    )
