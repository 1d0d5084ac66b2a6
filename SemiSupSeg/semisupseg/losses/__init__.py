"""DyCON's losses: UnCL, FeCL, the supervised CE + Dice, and FeCL's patch labels.

See docs/dycon.md (shared specification) for the formulas; each function's docstring repeats its
formula and tensor shapes.
"""

from __future__ import annotations

from .fecl import FeCLLoss, fecl
from .fecl_compat import hard_negative_threshold, threshold_hard_negative_loss
from .patch_labels import block_labels, block_mean, cap_anchors, teacher_block_labels
from .schedules import dycon_beta
from .supervised import SupervisedLoss
from .uncl import UnCLLoss, uncl, voxel_entropy

__all__ = [
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
