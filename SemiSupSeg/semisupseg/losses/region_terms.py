"""Loss terms of bidirectional uncertainty-aware region learning (arXiv 2502.07457, reconstructed).

Specification: docs/reference/companion-methods.md §2.2 (our reconstruction; only the idea is
established). Teacher uncertainty U_v = H(p^t_v) / ln C in [0, 1] selects regions:
- URL (labelled): an extra supervised loss on the **high**-uncertainty voxels, M_h = [U >= tau_h];
- CRL (unlabelled): a pseudo-label loss only on the **low**-uncertainty voxels, M_l = [U < tau_l].

Shapes: logits (B, C, *S), label maps / masks / uncertainty (B, *S). Everything is fp32; the
region losses are written here because MONAI's losses take no voxel mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .supervised import SMOOTH
from .uncl import voxel_entropy

THRESHOLD_MODES = ("percentile", "absolute")


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """U = -sum_c p_c ln(p_c + 1e-6) / ln C, clamped to [0, 1]: (B, C, *S) -> (B, *S)."""
    return (voxel_entropy(probs.float()) / math.log(probs.shape[1])).clamp(0.0, 1.0)


def ranked_mask(values: torch.Tensor, fraction: float, largest: bool) -> torch.Tensor:
    """Bool mask of the round(fraction * N) largest (or smallest) of all N elements.

    An exact count rather than a comparison with a percentile: under bf16 autocast the teacher's
    logits are coarsely quantised, so many voxels share one entropy value and ``U >= percentile``
    could select far more than the asked share. Ties at the boundary are broken arbitrarily.
    """
    flat = values.detach().reshape(-1)
    count = int(round(min(max(fraction, 0.0), 1.0) * flat.numel()))
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=values.device)
    if count > 0:
        mask[torch.topk(flat.float(), count, largest=largest, sorted=False).indices] = True
    return mask.reshape(values.shape)


def high_uncertainty_mask(uncertainty: torch.Tensor, mode: str, fraction: float, threshold: float) -> torch.Tensor:
    """URL's M_h: bool (B, *S).

    mode "percentile": the most uncertain ``fraction`` of all voxels given (exactly
    round(fraction N) of them, see ``ranked_mask``); mode "absolute": U >= ``threshold``
    (normalised-entropy units).
    """
    if mode == "percentile":
        return ranked_mask(uncertainty, fraction, largest=True)
    if mode == "absolute":
        return uncertainty >= threshold
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


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_v M_v CE(z_v, y_v) / sum_v M_v; 0 (keeping the graph) when the mask is empty."""
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    weights = mask.float()
    return (weights * ce).sum() / weights.sum().clamp_min(1.0)


def masked_dice_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dice of ``SupervisedLoss`` restricted to the masked voxels.

        1 - mean_{c >= 1} (2 sum M p_c g_c + 1e-5) / (sum M p_c^2 + sum M g_c^2 + 1e-5)
    (foreground classes, squared denominator, sums pooled over the batch). A class absent from
    the masked target scores Dice 1 - 1e-5 / (sum M p_c^2 + 1e-5), which pushes p_c down there,
    as the unmasked loss does. An empty mask gives 0 with a graph.
    """
    probs = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).float()
    weights = mask.float().unsqueeze(1)
    if not bool(mask.any()):
        return probs.sum() * 0.0
    dims = [0] + list(range(2, probs.dim()))
    intersection = (weights * probs * one_hot).sum(dim=dims)[1:]
    denominator = (weights * probs**2).sum(dim=dims)[1:] + (weights * one_hot).sum(dim=dims)[1:]
    return 1.0 - ((2.0 * intersection + SMOOTH) / (denominator + SMOOTH)).mean()


def uncertainty_weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, uncertainty: torch.Tensor
) -> torch.Tensor:
    """URL's soft variant: mean_v U_v CE(z_v, y_v), U detached.

    Added with weight gamma to the plain CE it gives companion-methods.md's
    mean_v (1 + gamma U_v) CE(z_v, y_v).
    """
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    return (uncertainty.detach().float() * ce).mean()
