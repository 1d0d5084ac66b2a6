"""UA-MT: its loss terms on hand-worked tensors, the method's step, EMA, options, and that it learns."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from semisupseg.errors import InputError
from semisupseg.methods import METHODS, Batch, StepContext, build_method
from semisupseg.methods.uamt import (
    UAMT,
    masked_softmax_mse,
    mc_mean_probabilities,
    predictive_entropy,
    uamt_threshold,
)

from method_test_helpers import bf16_cpu_step, random_batch, sphere_dice_before_and_after_training, tiny_unet

LN3 = math.log(3.0)


# ---------------------------------------------------------------- loss terms


def test_masked_softmax_mse_by_hand():
    # three voxels, C = 2; softmax of [0, 0] = (.5, .5), of [0, ln 3] = (.25, .75), of [ln 3, 0] = (.75, .25)
    student = torch.tensor([[[0.0, LN3, 0.0], [0.0, 0.0, 0.0]]])  # (1, 2, 3): voxels (.5,.5) (.75,.25) (.5,.5)
    teacher = torch.tensor([[[0.0, 0.0, 0.0], [LN3, 0.0, 0.0]]])  # voxels (.25,.75) (.5,.5) (.5,.5)
    # squared differences summed over classes: 0.0625 + 0.0625 = 0.125, 0.125, 0
    mask = torch.tensor([[True, False, True]])
    # (0.125 + 0) / (C = 2 * 2 certain voxels) = 0.03125
    torch.testing.assert_close(masked_softmax_mse(student, teacher, mask), torch.tensor(0.03125))
    every = torch.ones(1, 3, dtype=torch.bool)
    torch.testing.assert_close(masked_softmax_mse(student, teacher, every), torch.tensor(0.25 / 6))


def test_masked_softmax_mse_sends_gradient_only_to_the_student_and_is_zero_on_an_empty_mask():
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = masked_softmax_mse(student, teacher, torch.rand(2, 4, 4) > 0.5)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    empty = masked_softmax_mse(student, teacher.detach(), torch.zeros(2, 4, 4, dtype=torch.bool))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_threshold_ramps_from_three_quarters_of_ln_c_to_ln_c():
    ln2 = math.log(2.0)
    # sigmoid ramp at progress 0: exp(-5)
    assert uamt_threshold(0.0, 2, 0.75, 1.0, 1.0) == pytest.approx((0.75 + 0.25 * math.exp(-5.0)) * ln2)
    # at half the ramp: exp(-5 * 0.5^2) = exp(-1.25) = 0.2865
    assert uamt_threshold(0.5, 2, 0.75, 1.0, 1.0) == pytest.approx((0.75 + 0.25 * math.exp(-1.25)) * ln2)
    assert uamt_threshold(1.0, 2, 0.75, 1.0, 1.0) == pytest.approx(ln2)
    assert uamt_threshold(1.0, 4, 0.75, 1.0, 1.0) == pytest.approx(math.log(4.0))


class ScriptedNetwork(nn.Module):
    """Returns logits [0, a_k] for every voxel of every input in its k-th call, and records batch sizes."""

    def __init__(self, foreground_logits):
        super().__init__()
        self.foreground_logits = list(foreground_logits)
        self.batch_sizes = []

    def forward(self, x):
        a = self.foreground_logits[len(self.batch_sizes)]
        self.batch_sizes.append(x.shape[0])
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 1] = a
        return logits


def test_mc_mean_probabilities_averages_every_pass_once():
    # 3 passes, 2 per forward: call 0 carries 2 copies with a = 0 (p_fg = .5), call 1 one copy with
    # a = ln 3 (p_fg = .75); mean p_fg = (.5 + .5 + .75) / 3 = 0.583333
    net = ScriptedNetwork([0.0, LN3])
    x = torch.zeros(2, 1, 3, 2, 2)
    mean = mc_mean_probabilities(net, x, passes=3, passes_per_forward=2, noise_std=0.1, noise_clip=0.2)
    assert net.batch_sizes == [4, 2]
    assert mean.shape == (2, 2, 3, 2, 2)
    torch.testing.assert_close(mean[:, 1], torch.full((2, 3, 2, 2), 1.75 / 3))
    # predictive entropy in nats with UA-MT's 1e-6 inside the log
    p = 1.75 / 3
    expected = -(p * math.log(p + 1e-6) + (1 - p) * math.log(1 - p + 1e-6))
    torch.testing.assert_close(predictive_entropy(mean), torch.full((2, 3, 2, 2), expected))


def test_mc_passes_sample_dropout_and_noise(one_thread):
    torch.manual_seed(0)
    teacher = tiny_unet().train()
    x = torch.randn(1, 1, 32, 32, 16)
    one = mc_mean_probabilities(teacher, x, 1, 1, 0.1, 0.2)
    other = mc_mean_probabilities(teacher, x, 1, 1, 0.1, 0.2)
    assert not torch.allclose(one, other)  # two passes differ: the uncertainty is not trivially 0


# ---------------------------------------------------------------- the method


def test_registered_with_a_description_and_json_defaults():
    import json

    assert METHODS["uamt"] is UAMT
    assert UAMT.uses_unlabelled and UAMT.description
    json.dumps(UAMT.defaults)
    for key in UAMT.defaults:
        assert key in UAMT.__doc__, f"option {key} is not documented"


@pytest.mark.parametrize(
    "options, match",
    [
        ({"no_such_option": 1}, "Unknown option"),
        ({"consistency_on": "labelled"}, "consistency_on"),
        ({"mc_passes": 0}, "mc_passes"),
        ({"mc_passes": 2.5}, "mc_passes"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"consistency": "high"}, "consistency"),
    ],
)
def test_bad_options_are_input_errors(options, match):
    with pytest.raises(InputError, match=match):
        build_method("uamt", tiny_unet, 2, options)


def test_training_step_parts_gradient_and_ema(one_thread):
    torch.manual_seed(0)
    method = build_method("uamt", tiny_unet, 2, {"mc_passes": 4})
    method.train()
    out = method.training_step(random_batch(), StepContext(iteration=10, total=100))
    assert torch.isfinite(out.loss)
    assert set(out.parts) == {"sup", "ce", "dice", "mse", "certain_fraction", "threshold"}
    assert all(not v.requires_grad and v.dim() == 0 for v in out.parts.values())
    torch.testing.assert_close(out.parts["sup"], 0.5 * (out.parts["ce"] + out.parts["dice"]))
    assert 0.0 <= float(out.parts["certain_fraction"]) <= 1.0
    assert float(out.parts["threshold"]) == pytest.approx(uamt_threshold(0.1, 2, 0.75, 1.0, 1.0))
    # the total is sup + 0.1 ramp(0.1 / 0.4) mse
    weight = 0.1 * math.exp(-5 * (1 - 0.25) ** 2)
    torch.testing.assert_close(out.loss.detach(), out.parts["sup"] + weight * out.parts["mse"])

    out.loss.backward()
    # every student parameter but the (unused) FeCL projection head learns
    trained = [p for name, p in method.student.named_parameters() if not name.startswith("projection.")]
    assert all(p.grad is not None for p in trained)
    assert sum(float(p.grad.abs().sum()) for p in trained) > 0
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert method.trainable_parameters() == list(method.student.parameters())
    assert method.inference_networks() == [method.teacher]

    # EMA: theta_T <- alpha theta_T + (1 - alpha) theta_S with alpha = min(1 - 1/51, 0.99) at t = 50
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(0.01)
    before = [p.clone() for p in method.teacher.parameters()]
    method.after_optimizer_step(StepContext(iteration=50, total=100))
    alpha = 1 - 1 / 51
    for old, new, s in zip(before, method.teacher.parameters(), method.student.parameters()):
        torch.testing.assert_close(new, alpha * old + (1 - alpha) * s)


def test_step_under_bf16_autocast_gives_an_fp32_loss(one_thread):
    # the trainer runs the step under bf16 autocast on a GPU; the same dtype mix on the CPU
    out = bf16_cpu_step("uamt", {"mc_passes": 2})
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(torch.isfinite(v) for v in out.parts.values())
    out.loss.backward()


def test_consistency_region_unlabelled_or_all(one_thread):
    torch.manual_seed(0)
    batch = random_batch(n_l=1, n_u=1)
    for region in ("unlabelled", "all"):
        method = build_method("uamt", tiny_unet, 2, {"mc_passes": 2, "consistency_on": region})
        method.train()
        out = method.training_step(batch, StepContext(iteration=3, total=10))
        assert torch.isfinite(out.loss)
    # no unlabelled patches: the consistency term is 0 but the step still trains
    method = build_method("uamt", tiny_unet, 2, {"mc_passes": 2})
    empty = Batch(batch.x_l, batch.y_l, batch.x_l[:0])
    out = method.training_step(empty, StepContext(iteration=3, total=10))
    assert float(out.parts["mse"]) == 0.0 and torch.isfinite(out.loss)


# ---------------------------------------------------------------- it learns


@pytest.mark.slow
def test_uamt_learns_a_sphere(one_thread):
    # ema_decay 0.9: over 60 iterations the default 0.99 would leave the teacher averaging the
    # untrained start; mc_passes 4 halves the cost
    untrained, trained = sphere_dice_before_and_after_training("uamt", {"ema_decay": 0.9, "mc_passes": 4})
    assert trained > 0.6 and trained > untrained + 0.3, (untrained, trained)
