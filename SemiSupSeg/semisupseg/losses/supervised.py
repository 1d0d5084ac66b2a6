"""The supervised loss on labelled patches: cross-entropy + soft Dice (docs/dycon.md, step 4)."""

from __future__ import annotations

from typing import Dict

import torch
from monai.losses import DiceCELoss
from torch import nn

from .uncl import at_least_fp32

SMOOTH = 1e-5


class SupervisedLoss(nn.Module):
    """CE + Dice on foreground classes with a squared denominator, pooled over the batch.

        CE   = mean_{b, v} -log softmax(logits)_{y}
        Dice = 1 - mean_{c >= 1} (2 sum_{b,v} p_c g_c + 1e-5) / (sum_{b,v} p_c^2 + sum_{b,v} g_c^2 + 1e-5)
        L    = CE + Dice

    Expressed with MONAI's ``DiceCELoss``. Computed in fp32 with autocast off.

    ``forward(logits (B, C, X, Y, Z), target (B, X, Y, Z) int) -> 0-d tensor``;
    ``parts(logits, target) -> {"ce", "dice", "total"}``.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
        self.num_classes = num_classes
        self.dice_ce = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            squared_pred=True,
            batch=True,
            smooth_nr=SMOOTH,
            smooth_dr=SMOOTH,
            lambda_ce=1.0,
            lambda_dice=1.0,
        )

    def _prepare(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.shape[1] != self.num_classes or target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"expected logits (B, {self.num_classes}, *spatial) and target (B, *spatial), "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        return at_least_fp32(logits), target.long()[:, None]

    def parts(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The CE and Dice terms and their sum, each a 0-d fp32 tensor (with gradient)."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits32, target1 = self._prepare(logits, target)
            ce = self.dice_ce.ce(logits32, target1)
            dice = self.dice_ce.dice(logits32, target1)
            return {"ce": ce, "dice": dice, "total": ce + dice}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits32, target1 = self._prepare(logits, target)
            return self.dice_ce(logits32, target1)
