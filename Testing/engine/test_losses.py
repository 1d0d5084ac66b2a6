"""DyCON losses checked against hand computations and independent plain implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semisupseg.losses import (
    FeCLLoss,
    SupervisedLoss,
    UnCLLoss,
    block_labels,
    block_mean,
    cap_anchors,
    dycon_beta,
    fecl,
    teacher_block_labels,
    uncl,
)

# ----------------------------------------------------------------------------------------- UnCL


def uncl_numpy(student: np.ndarray, teacher: np.ndarray, beta: float) -> float:
    """Plain numpy UnCL, written from docs/dycon.md independently of the engine code."""

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ps, pt = softmax(student.astype(np.float64)), softmax(teacher.astype(np.float64))
    hs = -(ps * np.log(ps + 1e-6)).sum(axis=1)
    ht = -(pt * np.log(pt + 1e-6)).sum(axis=1)
    w = 1.0 / (np.exp(beta * hs) + np.exp(beta * ht))
    return float((w * ((ps - pt) ** 2).sum(axis=1) + beta * (hs + ht)).mean())


def test_uncl_one_voxel_by_hand():
    # Student logits (0, 0)      -> p_S = (0.5, 0.5)
    # Teacher logits (ln 3, 0)   -> p_T = (0.75, 0.25)
    # H_S = -2 * 0.5 ln(0.500001)                      = 0.69314518
    # H_T = -(0.75 ln 0.750001 + 0.25 ln 0.250001)       = 0.56233314
    # sum_c (p_S - p_T)^2 = 0.25^2 + 0.25^2              = 0.125
    # beta = 1: w = 1 / (e^0.69314518 + e^0.56233314)   = 1 / (1.999996 + 1.754833) = 0.26632876
    # L = 0.26632876 * 0.125 + 1 * (0.69314518 + 0.56233314) = 0.03329110 + 1.25547832 = 1.28876942
    student = torch.tensor([0.0, 0.0]).reshape(1, 2, 1, 1, 1)
    teacher = torch.tensor([math.log(3.0), 0.0]).reshape(1, 2, 1, 1, 1)
    assert uncl(student, teacher, 1.0).item() == pytest.approx(1.28876942, abs=1e-6)
    # beta = 0: only the plain squared difference with weight 1/2 remains: 0.0625.
    assert uncl(student, teacher, 0.0).item() == pytest.approx(0.0625, abs=1e-7)


@pytest.mark.parametrize("beta", [0.5, 2.3, 5.0])
def test_uncl_matches_numpy(beta):
    g = torch.Generator().manual_seed(0)
    student = 3 * torch.randn(2, 3, 4, 3, 2, generator=g)
    teacher = 3 * torch.randn(2, 3, 4, 3, 2, generator=g)
    expected = uncl_numpy(student.numpy(), teacher.numpy(), beta)
    assert uncl(student, teacher, beta).item() == pytest.approx(expected, rel=1e-5)
    assert UnCLLoss()(student, teacher, torch.tensor(beta)).item() == pytest.approx(expected, rel=1e-5)


def test_uncl_gradient_reaches_student_only():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(2, 2, 3, 3, 3, generator=g, requires_grad=True)
    teacher = torch.randn(2, 2, 3, 3, 3, generator=g, requires_grad=True)
    uncl(student, teacher, 5.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def _uncl_torch(student, teacher, beta, detach_student_entropy_in_weight):
    ps, pt = torch.softmax(student, 1), torch.softmax(teacher, 1)
    hs = -(ps * torch.log(ps + 1e-6)).sum(1)
    ht = -(pt * torch.log(pt + 1e-6)).sum(1)
    hs_weight = hs.detach() if detach_student_entropy_in_weight else hs
    w = 1 / (torch.exp(beta * hs_weight) + torch.exp(beta * ht))
    return (w * ((ps - pt) ** 2).sum(1) + beta * (hs + ht)).mean()


def test_uncl_weight_is_not_detached():
    g = torch.Generator().manual_seed(2)
    student0 = 2 * torch.randn(1, 3, 2, 2, 2, generator=g)
    teacher = 2 * torch.randn(1, 3, 2, 2, 2, generator=g)

    def grad_of(loss_fn):
        s = student0.clone().requires_grad_(True)
        loss_fn(s).backward()
        return s.grad

    ours = grad_of(lambda s: uncl(s, teacher, 5.0))
    attached = grad_of(lambda s: _uncl_torch(s, teacher, 5.0, False))
    detached = grad_of(lambda s: _uncl_torch(s, teacher, 5.0, True))
    assert torch.allclose(ours, attached, atol=1e-6)
    assert (ours - detached).abs().max() > 1e-4


def test_uncl_computes_in_fp32():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(1, 2, 4, 4, 4, generator=g).bfloat16()
    teacher = torch.randn(1, 2, 4, 4, 4, generator=g).bfloat16()
    loss = uncl(student, teacher, 2.0)
    assert loss.dtype == torch.float32
    expected = uncl_numpy(student.float().numpy(), teacher.float().numpy(), 2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------ schedule


def test_dycon_beta_schedule():
    assert dycon_beta(0.0) == pytest.approx(5.0)
    assert dycon_beta(0.5) == pytest.approx(math.sqrt(5.0 * 0.5))  # 1.5811
    assert dycon_beta(1.0) == pytest.approx(0.5)
    assert dycon_beta(1.0, lam=10.0) == 0.5  # the max(beta_min, .) floor
    assert dycon_beta(0.5, beta_max=1.0, beta_min=0.1) == pytest.approx(math.sqrt(0.1))


# ------------------------------------------------------------------------------------------ FeCL


def fecl_reference(z, labels, z_t, labels_t, entropy, tau, gamma, top_k):
    """Double loop over anchors and pairs with the math module, straight from docs/dycon.md."""

    def dot(u, v):
        return sum(a * b for a, b in zip(u, v))

    total, anchors = 0.0, 0
    for b in range(len(z)):
        n = len(z[b])
        for i in range(n):
            yi = labels[b][i]
            if yi < 0:
                continue
            positives = [k for k in range(n) if k != i and labels[b][k] == yi]
            if not positives:
                continue
            negatives = [q for q in range(n) if labels[b][q] >= 0 and labels[b][q] != yi]
            negative_sum = 0.0
            for q in negatives:
                c = dot(z[b][i], z[b][q])
                negative_sum += max(c, 0.0) ** gamma * math.exp(c / tau)
            teacher_cos = sorted(
                (dot(z[b][i], z_t[b][l]) for l in range(len(z_t[b])) if labels_t[b][l] >= 0 and labels_t[b][l] != yi),
                reverse=True,
            )
            k_used = min(top_k, len(teacher_cos))
            hard = sum(math.exp(c / tau) for c in teacher_cos[:k_used]) / k_used if k_used else 0.0
            anchor_loss = 0.0
            for k in positives:
                c = dot(z[b][i], z[b][k])
                denominator = math.exp(c / tau) + negative_sum + hard
                focal = (1.0 - c) ** gamma * math.exp(entropy[b][i])
                anchor_loss += focal * -math.log(math.exp(c / tau) / denominator)
            total += anchor_loss / len(positives)
            anchors += 1
    return total / anchors if anchors else 0.0


def _random_fecl_inputs(seed, teacher_labels=None):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(2, 7, 4, generator=g, dtype=torch.float64), dim=-1).float()
    z_t = F.normalize(torch.randn(2, 7, 4, generator=g, dtype=torch.float64), dim=-1).float()
    # Sample 0: classes 0, 1, 2 and an excluded patch; class 2 (patch 5) has no positive.
    # Sample 1: one class only (no student negatives), two excluded patches.
    labels = torch.tensor([[0, 0, 1, -1, 1, 2, 0], [1, 1, -1, 1, 1, 1, -1]])
    if teacher_labels is None:
        teacher_labels = torch.tensor([[0, 1, -1, 1, 0, 2, -1], [1, 0, 1, -1, 0, 1, 1]])
    entropy = torch.rand(2, 7, generator=g)
    return z, labels, z_t, teacher_labels, entropy


@pytest.mark.parametrize(
    "tau, gamma, top_k",
    [(0.6, 2.0, 64), (0.1, 2.0, 1), (1.0, 0.5, 2), (0.3, 0.0, 3), (0.6, 1.0, 0)],
)
def test_fecl_matches_double_loop_reference(tau, gamma, top_k):
    for seed in range(3):
        z, labels, z_t, labels_t, entropy = _random_fecl_inputs(seed)
        expected = fecl_reference(z.tolist(), labels.tolist(), z_t.tolist(), labels_t.tolist(), entropy.tolist(), tau, gamma, top_k)
        got = fecl(z, labels, z_t, labels_t, entropy, tau=tau, gamma=gamma, top_k=top_k)
        assert got.item() == pytest.approx(expected, rel=1e-5)
        assert FeCLLoss(tau, gamma, top_k)(z, labels, z_t, labels_t, entropy).item() == pytest.approx(expected, rel=1e-5)


def test_fecl_without_teacher_negatives_available():
    # Sample 0: every teacher patch excluded; sample 1: teacher patches all of the sample's only
    # student class. No teacher negative anywhere: the top-K term must vanish (K = 0).
    teacher_labels = torch.tensor([[-1] * 7, [1, 1, -1, 1, 1, 1, -1]])
    z, labels, z_t, labels_t, entropy = _random_fecl_inputs(5, teacher_labels)
    expected = fecl_reference(z.tolist(), labels.tolist(), z_t.tolist(), labels_t.tolist(), entropy.tolist(), 0.6, 2.0, 64)
    assert fecl(z, labels, z_t, labels_t, entropy).item() == pytest.approx(expected, rel=1e-5)


def test_fecl_stable_at_tiny_temperature():
    # tau = 0.01 puts logits near 100: exp overflows fp32, the log-sum-exp must not.
    z, labels, z_t, labels_t, entropy = _random_fecl_inputs(6)
    expected = fecl_reference(z.tolist(), labels.tolist(), z_t.tolist(), labels_t.tolist(), entropy.tolist(), 0.01, 2.0, 64)
    assert math.isfinite(expected)
    assert fecl(z, labels, z_t, labels_t, entropy, tau=0.01).item() == pytest.approx(expected, rel=1e-4)


def _hand_case(requires_grad=False):
    z = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.8, -0.6]]], requires_grad=requires_grad)
    labels = torch.tensor([[0, 0, 1]])
    z_t = torch.tensor([[[0.0, 1.0], [0.8, -0.6]]], requires_grad=requires_grad)
    labels_t = torch.tensor([[1, -1]])
    entropy = torch.tensor([[0.0, 0.5, 0.9]], requires_grad=requires_grad)
    return z, labels, z_t, labels_t, entropy


def test_fecl_hand_computed_three_patches():
    # tau = 1, gamma = 2. Cosines: c01 = 0.6, c02 = 0.8, c12 = 0.48 - 0.48 = 0.
    # Teacher: one usable embedding (0, 1) of label 1 (the second is excluded, label -1).
    # Patch 2 (label 1) has no positive: skipped. Anchors 0 and 1 (label 0), P = {the other}, N = {2}.
    # Anchor 0: F-_02 = 0.8^2 = 0.64, 0.64 e^0.8 = 1.42434619; teacher cos z0.zt = 0 -> (1/1) e^0 = 1
    #   D = e^0.6 + 1.42434619 + 1 = 1.82211880 + 2.42434619 = 4.24646499
    #   -log(e^0.6 / D) = ln 4.24646499 - 0.6 = 0.84608687; F+ = (1 - 0.6)^2 e^0 = 0.16
    #   l_0 = 0.16 * 0.84608687 = 0.13537390
    # Anchor 1: F-_12 = max(0, 0)^2 = 0; teacher cos z1.zt = 0.8 -> e^0.8 = 2.22554093
    #   D = 1.82211880 + 0 + 2.22554093 = 4.04765973; -log(e^0.6 / D) = 0.79813887
    #   F+ = 0.16 e^0.5 = 0.26379540; l_1 = 0.21054536
    # L = (0.13537390 + 0.21054536) / 2 = 0.17295963
    z, labels, z_t, labels_t, entropy = _hand_case()
    loss = fecl(z, labels, z_t, labels_t, entropy, tau=1.0, gamma=2.0, top_k=64)
    assert loss.item() == pytest.approx(0.17295963, abs=1e-6)


def test_fecl_is_exactly_zero_without_positives():
    g = torch.Generator().manual_seed(7)
    z = F.normalize(torch.randn(2, 5, 3, generator=g), dim=-1).requires_grad_(True)
    z_t = F.normalize(torch.randn(2, 5, 3, generator=g), dim=-1)
    labels = torch.tensor([[0, 1, 2, -1, -1], [-1, -1, -1, -1, -1]])  # every class at most once
    labels_t = torch.tensor([[0, 1, 1, 0, 2], [0, 1, 0, 1, 0]])
    loss = fecl(z, labels, z_t, labels_t, torch.rand(2, 5, generator=g))
    assert loss.item() == 0.0
    loss.backward()  # still connected to z, gives a zero gradient
    assert z.grad is not None and torch.count_nonzero(z.grad) == 0


def test_fecl_gradients_reach_z_and_entropy_not_teacher():
    z, labels, z_t, labels_t, entropy = _hand_case(requires_grad=True)
    fecl(z, labels, z_t, labels_t, entropy, tau=1.0).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert entropy.grad is not None and entropy.grad[0, :2].abs().min() > 0  # both anchors
    assert entropy.grad[0, 2] == 0  # patch 2 is no anchor (no positive)
    assert z_t.grad is None
    # c12 = 0 exactly (F- = 0 at the kink): gradients stay finite.
    assert torch.isfinite(z.grad).all() and torch.isfinite(entropy.grad).all()


def test_fecl_no_nan_gradient_with_non_positive_negative_cosines():
    z, labels, z_t, labels_t, entropy = _random_fecl_inputs(11)
    cos = torch.einsum("bnd,bmd->bnm", z, z)
    different = (labels[:, :, None] != labels[:, None, :]) & (labels[:, :, None] >= 0) & (labels[:, None, :] >= 0)
    assert (cos[different] <= 0).any()  # the case under test is present
    z.requires_grad_(True)
    entropy.requires_grad_(True)
    fecl(z, labels, z_t, labels_t, entropy).backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(entropy.grad).all()
    assert z.grad.abs().sum() > 0


def test_fecl_gradient_matches_reference_by_finite_differences():
    # Focal and entropy weights are part of the gradient (not detached): the analytic gradient
    # must equal the numerical gradient of the plain-Python reference.
    z, labels, z_t, labels_t, entropy = _random_fecl_inputs(4)
    z64 = z.double().requires_grad_(True)
    e64 = entropy.double().requires_grad_(True)
    fecl(z64, labels, z_t.double(), labels_t, e64, tau=0.5).backward()

    def ref(zz, ee):
        return fecl_reference(zz.tolist(), labels.tolist(), z_t.double().tolist(), labels_t.tolist(), ee.tolist(), 0.5, 2.0, 64)

    step = 1e-6
    for index in [(0, 0, 1), (0, 4, 2), (1, 3, 0)]:
        up, down = z64.detach().clone(), z64.detach().clone()
        up[index] += step
        down[index] -= step
        numeric = (ref(up, e64.detach()) - ref(down, e64.detach())) / (2 * step)
        assert z64.grad[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-7)
    for index in [(0, 1), (1, 0)]:
        up, down = e64.detach().clone(), e64.detach().clone()
        up[index] += step
        down[index] -= step
        numeric = (ref(z64.detach(), up) - ref(z64.detach(), down)) / (2 * step)
        assert e64.grad[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_fecl_fp32_under_autocast():
    z, labels, z_t, labels_t, entropy = _random_fecl_inputs(2)
    expected = fecl(z, labels, z_t, labels_t, entropy).item()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = fecl(z, labels, z_t, labels_t, entropy)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------- patch labels


def test_block_labels_majority_and_order():
    # Block 2 on a (4, 4, 2) volume -> a (2, 2, 1) grid, N = 4 in C order: (0,0), (0,1), (1,0), (1,1).
    volume = torch.zeros(1, 4, 4, 2, dtype=torch.long)
    volume[0, 0:2, 2:4, :] = 1  # block (0, 1): all 1
    volume[0, 2:4, 0:2, :] = 2  # block (1, 0): 5 voxels of 2, 3 of 1
    volume[0, 2, 0, 0] = 1
    volume[0, 3, 1, 1] = 1
    volume[0, 2, 1, 0] = 1
    volume[0, 2:4, 2:4, 0] = 2  # block (1, 1): 4 of 2, 4 of 0 -> tie -> lowest class 0
    assert block_labels(volume, block=2, num_classes=3).tolist() == [[0, 1, 2, 0]]
    # The order is that of embedding.flatten(2) on the (X/b, Y/b, Z/b) grid.
    grid_index = torch.arange(4).reshape(1, 1, 2, 2, 1).float()
    assert grid_index.flatten(2)[0, 0].tolist() == [0, 1, 2, 3]


def test_block_labels_requires_divisible_shape():
    with pytest.raises(ValueError):
        block_labels(torch.zeros(1, 6, 4, 4, dtype=torch.long), block=4, num_classes=2)


def test_block_mean_value_and_gradient():
    volume = torch.arange(16, dtype=torch.float32).reshape(1, 4, 2, 2).requires_grad_(True)
    means = block_mean(volume, block=2)  # blocks x in {0,1} and {2,3}
    assert means.tolist() == [[3.5, 11.5]]
    means.sum().backward()
    assert torch.allclose(volume.grad, torch.full_like(volume, 1 / 8))


def test_teacher_block_labels_confidence_mask():
    probs = torch.zeros(1, 2, 4, 2, 2)
    probs[0, 1, :2] = 0.9  # block 0: foreground, confidence 0.9
    probs[0, 0, :2] = 0.1
    probs[0, 0, 2:] = 0.7  # block 1: background, confidence 0.7 < 0.8
    probs[0, 1, 2:] = 0.3
    assert teacher_block_labels(probs, block=2, min_confidence=0.8).tolist() == [[1, -1]]
    assert teacher_block_labels(probs, block=2, min_confidence=0.6).tolist() == [[1, 0]]


def test_cap_anchors_bounded_and_class_balanced():
    row0 = [0] * 80 + [1] * 10 + [2] * 5 + [-1] * 5
    row1 = [0] * 10 + [1] * 10 + [-1] * 80
    row2 = [0] * 50 + [1] * 50
    labels = torch.tensor([row0, row1, row2])
    capped = cap_anchors(labels, max_anchors=30, generator=torch.Generator().manual_seed(0))
    kept = capped >= 0
    assert ((capped == labels) | ~kept).all()  # kept patches keep their label
    counts = [torch.bincount(capped[b][kept[b]], minlength=3).tolist() for b in range(3)]
    assert counts[0] == [15, 10, 5]  # small classes keep all, the surplus goes to class 0
    assert torch.equal(capped[1], labels[1])  # under the cap: unchanged
    assert counts[2] == [15, 15, 0]
    again = cap_anchors(labels, max_anchors=30, generator=torch.Generator().manual_seed(0))
    assert torch.equal(capped, again)


# ------------------------------------------------------------------------------------ supervised


def supervised_numpy(logits: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Independent CE and squared batch Dice over foreground classes (docs/dycon.md step 4)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    num_classes = logits.shape[1]
    one_hot = np.stack([(target == c) for c in range(num_classes)], axis=1).astype(np.float64)
    ce = float(-(log_p * one_hot).sum(axis=1).mean())
    p = np.exp(log_p)
    dices = []
    for c in range(1, num_classes):
        intersection = (p[:, c] * one_hot[:, c]).sum()
        denominator = (p[:, c] ** 2).sum() + (one_hot[:, c] ** 2).sum()
        dices.append(1 - (2 * intersection + 1e-5) / (denominator + 1e-5))
    return ce, float(np.mean(dices))


@pytest.mark.parametrize("num_classes", [2, 3])
def test_supervised_loss_matches_numpy(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    logits = 2 * torch.randn(2, num_classes, 4, 4, 3, generator=g)
    target = torch.randint(0, num_classes, (2, 4, 4, 3), generator=g)
    ce, dice = supervised_numpy(logits.numpy(), target.numpy())
    loss_fn = SupervisedLoss(num_classes)
    assert loss_fn(logits, target).item() == pytest.approx(ce + dice, rel=1e-5)
    parts = loss_fn.parts(logits, target)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["dice"].item() == pytest.approx(dice, rel=1e-5)
    assert parts["total"].item() == pytest.approx(ce + dice, rel=1e-5)


def test_supervised_loss_fp32_and_gradient():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(1, 2, 4, 4, 4, generator=g).bfloat16().requires_grad_(True)
    target = torch.randint(0, 2, (1, 4, 4, 4), generator=g, dtype=torch.uint8)
    loss = SupervisedLoss(2)(logits, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
