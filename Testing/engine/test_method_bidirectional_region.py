"""Bidirectional uncertainty-aware region learning: region masks and losses by hand, the method, learning."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from semisupseg.errors import InputError
from semisupseg.losses import SupervisedLoss
from semisupseg.losses.region_terms import (
    high_uncertainty_mask,
    low_uncertainty_mask,
    masked_cross_entropy,
    masked_dice_loss,
    normalised_entropy,
    uncertainty_weighted_cross_entropy,
)
from semisupseg.methods import METHODS, Batch, StepContext, build_method
from semisupseg.methods.bidirectional_region import BidirectionalRegion

from method_test_helpers import bf16_cpu_step, random_batch, sphere_dice_before_and_after_training, tiny_unet

LN3 = math.log(3.0)


# ---------------------------------------------------------------- uncertainty and regions


def test_normalised_entropy():
    probs = torch.tensor([[[0.5, 1.0, 0.25], [0.5, 0.0, 0.75]]])  # (1, 2, 3)
    u = normalised_entropy(probs)
    # (.5, .5) -> 1; (1, 0) -> 0; (.25, .75) -> (.25 ln 4 + .75 ln(4/3)) / ln 2 = 0.811278
    expected = [1.0, 0.0, (0.25 * math.log(4) + 0.75 * math.log(4 / 3)) / math.log(2)]
    assert u.tolist()[0] == pytest.approx(expected, abs=1e-5)
    assert float(normalised_entropy(torch.full((1, 4, 2), 0.25)).min()) == pytest.approx(1.0, abs=1e-5)


U = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]])


def test_high_uncertainty_region_percentile_and_absolute():
    # the most uncertain 20 % of 10 voxels: 0.9 and 1.0 (the voxels above numpy's 80th percentile, 0.82)
    assert high_uncertainty_mask(U, "percentile", 0.2, 0.5).tolist() == [[False] * 8 + [True] * 2]
    assert np.array_equal(high_uncertainty_mask(U, "percentile", 0.2, 0.5).numpy(), U.numpy() > np.percentile(U, 80))
    # absolute: U >= 0.5 -> 0.5 .. 1.0
    assert high_uncertainty_mask(U, "absolute", 0.2, 0.5).tolist() == [[False] * 4 + [True] * 6]


def test_low_uncertainty_region_percentile_and_absolute():
    # the 80 % most certain: 0.1 .. 0.8
    assert low_uncertainty_mask(U, "percentile", 0.8, 0.75).tolist() == [[True] * 8 + [False] * 2]
    # absolute, strict as UA-MT: U < 0.75 -> 0.1 .. 0.7
    assert low_uncertainty_mask(U, "absolute", 0.8, 0.75).sum() == 7
    with pytest.raises(ValueError, match="threshold mode"):
        low_uncertainty_mask(U, "median", 0.8, 0.75)


def test_percentile_regions_have_the_asked_size_even_with_ties():
    # bf16 teacher logits make many voxels share one entropy value: the count must still be exact
    tied = torch.tensor([[0.5] * 7 + [0.2, 0.9, 0.9]])
    high = high_uncertainty_mask(tied, "percentile", 0.2, 0.5)
    assert high.sum() == 2 and high[0, 8:].all()
    low = low_uncertainty_mask(tied, "percentile", 0.3, 0.5)
    assert low.sum() == 3 and low[0, 7] and not low[0, 8:].any()
    assert high_uncertainty_mask(tied, "percentile", 0.0, 0.5).sum() == 0


def test_masked_cross_entropy_by_hand():
    logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, LN3]]], requires_grad=True)
    target = torch.tensor([[1, 1, 1]])
    # voxels 0 and 2: ln 2 = 0.693147 and -ln .75 = 0.287682 -> mean 0.490415
    loss = masked_cross_entropy(logits, target, torch.tensor([[True, False, True]]))
    assert loss.item() == pytest.approx((math.log(2) - math.log(0.75)) / 2, rel=1e-6)
    empty = masked_cross_entropy(logits, target, torch.zeros(1, 3, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


def test_masked_dice_by_hand_and_equal_to_the_supervised_dice_on_a_full_mask():
    # p_fg = .75, .5, .25 (logits [0, ln 3], [0, 0], [ln 3, 0]); target 1, 0, 1; mask voxels 0, 1
    logits = torch.tensor([[[0.0, 0.0, LN3], [LN3, 0.0, 0.0]]])
    target = torch.tensor([[1, 0, 1]])
    # intersection .75; sum p^2 = .5625 + .25 = .8125; sum g^2 = 1
    # Dice loss = 1 - (1.5 + 1e-5) / (1.8125 + 1e-5) = 0.172412
    loss = masked_dice_loss(logits, target, torch.tensor([[True, True, False]]))
    assert loss.item() == pytest.approx(1 - (1.5 + 1e-5) / (1.8125 + 1e-5), rel=1e-6)
    # with every voxel in the mask it is the Dice part of SupervisedLoss (MONAI's DiceCELoss)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4, generator=gen)
    target = torch.randint(0, 3, (2, 4, 4, 4), generator=gen)
    full = masked_dice_loss(logits, target, torch.ones(2, 4, 4, 4, dtype=torch.bool))
    torch.testing.assert_close(full, SupervisedLoss(3).parts(logits, target)["dice"])
    assert masked_dice_loss(logits, target, torch.zeros(2, 4, 4, 4, dtype=torch.bool)).item() == 0.0


def test_uncertainty_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [0.0, LN3]]])  # CE to class 1: ln 2, -ln .75
    target = torch.tensor([[1, 1]])
    u = torch.tensor([[1.0, 0.5]])
    # mean(1 * .693147, .5 * .287682) = 0.418494
    expected = (math.log(2) - 0.5 * math.log(0.75)) / 2
    assert uncertainty_weighted_cross_entropy(logits, target, u).item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- the method


def test_registered_with_a_description_and_json_defaults():
    assert METHODS["bidirectional_region"] is BidirectionalRegion
    assert BidirectionalRegion.uses_unlabelled and BidirectionalRegion.description
    json.dumps(BidirectionalRegion.defaults)
    for key in BidirectionalRegion.defaults:
        assert key in BidirectionalRegion.__doc__, f"option {key} is not documented"


@pytest.mark.parametrize(
    "options, match",
    [
        ({"no_such_option": 1}, "Unknown option"),
        ({"threshold_mode": "median"}, "threshold_mode"),
        ({"labelled_weighting": "hard"}, "labelled_weighting"),
        ({"high_uncertainty_fraction": 1.5}, "high_uncertainty_fraction"),
        ({"unlabelled_dice": 1}, "unlabelled_dice"),
    ],
)
def test_bad_options_are_input_errors(options, match):
    with pytest.raises(InputError, match=match):
        build_method("bidirectional_region", tiny_unet, 2, options)


PARTS = {"sup", "ce", "dice", "url", "crl", "high_fraction", "low_fraction"}


def test_training_step_parts_gradient_and_ema(one_thread):
    torch.manual_seed(0)
    method = build_method("bidirectional_region", tiny_unet, 2, {})
    method.train()
    out = method.training_step(random_batch(), StepContext(iteration=20, total=100))
    assert torch.isfinite(out.loss)
    assert set(out.parts) == PARTS
    assert all(not v.requires_grad and v.dim() == 0 for v in out.parts.values())
    p = out.parts
    # percentile mode: 20 % of the labelled and 80 % of the unlabelled voxels
    assert float(p["high_fraction"]) == pytest.approx(0.2, abs=1e-4)
    assert float(p["low_fraction"]) == pytest.approx(0.8, abs=1e-4)
    # L = sup + 1.0 url + 1.0 ramp(0.2 / 0.4) crl
    lambda_u = math.exp(-5 * 0.5**2)
    torch.testing.assert_close(out.loss.detach(), p["sup"] + p["url"] + lambda_u * p["crl"])

    out.loss.backward()
    trained = [p for name, p in method.student.named_parameters() if not name.startswith("projection.")]
    assert all(q.grad is not None for q in trained) and sum(float(q.grad.abs().sum()) for q in trained) > 0
    assert all(q.grad is None and not q.requires_grad for q in method.teacher.parameters())
    assert method.inference_networks() == [method.teacher]

    method.after_optimizer_step(StepContext(iteration=0, total=100))  # alpha_0 = 0: teacher := student
    for t, s in zip(method.teacher.state_dict().values(), method.student.state_dict().values()):
        torch.testing.assert_close(t, s)


def test_absolute_mode_soft_weighting_and_crl_dice(one_thread):
    torch.manual_seed(0)
    options = {"threshold_mode": "absolute", "labelled_weighting": "soft", "unlabelled_dice": True}
    method = build_method("bidirectional_region", tiny_unet, 2, options)
    # tau_l(t) = 0.75 + 0.25 ramp(t/T): 0.75 + 0.25 e^-5 at the start, 1.0 at the end
    assert method.low_threshold(0.0) == pytest.approx(0.75 + 0.25 * math.exp(-5.0))
    assert method.low_threshold(1.0) == pytest.approx(1.0)
    out = method.training_step(random_batch(n_l=1, n_u=1), StepContext(iteration=90, total=100))
    assert torch.isfinite(out.loss) and set(out.parts) == PARTS
    out.loss.backward()


def test_step_under_bf16_autocast_gives_an_fp32_loss(one_thread):
    # the trainer runs the step under bf16 autocast on a GPU; the same dtype mix on the CPU
    out = bf16_cpu_step("bidirectional_region", {})
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(torch.isfinite(v) for v in out.parts.values())
    out.loss.backward()


def test_step_without_unlabelled_patches(one_thread):
    torch.manual_seed(0)
    method = build_method("bidirectional_region", tiny_unet, 2, {})
    batch = random_batch(n_l=1, n_u=1)
    out = method.training_step(Batch(batch.x_l, batch.y_l, batch.x_l[:0]), StepContext(5, 10))
    assert torch.isfinite(out.loss) and float(out.parts["crl"]) == 0.0


# ---------------------------------------------------------------- it learns


@pytest.mark.slow
def test_bidirectional_region_learns_a_sphere(one_thread):
    # ema_decay 0.9: over 60 iterations the default 0.99 would leave the teacher averaging the start
    untrained, trained = sphere_dice_before_and_after_training("bidirectional_region", {"ema_decay": 0.9})
    assert trained > 0.6 and trained > untrained + 0.3, (untrained, trained)
