"""The DyCON beta schedule: how sharply UnCL down-weights uncertain voxels as training goes on."""

from __future__ import annotations

import math


def dycon_beta(
    progress: float, beta_max: float = 5.0, beta_min: float = 0.5, lam: float | None = None
) -> float:
    """UnCL's beta at training progress ``t / T``.

        beta(t) = max(beta_min, beta_max * exp(-lam * t / T)),   lam = ln(beta_max / beta_min) by default

    With the default ``lam`` beta decays geometrically from ``beta_max`` at t = 0 to ``beta_min``
    at t = T, which is the released code's per-epoch schedule evaluated per iteration.

    Args:
        progress: t / T; values outside [0, 1] are clamped so a run that goes past its planned
            length keeps ``beta(T)``.
        beta_max: beta at the start (> 0).
        beta_min: lower bound (> 0, <= beta_max).
        lam: decay rate; ``None`` means ln(beta_max / beta_min).
    """
    if beta_max <= 0 or beta_min <= 0 or beta_min > beta_max:
        raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
    if lam is None:
        lam = math.log(beta_max / beta_min)
    progress = min(1.0, max(0.0, float(progress)))
    return max(beta_min, beta_max * math.exp(-lam * progress))
