"""Evaluation: Dice, IoU, HD95 and ASD in mm, per class, per case and mean (``metrics``), and the
``evaluate`` command (``semisupseg.evaluation.cli``: ``add_evaluate_parser``, ``run_evaluate``).

``cli`` is not imported here so that ``python -m semisupseg.evaluation.cli`` runs cleanly.
"""

from .metrics import (
    ASD_DEFINITION,
    EMPTY_DEFINITION,
    HD95_DEFINITION,
    asd,
    dice,
    evaluate_case,
    evaluate_folders,
    hd95,
    iou,
    largest_connected_component,
)

__all__ = [
    "ASD_DEFINITION",
    "EMPTY_DEFINITION",
    "HD95_DEFINITION",
    "asd",
    "dice",
    "evaluate_case",
    "evaluate_folders",
    "hd95",
    "iou",
    "largest_connected_component",
]
