"""DyCON's losses: UnCL, FeCL, the supervised CE + Dice, and FeCL's patch labels.

Label maps given to the losses use ``NOT_ANNOTATED = -1`` for voxels nobody labelled (partial
labels, see ``annotation.py``); every supervised term counts annotated voxels only.

See docs/dycon.md (shared specification) for the formulas; each function's docstring repeats its
formula and tensor shapes.
"""

from __future__ import annotations

from .annotation import NOT_ANNOTATED, annotated_mask, fill_not_annotated
from .fecl import FeCLLoss, fecl
from .fecl_compat import hard_negative_threshold, threshold_hard_negative_loss
from .patch_labels import block_labels, block_mean, cap_anchors, teacher_block_labels
from .schedules import dycon_beta
from .supervised import SupervisedLoss, masked_cross_entropy, masked_dice_loss
from .uncl import UnCLLoss, uncl, voxel_entropy

__all__ = [
    "NOT_ANNOTATED",
    "annotated_mask",
    "fill_not_annotated",
    "masked_cross_entropy",
    "masked_dice_loss",
    "uncl",
    "fecl",
    "UnCLLoss",
    "FeCLLoss",
    "SupervisedLoss",
    "dycon_beta",
    "block_labels",
    "teacher_block_labels",
    "block_mean",
    "cap_anchors",
    "voxel_entropy",
    "hard_negative_threshold",
    "threshold_hard_negative_loss",
]
