"""The released DyCON code's teacher hard-negative term, kept as a compatibility option.

The paper adds the teacher's top-K hard negatives to FeCL's denominator (our default, decision D2
of docs/dycon.md). The released code instead adds a separate penalty on thresholded pairs:

    H      = {(i, l) : y_i != y^T_l, labels >= 0, c_il = z_i . z^T_l > theta}   (within each sample)
    L_HN   = sum_{(i,l) in H} -ln(1 - c_il + 1e-18) / |H|     (0 when H is empty; pooled over samples)
    theta(p) = 0.3 + 0.2 exp(-5 (1 - min(p / ramp, 1))^2)     (p = t / T; rises from 0.301 to 0.5)

No temperature, no softmax; gradients reach the student embeddings only.
"""

from __future__ import annotations

import math

import torch

from .uncl import at_least_fp32


def hard_negative_threshold(progress: float, ramp: float = 0.45) -> float:
    """theta = 0.3 + 0.2 exp(-5 (1 - min(progress / ramp, 1))^2).

    The released ramp is 1500 epochs, which is 45 % of its BraTS run (9 000 of 20 000 iterations).
    """
    r = 1.0 if ramp <= 0 else min(max(progress / ramp, 0.0), 1.0)
    return 0.3 + 0.2 * math.exp(-5.0 * (1.0 - r) ** 2)


def threshold_hard_negative_loss(
    z: torch.Tensor, labels: torch.Tensor, z_teacher: torch.Tensor, teacher_labels: torch.Tensor, threshold: float
) -> torch.Tensor:
    """L_HN above. z, z_teacher: (B, N, D) L2-normalised; labels, teacher_labels: (B, N), -1 excluded."""
    z, z_teacher = at_least_fp32(z), at_least_fp32(z_teacher).detach()
    cosine = torch.einsum("bnd,bmd->bnm", z, z_teacher)  # (B, N, N) student x teacher, same sample
    valid = (labels[:, :, None] >= 0) & (teacher_labels[:, None, :] >= 0)
    hard = valid & (labels[:, :, None] != teacher_labels[:, None, :]) & (cosine > threshold)
    safe = torch.where(hard, cosine, torch.zeros_like(cosine))
    penalties = torch.where(hard, -torch.log(1.0 - safe + 1e-18), torch.zeros_like(cosine))
    return penalties.sum() / hard.sum().clamp_min(1)
