"""The supervised loss on labelled patches: cross-entropy + soft Dice (docs/dycon.md, step 4),
counted over annotated voxels only (a partially labelled patch marks the rest ``NOT_ANNOTATED``)."""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .annotation import annotated_mask, fill_not_annotated
from .uncl import at_least_fp32

SMOOTH = 1e-5


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CE averaged over the voxels in ``mask`` that are annotated.

        M_v = mask_v * [y_v != NOT_ANNOTATED]
        CE  = sum_v M_v (-log softmax(z_v)_{y_v}) / max(sum_v M_v, 1)

    logits (B, C, *S), target (B, *S) int (-1 = not annotated), mask (B, *S) bool or None (all)
    -> 0-d (fp32, fp64 for fp64 inputs). 0 with a graph (and zero gradient) when no voxel counts.
    """
    weights = _weights(target, mask)
    ce = F.cross_entropy(at_least_fp32(logits), fill_not_annotated(target), reduction="none")
    weights = weights.to(ce.dtype)
    return (weights * ce).sum() / weights.sum().clamp_min(1.0)


def masked_dice_loss(logits: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Soft Dice over foreground classes, squared denominator, sums pooled over the batch, over
    the voxels in ``mask`` that are annotated (M as in :func:`masked_cross_entropy`)::

        Dice = 1 - mean_{c >= 1} (2 sum_v M_v p_c g_c + 1e-5) / (sum_v M_v p_c^2 + sum_v M_v g_c^2 + 1e-5)

    With every voxel counted this is MONAI's ``DiceLoss(include_background=False,
    squared_pred=True, batch=True, smooth_nr=smooth_dr=1e-5)``. A class absent from the counted
    target scores 1 - 1e-5 / (sum M p_c^2 + 1e-5), which pushes p_c down there. No counted
    voxel: every class scores 1e-5 / 1e-5 = 1, so the loss is exactly 0 with zero gradient.
    logits (B, C, *S), target (B, *S) int, mask (B, *S) bool or None -> 0-d fp32.
    """
    probs = torch.softmax(at_least_fp32(logits), dim=1)
    one_hot = F.one_hot(fill_not_annotated(target), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    weights = _weights(target, mask).to(probs.dtype).unsqueeze(1)
    dims = [0] + list(range(2, probs.dim()))
    intersection = (weights * probs * one_hot).sum(dim=dims)[1:]
    denominator = (weights * probs**2).sum(dim=dims)[1:] + (weights * one_hot).sum(dim=dims)[1:]
    return 1.0 - ((2.0 * intersection + SMOOTH) / (denominator + SMOOTH)).mean()


def _weights(target: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    counted = annotated_mask(target)
    if mask is not None:
        counted = counted & mask.bool()
    return counted.float()


class SupervisedLoss(nn.Module):
    """CE + Dice on foreground classes with a squared denominator, pooled over the batch, over
    annotated voxels (M_v = [y_v != -1]; a fully labelled batch has M = 1 everywhere)::

        CE   = sum_{b,v} M -log softmax(logits)_{y} / max(sum_{b,v} M, 1)
        Dice = 1 - mean_{c >= 1} (2 sum_{b,v} M p_c g_c + 1e-5) / (sum_{b,v} M p_c^2 + sum_{b,v} M g_c^2 + 1e-5)
        L    = CE + Dice

    Fully labelled, this is MONAI's ``DiceCELoss(include_background=False, to_onehot_y=True,
    softmax=True, squared_pred=True, batch=True, smooth 1e-5)``; it is written out because MONAI's
    losses take no voxel mask. A patch with no annotated voxel adds nothing to either sum: it
    gives no gradient, and a batch made only of such patches has loss exactly 0 (no NaN).
    Computed in fp32 with autocast off.

    ``forward(logits (B, C, X, Y, Z), target (B, X, Y, Z) int, -1 = not annotated) -> 0-d tensor``;
    ``parts(logits, target) -> {"ce", "dice", "total"}``.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
        self.num_classes = num_classes

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.shape[1] != self.num_classes or target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"expected logits (B, {self.num_classes}, *spatial) and target (B, *spatial), "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )

    def parts(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The CE and Dice terms and their sum, each a 0-d fp32 tensor (with gradient)."""
        self._check(logits, target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits32 = at_least_fp32(logits)
            ce = masked_cross_entropy(logits32, target)
            dice = masked_dice_loss(logits32, target)
            return {"ce": ce, "dice": dice, "total": ce + dice}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.parts(logits, target)["total"]
