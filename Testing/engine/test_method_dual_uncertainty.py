"""Dual-network uncertainty-guided pseudo-labelling: loss terms L1-L5 by hand, ResNetVNet, the method."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from semisupseg.errors import InputError
from semisupseg.losses.dual_uncertainty_terms import (
    confident_disagreement_mask,
    cosine_output_consistency,
    entropy_filter,
    filtered_pseudo_label_ce,
    kl_rectified_pseudo_label_loss,
    lower_percentile,
    mutual_correction_loss,
    prototype_alignment_loss,
    union_pseudo_label,
)
from semisupseg.methods import METHODS, Batch, StepContext, build_method
from semisupseg.methods.dual_uncertainty import DualUncertainty, logits_and_decoder_features, to_grid
from semisupseg.networks import build_network
from semisupseg.networks.resnet_vnet import BasicBlock3d, ResNetVNet

from method_test_helpers import bf16_cpu_step, random_batch, sphere_dice_before_and_after_training, tiny_unet

LN3 = math.log(3.0)
TINY_DUAL = {"resnet_base_width": 4, "resnet_blocks": [1, 1, 1, 1]}


def binary_probs(foreground) -> torch.Tensor:
    """(1, 2, N) probabilities from a list of foreground probabilities."""
    p = torch.tensor(foreground, dtype=torch.float32)
    return torch.stack([1 - p, p])[None]


# ---------------------------------------------------------------- L1: mutual correction


def test_confident_disagreement_is_the_xor_of_confident_foreground_calls():
    # A: fg .9 (confident fg), .7 (confident fg), .55 (fg but below tau = .6), .2 (background)
    # B: fg .9 (confident fg), .3 (background),   .8 (confident fg),          .65 (confident fg)
    a, b = binary_probs([0.9, 0.7, 0.55, 0.2]), binary_probs([0.9, 0.3, 0.8, 0.65])
    mask = confident_disagreement_mask(a, b, tau=0.6)
    assert mask.tolist() == [[False, True, True, True]]
    # the reference formula, written out: ((yhat^A = 1) & (max p^A >= tau)) XOR (same for B)
    conf_a = (a.argmax(1) == 1) & (a.max(1).values >= 0.6)
    conf_b = (b.argmax(1) == 1) & (b.max(1).values >= 0.6)
    assert torch.equal(mask, conf_a ^ conf_b)


def test_confident_disagreement_with_three_classes_compares_the_classes():
    # voxel 0: A class 1 (.8), B class 2 (.7): both confident, different classes -> 1
    # voxel 1: A class 2 (.8), B class 2 (.7): same confident class -> 0
    # voxel 2: A class 2 (.5, not confident), B background -> 0
    a = torch.tensor([[[0.1, 0.1, 0.3], [0.8, 0.1, 0.2], [0.1, 0.8, 0.5]]])
    b = torch.tensor([[[0.2, 0.2, 0.9], [0.1, 0.1, 0.05], [0.7, 0.7, 0.05]]])
    assert confident_disagreement_mask(a, b, tau=0.6).tolist() == [[True, False, False]]


def test_mutual_correction_loss_by_hand():
    p = binary_probs([0.9, 0.7, 0.55, 0.2]).requires_grad_()
    y = torch.tensor([[1, 0, 1, 0]])
    mask = torch.tensor([[False, True, True, True]])
    # (p1 - y)^2 on the masked voxels: .49, .2025, .04 -> sum .7325 over 3 voxels = 0.244167
    loss = mutual_correction_loss(p, y, mask)
    assert loss.item() == pytest.approx(0.7325 / 3, rel=1e-6)
    loss.backward()
    assert p.grad[0, :, 0].abs().sum() == 0  # unmasked voxel gets no gradient
    # the mask count carries + 1e-16, so an empty mask gives 0, not NaN
    assert mutual_correction_loss(p, y, torch.zeros_like(mask)).item() == 0.0


def test_mutual_correction_sums_squared_errors_over_foreground_classes():
    probs = torch.tensor([[[0.2], [0.5], [0.3]]])  # C = 3, one voxel
    # label 2: (0.5 - 0)^2 + (0.3 - 1)^2 = 0.25 + 0.49 = 0.74 (background channel not counted)
    assert float(mutual_correction_loss(probs, torch.tensor([[2]]), torch.tensor([[True]]))) == pytest.approx(0.74)


# ---------------------------------------------------------------- L2: entropy-filtered cross pseudo supervision


def test_union_pseudo_label():
    # binary: OR of the two predictions
    a, b = binary_probs([0.1, 0.9, 0.2, 0.8]), binary_probs([0.3, 0.4, 0.7, 0.9])
    assert union_pseudo_label(a, b).tolist() == [[0, 1, 1, 1]]
    # three classes: the foreground class, or the more confident network's class when both are foreground
    a = torch.tensor([[[0.1, 0.1, 0.8], [0.6, 0.1, 0.1], [0.3, 0.8, 0.1]]])  # A: 1 (.6), 2 (.8), 0
    b = torch.tensor([[[0.1, 0.3, 0.2], [0.2, 0.5, 0.1], [0.7, 0.2, 0.7]]])  # B: 2 (.7), 1 (.5), 2 (.7)
    assert union_pseudo_label(a, b).tolist() == [[2, 2, 2]]


def test_lower_percentile_matches_numpy():
    values = torch.rand(1000, generator=torch.Generator().manual_seed(3))
    for q in (0.0, 20.0, 50.0, 73.3, 100.0):
        assert float(lower_percentile(values, q)) == pytest.approx(float(np.percentile(values.numpy(), q)), rel=1e-6)


def test_entropy_filter_against_a_plain_numpy_computation():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 2, 3, 4, 5, generator=gen).softmax(1), torch.rand(2, 2, 3, 4, 5, generator=gen).softmax(1)
    kept = entropy_filter(a, b, percentile=20.0)

    def entropy(p):
        p = p.double().numpy()
        return -(p * np.log(p + 1e-10)).sum(axis=1)

    h_a, h_b = entropy(a), entropy(b)
    ignored = (h_a >= np.percentile(h_a, 20)) & (h_b >= np.percentile(h_b, 20))
    assert np.array_equal(kept.numpy(), ~ignored)
    assert 0.2 <= kept.float().mean() <= 0.4 + 1e-6


def test_filtered_pseudo_label_ce_by_hand():
    logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, LN3]]], requires_grad=True)  # (1, 2, 3)
    target = torch.tensor([[1, 1, 1]])
    kept = torch.tensor([[True, False, True]])
    # CE: voxel 0 -ln(.5) = ln 2 = 0.693147, voxel 2 -ln(.75) = 0.287682; mean over K = 0.490415
    plain = filtered_pseudo_label_ce(logits, target, kept)
    assert plain.item() == pytest.approx((math.log(2) - math.log(0.75)) / 2, rel=1e-6)
    # the released N / |K| factor: x 3 / 2
    scaled = filtered_pseudo_label_ce(logits, target, kept, scale_by_kept_fraction=True)
    assert scaled.item() == pytest.approx(1.5 * plain.item(), rel=1e-6)
    plain.backward()
    assert logits.grad[0, :, 1].abs().sum() == 0 and logits.grad[0, :, 0].abs().sum() > 0
    assert filtered_pseudo_label_ce(logits, target, torch.zeros_like(kept)).item() == 0.0


# ---------------------------------------------------------------- L3, L4


def test_kl_rectified_loss_by_hand_and_teacher_gets_no_gradient():
    # one voxel: teacher B logits [0, ln 3] -> p^B = (.25, .75), ytilde = 1; student A [0, 0] -> (.5, .5)
    teacher = torch.tensor([[[0.0], [LN3]]], requires_grad=True)
    student = torch.tensor([[[0.0], [0.0]]], requires_grad=True)
    # D = .25 ln(.25/.5) + .75 ln(.75/.5) = -0.173287 + 0.304099 = 0.130812
    d = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    # L = exp(-D) CE + D = 0.877384 * ln 2 + 0.130812 = 0.738971
    expected = math.exp(-d) * math.log(2.0) + d
    loss = kl_rectified_pseudo_label_loss(student, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_kl_rectified_loss_is_the_plain_ce_where_the_networks_agree():
    logits = torch.randn(2, 3, 4, 4)
    loss = kl_rectified_pseudo_label_loss(logits, logits)
    ce = nn.functional.cross_entropy(logits, logits.argmax(1))
    torch.testing.assert_close(loss, ce)


def test_cosine_consistency_by_hand_with_gradient_to_both():
    # voxel 0: (1, 0) vs (.6, .8) -> cos .6 -> 0.4; voxel 1: identical -> 0; mean 0.2
    a = torch.tensor([[[1.0, 0.5], [0.0, 0.5]]], requires_grad=True)
    b = torch.tensor([[[0.6, 0.5], [0.8, 0.5]]], requires_grad=True)
    loss = cosine_output_consistency(a, b)
    assert loss.item() == pytest.approx(0.2, rel=1e-6)
    loss.backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


# ---------------------------------------------------------------- L5: prototypes


def prototype_example():
    """Six voxels, 2-d features (B = 1, spatial 6); see the test for the hand computation."""
    features = torch.tensor([[[1.0, 2.0, 0.0, 1.0, 3.0, 0.0], [0.0, 0.0, 3.0, 1.0, 4.0, 2.0]]], requires_grad=True)
    pseudo = torch.tensor([[0, 0, 1, 1, 0, 1]])
    kept = torch.tensor([[True, True, True, False, False, False]])
    own = torch.tensor([[0, 0, 1, 1, 0, 1]])
    return features, pseudo, kept, own


def test_prototype_alignment_by_hand():
    features, pseudo, kept, own = prototype_example()
    # reliable: class 0 = voxels 0, 1 -> mu_0 = (1.5, 0) -> (1, 0); class 1 = voxel 2 -> (0, 1)
    # uncertain: U_1 = {3: (1, 1) -> (.7071, .7071), 5: (0, 2) -> (0, 1)}, U_0 = {4: (3, 4) -> (.6, .8)}
    # sample_fraction 1: n = |U_1| = 2 -> all of U_1 and the one voxel of U_0
    # pull = mean(||(.7071, .7071) - (0, 1)||, 0) + ||(.6, .8) - (1, 0)||
    #      = mean(0.765367, 0) + 0.894427 = 1.277110
    pull = math.sqrt(0.5 + (1 - math.sqrt(0.5)) ** 2) / 2 + math.sqrt(0.16 + 0.64)
    # ||mu_0 - mu_1|| = sqrt 2 = 1.414214: margin 1 -> no push; margin 2 -> 2 - 1.414214 = 0.585786
    loss = prototype_alignment_loss(features, pseudo, kept, own, 2, sample_fraction=1.0, margin=1.0)
    assert loss.item() == pytest.approx(pull, rel=1e-5)
    loss_push = prototype_alignment_loss(features, pseudo, kept, own, 2, sample_fraction=1.0, margin=2.0)
    assert loss_push.item() == pytest.approx(pull + 2.0 - math.sqrt(2.0), rel=1e-5)


def test_prototype_gradients_move_uncertain_features_and_separate_reliable_classes():
    features, pseudo, kept, own = prototype_example()
    prototype_alignment_loss(features, pseudo, kept, own, 2, sample_fraction=1.0, margin=1.0).backward()
    reliable_grad, uncertain_grad = features.grad[0, :, :3], features.grad[0, :, 3:]
    # prototypes are targets in the pull term: reliable features are not dragged to uncertain ones
    assert reliable_grad.abs().sum() == 0
    assert uncertain_grad[:, :2].abs().sum() > 0  # voxel 5 already sits on its prototype
    features.grad = None
    prototype_alignment_loss(features, pseudo, kept, own, 2, sample_fraction=1.0, margin=2.0).backward()
    assert features.grad[0, :, :3].abs().sum() > 0  # the push acts on the reliable features


def test_prototype_sampling_takes_one_percent_of_the_uncertain_foreground():
    features, pseudo, kept, own = prototype_example()
    # n = floor(0.01 * 2) = 0: no uncertain voxel drawn, only the push term remains
    loss = prototype_alignment_loss(features, pseudo, kept, own, 2, sample_fraction=0.01, margin=2.0)
    assert loss.item() == pytest.approx(2.0 - math.sqrt(2.0), rel=1e-5)
    # n = floor(0.5 * 2) = 1: one of voxels 3, 5 and voxel 4; seeded draw is reproducible
    draws = {
        round((prototype_alignment_loss(features, pseudo, kept, own, 2, 0.5, 1.0,
                                             generator=torch.Generator().manual_seed(s))).item(), 5)
        for s in range(20)
    }
    assert draws <= {round(0.765367 + 0.894427, 5), round(0.0 + 0.894427, 5)} and len(draws) == 2


def test_prototype_loss_without_reliable_voxels_is_zero_with_a_graph():
    features, pseudo, _, own = prototype_example()
    loss = prototype_alignment_loss(features, pseudo, torch.zeros(1, 6, dtype=torch.bool), own, 2, 1.0, 1.0)
    assert float(loss.detach()) == 0.0 and loss.requires_grad


# ---------------------------------------------------------------- ResNetVNet


def test_resnet_vnet_shapes_features_and_structure(one_thread):
    torch.manual_seed(0)
    net = ResNetVNet(in_channels=1, num_classes=3, base_width=4).eval()
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        logits = net(x)
        logits_d, decoder_features = net.forward_decoder_features(x)
        logits_f, embedding = net.forward_features(x)
    assert net.size_divisor == 16
    assert logits.shape == (1, 3, 32, 32, 16)
    assert decoder_features.shape == (1, 4, 32, 32, 16)  # b channels at full resolution
    assert embedding.shape == (1, 256, 4, 4, 2)  # the engine's embedding contract
    torch.testing.assert_close(logits, logits_d)
    torch.testing.assert_close(logits, logits_f)
    torch.testing.assert_close(net.head(decoder_features), logits)  # features feed the classifier
    # ResNet-34: 3 + 4 + 6 + 3 basic blocks at 2b..16b, a stride-1 7x7x7 stem, no pooling
    assert [len(stage) for stage in net.stages] == [3, 4, 6, 3]
    assert [stage[0].conv1.out_channels for stage in net.stages] == [8, 16, 32, 64]
    assert sum(isinstance(m, BasicBlock3d) for m in net.modules()) == 16
    assert net.stem[0].kernel_size == (7, 7, 7) and net.stem[0].stride == (1, 1, 1)
    assert not any(isinstance(m, nn.MaxPool3d) for m in net.modules())


def test_resnet_vnet_backward_reaches_every_parameter_and_checks_sizes(one_thread):
    torch.manual_seed(0)
    net = ResNetVNet(in_channels=1, num_classes=2, base_width=4, blocks=(1, 1, 1, 1), projection=False)
    logits, features = net.forward_decoder_features(torch.randn(2, 1, 32, 16, 16))
    (logits.sum() + features.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.zeros(1, 1, 32, 24, 16))
    with pytest.raises(RuntimeError, match="projection"):
        net.forward_features(torch.zeros(1, 1, 16, 16, 16))


# ---------------------------------------------------------------- the method


def test_decoder_features_of_the_engine_networks_feed_their_classifier(one_thread):
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, 32, 16)
    for net in (tiny_unet(), build_network("vnet", 1, 2, n_filters=4)):
        net.eval()
        with torch.no_grad():
            logits, features = logits_and_decoder_features(net, x)
            torch.testing.assert_close(logits, net(x))
            torch.testing.assert_close(net.head(features), logits)
        assert features.shape[2:] == x.shape[2:]
    with pytest.raises(TypeError, match="decoder feature"):
        logits_and_decoder_features(nn.Conv3d(1, 2, 1), x)


def test_to_grid_samples_label_maps_nearest():
    labels = torch.arange(16).reshape(1, 4, 4, 1)
    assert torch.equal(to_grid(labels, torch.Size([4, 4, 1])), labels)
    assert to_grid(labels, torch.Size([2, 2, 1])).tolist() == [[[[0], [2]], [[8], [10]]]]


def test_registered_with_a_description_and_json_defaults():
    assert METHODS["dual_uncertainty"] is DualUncertainty
    assert DualUncertainty.uses_unlabelled and DualUncertainty.description
    json.dumps(DualUncertainty.defaults)
    for key in DualUncertainty.defaults:
        assert key in DualUncertainty.__doc__, f"option {key} is not documented"


@pytest.mark.parametrize(
    "options, match",
    [
        ({"no_such_option": 1}, "Unknown option"),
        ({"entropy_percentile": 150}, "entropy_percentile"),
        ({"resnet_blocks": [3, 4]}, "resnet_blocks"),
        ({"as_released": "yes"}, "as_released"),
        ({"confidence_threshold": -0.1}, "confidence_threshold"),
    ],
)
def test_bad_options_are_input_errors(options, match):
    with pytest.raises(InputError, match=match):
        build_method("dual_uncertainty", tiny_unet, 2, options)


PARTS = {"sup_a", "sup_b", "dice_a", "dice_b", "mc_a", "mc_b", "cps", "kl", "cos", "proto", "kept_fraction", "weaker"}


def run_step(options, batch, seed=0, progress=(30, 100)):
    """One training step from a seeded initialisation; returns (method, output) after backward."""
    torch.manual_seed(seed)
    method = build_method("dual_uncertainty", tiny_unet, 2, {**TINY_DUAL, **options})
    method.train()
    torch.manual_seed(seed + 1)
    out = method.training_step(batch, StepContext(*progress))
    out.loss.backward()
    return method, out


def test_training_step_parts_and_gradient_to_both_networks(one_thread):
    method, out = run_step({"prototype_sample_fraction": 1.0}, random_batch())
    assert torch.isfinite(out.loss)
    assert set(out.parts) == PARTS
    assert all(not v.requires_grad and v.dim() == 0 for v in out.parts.values())
    assert isinstance(method.net_a, ResNetVNet)
    assert method.inference_networks() == [method.net_a, method.net_b]
    assert len(method.trainable_parameters()) == len(list(method.net_a.parameters())) + len(
        list(method.net_b.parameters())
    )
    for net in (method.net_a, method.net_b):
        used = [p for name, p in net.named_parameters() if not name.startswith("projection.")]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in used)
        assert sum(float(p.grad.abs().sum()) for p in used) > 0
    # the total is the documented sum of the parts (weights 1, lambda_c = 0.1 ramp(0.3))
    p = out.parts
    lambda_c = 0.1 * math.exp(-5 * (1 - 0.3) ** 2)
    expected = p["sup_a"] + p["sup_b"] + p["kl"] + p["cos"] + p["cps"] + lambda_c * p["proto"]
    torch.testing.assert_close(out.loss.detach(), expected)
    weaker_is_a = bool(p["dice_a"] > p["dice_b"])
    assert float(p["weaker"]) == (0.0 if weaker_is_a else 1.0)


def test_as_released_trains_only_l1_l3_l4(one_thread):
    batch = random_batch(n_l=1, n_u=1)
    paper_method, paper = run_step({"prototype_sample_fraction": 1.0}, batch)
    released_method, released = run_step({"prototype_sample_fraction": 1.0, "as_released": True}, batch)
    # same initialisation and dropout: the logged terms agree, but the loss leaves out L2 and L5
    for key in ("sup_a", "sup_b", "kl", "cos", "cps", "proto"):
        torch.testing.assert_close(paper.parts[key], released.parts[key])
    r = released.parts
    torch.testing.assert_close(released.loss.detach(), r["sup_a"] + r["sup_b"] + r["kl"] + r["cos"])
    assert float(r["cps"]) > 0
    # ... so the gradients differ
    pairs = zip(paper_method.net_a.parameters(), released_method.net_a.parameters())
    grads = [(p.grad - q.grad).abs().sum() for p, q in pairs]
    assert float(sum(grads)) > 0


def test_step_under_bf16_autocast_gives_an_fp32_loss(one_thread):
    # the trainer runs the step under bf16 autocast on a GPU; the same dtype mix on the CPU
    out = bf16_cpu_step("dual_uncertainty", {**TINY_DUAL, "prototype_sample_fraction": 1.0})
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(torch.isfinite(v) for v in out.parts.values())
    out.loss.backward()


def test_step_without_unlabelled_patches(one_thread):
    batch = random_batch(n_l=1, n_u=1)
    _, out = run_step({}, Batch(batch.x_l, batch.y_l, batch.x_l[:0]))
    assert torch.isfinite(out.loss) and float(out.parts["cps"]) == 0.0 and float(out.parts["proto"]) == 0.0


def test_three_classes(one_thread):
    torch.manual_seed(0)
    method = build_method(
        "dual_uncertainty", lambda: tiny_unet(num_classes=3), 3,
        {**TINY_DUAL, "prototype_sample_fraction": 1.0},
    )
    batch = random_batch(n_l=1, n_u=1)
    labels = torch.randint(0, 3, batch.y_l.shape, generator=torch.Generator().manual_seed(1))
    out = method.training_step(Batch(batch.x_l, labels, batch.x_u), StepContext(50, 100))
    out.loss.backward()
    assert torch.isfinite(out.loss) and float(out.parts["proto"]) > 0


# ---------------------------------------------------------------- it learns


@pytest.mark.slow
def test_dual_uncertainty_learns_a_sphere(one_thread):
    # 10 % of the uncertain voxels instead of 1 %: tiny patches would otherwise draw none
    options = {**TINY_DUAL, "prototype_sample_fraction": 0.1}
    untrained, trained = sphere_dice_before_and_after_training("dual_uncertainty", options)
    assert trained > 0.6 and trained > untrained + 0.3, (untrained, trained)
