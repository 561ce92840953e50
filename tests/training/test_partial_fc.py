"""Partial FC equals the full head at sample rate 1.0, and samples sensibly below it."""

from __future__ import annotations

import pytest
import torch

from training.losses import PRESETS, MarginHead, margin_loss
from training.partial_fc import PartialFC


@pytest.mark.parametrize("preset", ["arcface", "cosface", "sphereface", "combined"])
def test_rate_one_matches_the_full_head_loss_and_gradients(preset: str) -> None:
    torch.manual_seed(0)
    features = torch.randn(12, 32, requires_grad=True)
    labels = torch.randint(0, 20, (12,))
    full = MarginHead(32, 20, PRESETS[preset])
    pfc = PartialFC(32, 20, PRESETS[preset], sample_rate=1.0)
    with torch.no_grad():
        pfc.weight.copy_(full.weight)
    loss_full = margin_loss(full, features, labels)
    (grad_full,) = torch.autograd.grad(loss_full, features)
    loss_pfc = pfc(features, labels).loss
    (grad_pfc,) = torch.autograd.grad(loss_pfc, features)
    torch.testing.assert_close(loss_pfc, loss_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_pfc, grad_full, rtol=1e-4, atol=1e-6)


def test_sampling_keeps_every_positive_and_the_rate() -> None:
    torch.manual_seed(1)
    pfc = PartialFC(16, 1000, PRESETS["arcface"], sample_rate=0.1)
    labels = torch.tensor([3, 500, 999, 3])
    index, mapped = pfc._sample(labels)
    assert index is not None and len(index) == 100
    assert set(labels.tolist()) <= set(index.tolist())
    assert torch.equal(index[mapped], labels)  # labels point at their own centres
    out = pfc(torch.randn(4, 16), labels)
    assert torch.isfinite(out.loss) and 0 <= float(out.accuracy) <= float(out.plain_accuracy) <= 1


def test_shards_split_the_classes() -> None:
    shards = [PartialFC(8, 10, PRESETS["cosface"], rank=r, world_size=3) for r in range(3)]
    assert [(s.class_start, s.class_end) for s in shards] == [(0, 3), (3, 6), (6, 10)]
    assert sum(s.num_local for s in shards) == 10
