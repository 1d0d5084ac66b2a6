"""Loss terms of bidirectional uncertainty-aware region learning (arXiv 2502.07457, reconstructed).

Specification: docs/reference/companion-methods.md §2.2 (our reconstruction; only the idea is
established). Teacher uncertainty U_v = H(p^t_v) / ln C in [0, 1] selects regions:
- URL (labelled): an extra supervised loss on the **high**-uncertainty voxels, M_h = [U >= tau_h];
- CRL (unlabelled): a pseudo-label loss only on the **low**-uncertainty voxels, M_l = [U < tau_l].

Shapes: logits (B, C, *S), label maps / masks / uncertainty (B, *S). Everything is fp32. The
region losses are ``losses.supervised``'s masked CE and Dice (MONAI's losses take no voxel mask);
they count a voxel only when it is in the region *and* annotated (label != -1, partial labels).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .annotation import annotated_mask, fill_not_annotated
from .supervised import masked_cross_entropy, masked_dice_loss  # noqa: F401  (the region losses)
from .uncl import voxel_entropy

THRESHOLD_MODES = ("percentile", "absolute")


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """U = -sum_c p_c ln(p_c + 1e-6) / ln C, clamped to [0, 1]: (B, C, *S) -> (B, *S)."""
    return (voxel_entropy(probs.float()) / math.log(probs.shape[1])).clamp(0.0, 1.0)


def ranked_mask(values: torch.Tensor, fraction: float, largest: bool, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool mask of the round(fraction * N) largest (or smallest) of the N elements in ``valid``
    (default: all elements); elements outside ``valid`` are never chosen.

    An exact count rather than a comparison with a percentile: under bf16 autocast the teacher's
    logits are coarsely quantised, so many voxels share one entropy value and ``U >= percentile``
    could select far more than the asked share. Ties at the boundary are broken arbitrarily.
    """
    flat = values.detach().reshape(-1).float()
    available = flat.numel()
    if valid is not None:
        keep = valid.reshape(-1)
        available = int(keep.sum())  # one host sync: the count sets the size of topk
        # Out-of-range values rank last whichever end is taken, so they are never among the first ``available``.
        flat = torch.where(keep, flat, torch.full_like(flat, float("-inf") if largest else float("inf")))
    count = int(round(min(max(fraction, 0.0), 1.0) * available))
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=values.device)
    if count > 0:
        mask[torch.topk(flat, count, largest=largest, sorted=False).indices] = True
    return mask.reshape(values.shape)


def high_uncertainty_mask(
    uncertainty: torch.Tensor, mode: str, fraction: float, threshold: float, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """URL's M_h: bool (B, *S), never outside ``valid`` (bool (B, *S), default all voxels).

    mode "percentile": the most uncertain ``fraction`` of the valid voxels (exactly
    round(fraction N_valid) of them, see ``ranked_mask``); mode "absolute": U >= ``threshold``
    (normalised-entropy units). The method passes the annotated voxels as ``valid``, so with
    partial labels the share is of the voxels that have a label.
    """
    if mode == "percentile":
        return ranked_mask(uncertainty, fraction, largest=True, valid=valid)
    if mode == "absolute":
        high = uncertainty >= threshold
        return high if valid is None else high & valid
    raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")


def low_uncertainty_mask(uncertainty: torch.Tensor, mode: str, fraction: float, threshold: float) -> torch.Tensor:
    """CRL's M_l: bool (B, *S).

    mode "percentile": the least uncertain ``fraction`` of all voxels given (exact count);
    mode "absolute": U < ``threshold`` (strict, as UA-MT's mask).
    """
    if mode == "percentile":
        return ranked_mask(uncertainty, fraction, largest=False)
    if mode == "absolute":
        return uncertainty < threshold
    raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")


def uncertainty_weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, uncertainty: torch.Tensor
) -> torch.Tensor:
    """URL's soft variant: sum_v M_v U_v CE(z_v, y_v) / max(sum_v M_v, 1), U detached, M_v = [y_v != -1]
    (the mean over annotated voxels; over all voxels for a fully labelled batch).

    Added with weight gamma to the plain CE it gives companion-methods.md's
    mean_v (1 + gamma U_v) CE(z_v, y_v).
    """
    ce = F.cross_entropy(logits.float(), fill_not_annotated(target), reduction="none")
    weights = annotated_mask(target).float()
    return (weights * uncertainty.detach().float() * ce).sum() / weights.sum().clamp_min(1.0)
