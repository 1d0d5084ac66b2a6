"""The released code's threshold hard-negative term (DyCON option hard_negatives="threshold")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semisupseg.losses import hard_negative_threshold, threshold_hard_negative_loss


def loop_reference(z, labels, zt, tlabels, theta):
    """Plain loops: mean over all (sample, i, l) pairs of different labels with cosine > theta."""
    total, count = 0.0, 0
    for b in range(z.shape[0]):
        for i in range(z.shape[1]):
            for l in range(zt.shape[1]):
                yi, yl = int(labels[b, i]), int(tlabels[b, l])
                if yi < 0 or yl < 0 or yi == yl:
                    continue
                c = float(sum(float(z[b, i, d]) * float(zt[b, l, d]) for d in range(z.shape[2])))
                if c > theta:
                    total += -math.log(1.0 - c + 1e-18)
                    count += 1
    return total / count if count else 0.0


def test_threshold_schedule():
    assert hard_negative_threshold(0.0) == pytest.approx(0.3 + 0.2 * math.exp(-5))
    assert hard_negative_threshold(0.45) == pytest.approx(0.5)
    assert hard_negative_threshold(1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_double_loop(seed):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(2, 6, 3, generator=g), dim=-1).double()
    zt = F.normalize(torch.randn(2, 6, 3, generator=g), dim=-1).double()
    labels = torch.randint(-1, 3, (2, 6), generator=g)
    tlabels = torch.randint(-1, 3, (2, 6), generator=g)
    for theta in (-0.5, 0.0, 0.3):
        got = threshold_hard_negative_loss(z, labels, zt, tlabels, theta).item()
        assert got == pytest.approx(loop_reference(z, labels, zt, tlabels, theta), rel=1e-9, abs=1e-12)


def test_by_hand_and_gradients():
    # one sample; student anchor (1, 0) label 0; teacher (0.8, 0.6) label 1 -> cosine 0.8 > 0.5,
    # teacher (0, 1) label 1 -> cosine 0 (not hard); teacher (1, 0) label 0 -> same label.
    z = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    zt = torch.tensor([[[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]], requires_grad=True)
    loss = threshold_hard_negative_loss(z, torch.tensor([[0]]), zt, torch.tensor([[1, 1, 0]]), 0.5)
    assert loss.item() == pytest.approx(-math.log(1 - 0.8))  # 1.6094
    loss.backward()
    assert z.grad.abs().sum() > 0 and zt.grad is None
    none = threshold_hard_negative_loss(z, torch.tensor([[0]]), zt, torch.tensor([[0, 0, 0]]), 0.5)
    assert none.item() == 0.0
