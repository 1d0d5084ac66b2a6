"""The teacher's input perturbation shared by the mean-teacher family."""

from __future__ import annotations

import torch


def teacher_noise(x: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """x + clip(std * N(0, 1), -clip, clip): the only view difference between student and teacher."""
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)
