"""The candidate uncertainty sources: hand-computed values on tiny tensors, and the flip bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from semisupseg.inference.uncertainty_sources import (
    FLIP_AXES,
    disagreement_pair,
    error_probability,
    flipped_probabilities,
    source_map,
    total_variation,
)


def test_total_variation_by_hand():
    p_a = torch.tensor([[0.9, 0.5, 0.2], [0.1, 0.5, 0.8]])  # (C=2, 3 voxels)
    p_b = torch.tensor([[0.6, 0.5, 0.7], [0.4, 0.5, 0.3]])
    # 0.5 * (|0.3| + |-0.3|) = 0.3; 0; 0.5 * (0.5 + 0.5) = 0.5
    assert total_variation(p_a, p_b).tolist() == pytest.approx([0.3, 0.0, 0.5])


def test_error_probability_is_one_minus_the_top_class():
    probs = torch.tensor([[0.7, 0.2], [0.2, 0.5], [0.1, 0.3]])  # (C=3, 2 voxels)
    assert error_probability(probs).tolist() == pytest.approx([0.3, 0.5])


class _PositionNet(nn.Module):
    """Not flip-equivariant on purpose: class-1 probability grows with the x index of the input window."""

    def forward(self, x):
        ramp = torch.linspace(-3, 3, x.shape[2]).view(1, 1, -1, 1, 1).expand_as(x)
        logits = torch.cat([torch.zeros_like(x), ramp + 0 * x], dim=1)
        return logits


def _predict(networks, image, mc):
    with torch.no_grad():
        probs = torch.softmax(networks[0](image[None, None].float()), dim=1)[0]
    return probs, None


def test_flips_are_undone_so_a_position_bound_net_disagrees_only_along_x():
    image = torch.zeros(6, 4, 2)
    samples = flipped_probabilities([_PositionNet()], image, _predict)
    assert samples.shape == (len(FLIP_AXES), 2, 6, 4, 2)
    # the trained flips only (none, x, y, x+y: training never flips z)
    assert FLIP_AXES == ((), (0,), (1,), (0, 1))
    # identity and y flip agree (the net ignores y), as do x and x+y; the x flips are mirrored back
    assert torch.allclose(samples[0], samples[2]) and torch.allclose(samples[1], samples[3])
    assert torch.allclose(samples[1], samples[0].flip(1))
    assert not torch.allclose(samples[1], samples[0])


class _Pair(nn.Module):
    name = "pair"

    def __init__(self):
        super().__init__()
        self.student = nn.Conv3d(1, 2, 1)
        self.teacher = nn.Conv3d(1, 2, 1)

    def inference_networks(self):
        return [self.teacher]


def test_source_map_values_and_disagreement_pair():
    torch.manual_seed(0)
    method = _Pair()
    assert disagreement_pair(method) == (method.student, method.teacher)
    assert disagreement_pair(nn.Linear(1, 1)) is None
    image = torch.randn(4, 4, 4)
    entropy, probs = source_map("entropy", method, image, _predict)
    p = probs.numpy()
    expected = -(p * np.log(p)).sum(0) / math.log(2)
    assert np.allclose(entropy.numpy(), expected, atol=1e-5)
    tv, _ = source_map("disagreement", method, image, _predict)
    p_s, _ = _predict([method.student], image, 0)
    assert np.allclose(tv.numpy(), 0.5 * np.abs(p_s.numpy() - p).sum(0), atol=1e-6)
    with pytest.raises(ValueError, match="unknown uncertainty source"):
        source_map("bogus", method, image, _predict)
