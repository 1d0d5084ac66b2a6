"""One uncertainty score per case, and the order in which cases are offered for annotation.

Why not the mean uncertainty of the whole volume: background fills most of a scan and is
predicted confidently, so a whole-volume mean mostly measures the size of the field of view and
ranks a large scan with a badly segmented structure below a small, easy one. The score looks
only where a correction can matter:

    region = dilate(predicted foreground, boundary_width)  OR  {v : u(v) > 0.5}
    score  = mean of u over region          (0 when the region is empty)

The dilated foreground covers the structure and both sides of its boundary; the second term
catches structures the model missed entirely (no foreground predicted, but uncertain), which
would otherwise score 0 and never be shown to the annotator.
"""

from __future__ import annotations

import random
from typing import Hashable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError

__all__ = ["case_score", "class_scores", "rank_cases", "RANKING_ORDERS", "UNCERTAIN_LEVEL"]

UNCERTAIN_LEVEL = 0.5  # normalised entropy above which a voxel always counts (p_max < ~0.89 for C = 2)
RANKING_ORDERS = ("uncertainty", "random", "least_recently_labelled")


def case_score(
    uncertainty: np.ndarray,
    labelmap: np.ndarray,
    num_classes: int,
    boundary_width: int = 2,
) -> float:
    """Mean normalised uncertainty over the dilated predicted foreground and the uncertain voxels.

    uncertainty: (x, y, z) float in [0, 1]; labelmap: (x, y, z) int in [0, num_classes).
    Foreground is every label > 0; it is dilated by ``boundary_width`` voxels (26-connected
    steps). Returns a float in [0, 1]; 0 when nothing is predicted and nothing is uncertain.
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    lab = np.asarray(labelmap)
    if u.shape != lab.shape:
        raise ValueError(f"uncertainty {u.shape} and labelmap {lab.shape} must have the same shape")
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"labelmap values must be in [0, {num_classes})")
    region = lab > 0
    if boundary_width > 0 and region.any():
        region = ndimage.binary_dilation(
            region, structure=np.ones((3,) * lab.ndim, dtype=bool), iterations=int(boundary_width)
        )
    region |= u > UNCERTAIN_LEVEL
    if not region.any():
        return 0.0
    return float(u[region].mean())


def class_scores(
    uncertainty: np.ndarray,
    labelmap: np.ndarray,
    num_classes: int,
    boundary_width: int = 2,
) -> dict:
    """Which structure a case is uncertain about: one score per predicted foreground class.

        region_c = dilate({v : labelmap(v) = c}, boundary_width)
        score_c  = mean of u over region_c

    uncertainty: (x, y, z) float in [0, 1]; labelmap: (x, y, z) int in [0, num_classes).
    Returns ``{c: score_c}`` for every class c >= 1 that is predicted somewhere (a class never
    predicted has no region, so no entry: "not predicted" is not "confidently predicted"). With
    several classes, ``case_score`` says *whether* to look at a case and this says *at what*.
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    lab = np.asarray(labelmap)
    if u.shape != lab.shape:
        raise ValueError(f"uncertainty {u.shape} and labelmap {lab.shape} must have the same shape")
    structure = np.ones((3,) * lab.ndim, dtype=bool)
    scores = {}
    for c in range(1, int(num_classes)):
        region = lab == c
        if not region.any():
            continue
        if boundary_width > 0:
            region = ndimage.binary_dilation(region, structure=structure, iterations=int(boundary_width))
        scores[c] = float(u[region].mean())
    return scores


def rank_cases(
    scores: Mapping[Hashable, float],
    order: str = "uncertainty",
    seed: int = 0,
    labelled_at: Mapping[Hashable, float] | None = None,
) -> list:
    """Case ids in the order to offer them for annotation.

    order:
        "uncertainty": highest score first (the point of the loop).
        "random": a shuffle seeded by ``seed`` (baseline for the simulated annotator).
        "least_recently_labelled": cases never labelled first, then by ascending
            ``labelled_at`` timestamp (baseline: round-robin review); ties by score.
    Ties always fall back to the case id so the order is deterministic. NaN scores rank last.
    """
    if order not in RANKING_ORDERS:
        raise InputError(f"Unknown case order '{order}'.", f"Use one of: {', '.join(RANKING_ORDERS)}.")
    ids: Sequence = sorted(scores, key=str)

    def by_score(case) -> float:
        value = float(scores[case])
        return -value if value == value else float("inf")  # NaN last

    if order == "uncertainty":
        return sorted(ids, key=by_score)
    if order == "random":
        shuffled = list(ids)
        random.Random(seed).shuffle(shuffled)
        return shuffled
    stamps = labelled_at or {}
    return sorted(ids, key=lambda case: (float(stamps.get(case, float("-inf"))), by_score(case)))
