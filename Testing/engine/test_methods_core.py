"""The core methods (supervised, mean teacher, DyCON) on tiny networks: losses, gradients, EMA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semisupseg.errors import InputError
from semisupseg.losses import fecl
from semisupseg.methods import METHODS, Batch, StepContext, build_method
from semisupseg.methods.dycon import anchors_with_positive, pooled_mean
from semisupseg.training.compilation import compile_network, is_compiled
from semisupseg.training.ema import ema_decay, ema_update, make_teacher
from semisupseg.training.schedules import learning_rate, sigmoid_rampup

from method_test_helpers import tiny_unet


def tiny_batch(n_l=2, n_u=2, size=(32, 32, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n_l, *size, dtype=torch.long)
    y[:, 8:24, 8:24, 0:8] = 1  # whole 8^3 blocks, so FeCL has foreground patches
    x_l = y[:, None].float() + 0.3 * torch.randn(n_l, 1, *size, generator=g)
    x_u = torch.randn(n_u, 1, *size, generator=g)
    return Batch(x_l, y, x_u)


def test_ema_decay_schedule_and_update():
    assert ema_decay(0) == 0.0 and ema_decay(1) == 0.5 and ema_decay(99) == pytest.approx(0.99)
    assert ema_decay(10_000) == 0.99
    student = torch.nn.Linear(3, 2)
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
        assert not t.requires_grad


def test_schedules():
    assert sigmoid_rampup(0.0, 0.4) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(0.2, 0.4) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(0.9, 0.4) == 1.0
    assert learning_rate(0.01, 0.5, "constant") == 0.01
    assert learning_rate(0.01, 0.5, "poly") == pytest.approx(0.01 * 0.5**0.9)


def test_pooled_fecl_equals_fecl_over_the_whole_batch():
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(4, 9, 5, generator=g), dim=-1)
    zt = F.normalize(torch.randn(4, 9, 5, generator=g), dim=-1)
    labels = torch.randint(-1, 2, (4, 9), generator=g)
    ent = torch.rand(4, 9, generator=g)
    whole = fecl(z, labels, zt, labels, ent)
    parts = [(fecl(z[s], labels[s], zt[s], labels[s], ent[s]), anchors_with_positive(labels[s], 2))
             for s in (slice(0, 1), slice(1, 4))]
    assert pooled_mean(parts, z).item() == pytest.approx(whole.item(), rel=1e-5)
    # an anchor-free stream does not dilute the other
    empty = torch.full((1, 9), -1)
    with_empty = parts + [(torch.tensor(0.0), anchors_with_positive(empty, 2))]
    assert pooled_mean(with_empty, z).item() == pytest.approx(whole.item(), rel=1e-5)


def test_anchor_count():
    labels = torch.tensor([[0, 0, 1, -1], [1, -1, -1, -1]])  # sample 0: two class-0 anchors; class 1 alone
    assert anchors_with_positive(labels, 2).item() == 2


@pytest.mark.parametrize("name", ["supervised", "mean_teacher", "dycon"])
def test_step_gives_finite_loss_and_trains_only_the_student(name):
    torch.manual_seed(0)
    method = build_method(name, tiny_unet, 2, {})
    out = method.training_step(tiny_batch(), StepContext(0, 10))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    student_grads = [p.grad for p in method.student.parameters() if p.grad is not None]
    assert student_grads and any(g.abs().sum() > 0 for g in student_grads)
    if hasattr(method, "teacher"):
        assert all(p.grad is None for p in method.teacher.parameters())
    expected = {"supervised": {"sup"}, "mean_teacher": {"sup", "mse"}, "dycon": {"sup", "uncl", "fecl"}}[name]
    assert expected <= set(out.parts)


def test_dycon_loss_is_sup_plus_eta_times_uncl_plus_fecl():
    torch.manual_seed(0)
    method = build_method("dycon", tiny_unet, 2, {"eta": 0.25})
    out = method.training_step(tiny_batch(), StepContext(5, 10))
    p = out.parts
    assert out.loss.item() == pytest.approx((p["sup"] + 0.25 * (p["uncl"] + p["fecl"])).item(), rel=1e-5)
    assert p["beta"].item() == pytest.approx(5 * math.exp(-math.log(10) * 0.5))


def test_dycon_teacher_follows_student_after_step():
    torch.manual_seed(0)
    method = build_method("dycon", tiny_unet, 2, {})
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    ctx = StepContext(0, 10)
    out = method.training_step(tiny_batch(), ctx)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    method.after_optimizer_step(ctx)  # alpha_0 = 0: the teacher becomes the student
    for t, s in zip(method.teacher.parameters(), method.student.parameters()):
        assert torch.equal(t, s)


def test_unknown_method_option_is_an_input_error():
    with pytest.raises(InputError, match="tau_typo"):
        build_method("dycon", tiny_unet, 2, {"tau_typo": 1})
    with pytest.raises(InputError):
        build_method("dycon", tiny_unet, 2, {"fecl_streams": "sometimes"})
    assert {"supervised", "mean_teacher", "dycon"} <= set(METHODS)


class TwoEntryNet(torch.nn.Module):
    """The engine's network contract in miniature: ``net(x)`` and ``net.forward_features(x)``."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.lin(x)

    def forward_features(self, x):
        return self.lin(x), 2 * x


@pytest.mark.slow
def test_compiled_student_compiles_both_entry_points_and_its_teacher_is_its_own_network():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    student = compile_network(TwoEntryNet())
    teacher = make_teacher(student)
    with torch.no_grad():
        teacher.lin.weight.zero_()
        teacher.lin.bias.zero_()
    x = torch.ones(1, 2)
    graphs = counters["stats"]["unique_graphs"]
    # forward_features (what DyCON calls) goes through dynamo, not only __call__.
    assert not torch.equal(student.forward_features(x)[0], torch.zeros(1, 2))
    assert counters["stats"]["unique_graphs"] > graphs
    assert torch.equal(teacher(x), torch.zeros(1, 2))
    assert torch.equal(teacher.forward_features(x)[0], torch.zeros(1, 2))
    assert not torch.equal(student(x), torch.zeros(1, 2))
    assert is_compiled(teacher) and "forward_features" in vars(teacher)
    assert set(teacher.state_dict()) == {"lin.weight", "lin.bias"}  # plain keys, loadable uncompiled


def test_dycon_threshold_hard_negatives_option_runs_and_differs():
    torch.manual_seed(0)
    paper = build_method("dycon", tiny_unet, 2, {})
    torch.manual_seed(0)
    released = build_method("dycon", tiny_unet, 2, {"hard_negatives": "threshold"})
    batch = tiny_batch()
    torch.manual_seed(1)
    a = paper.training_step(batch, StepContext(0, 10))
    torch.manual_seed(1)
    b = released.training_step(batch, StepContext(0, 10))
    assert torch.isfinite(b.loss)
    assert a.parts["sup"].item() == pytest.approx(b.parts["sup"].item())  # same networks, same input
    assert a.parts["fecl"].item() != pytest.approx(b.parts["fecl"].item())
    with pytest.raises(InputError):
        build_method("dycon", tiny_unet, 2, {"hard_negatives": "sometimes"})


def test_supervised_predicts_with_its_weight_average_when_asked():
    """ema_decay 0.5: after steps at iterations 0 and 1 the averaged weights are, by hand,
    alpha_0 = 0 (copy of w1), alpha_1 = min(1 - 1/2, 0.5) = 0.5: 0.5 * w1 + 0.5 * w2."""
    plain = build_method("supervised", lambda: nn.Conv3d(1, 2, 1), 2, {})
    assert plain.inference_networks() == [plain.student]
    assert not any(key.startswith("teacher") for key in plain.state_dict())  # old checkpoints still load

    method = build_method("supervised", lambda: nn.Conv3d(1, 2, 1), 2, {"ema_decay": 0.5})
    assert method.inference_networks() == [method.teacher]
    for it, value in enumerate((1.0, 3.0)):
        with torch.no_grad():
            method.student.weight.fill_(value)
        method.after_optimizer_step(StepContext(it, 10))
    assert torch.allclose(method.teacher.weight, torch.full_like(method.teacher.weight, 0.5 * 1.0 + 0.5 * 3.0))
    assert method.trainable_parameters() == list(method.student.parameters())  # the average is not trained


def test_supervised_ema_decay_out_of_range_is_an_input_error():
    with pytest.raises(InputError, match="ema_decay must be in"):
        build_method("supervised", lambda: nn.Conv3d(1, 2, 1), 2, {"ema_decay": 1.0})
