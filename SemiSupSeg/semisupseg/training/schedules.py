"""Iteration-based schedules (functions of progress = t / T, so they do not depend on epoch length)."""

from __future__ import annotations

import math


def sigmoid_rampup(progress: float, ramp_fraction: float) -> float:
    """exp(-5 (1 - r)^2) with r = min(progress / ramp_fraction, 1): the mean-teacher ramp.

    0.0067 at the start, 1 once ``progress`` reaches ``ramp_fraction``; ramp_fraction 0 means 1.
    """
    if ramp_fraction <= 0:
        return 1.0
    r = min(max(progress / ramp_fraction, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - r) ** 2)


def learning_rate(base_lr: float, progress: float, schedule: str) -> float:
    """``constant`` (released DyCON) or ``poly``: base_lr * (1 - progress)^0.9."""
    if schedule == "constant":
        return base_lr
    if schedule == "poly":
        return base_lr * (1.0 - min(progress, 1.0)) ** 0.9
    raise ValueError(f"unknown learning-rate schedule '{schedule}' (constant or poly)")
