"""Test-time flips: the prediction averaged over the flips the network was trained with.

The sampler flips every training patch along x and along y at random (data/sampling.py), so the
network has seen the four orientations none, x, y and x+y equally often. Averaging its softmax
over them (each prediction flipped back) smooths the label map where one orientation errs; the
config's ``tta`` ("off" | "flips") turns it on, for 4x the prediction's network passes.

Only these four: training never flips z, and on ACDC's thin slabs a z flip (base and apex
swapped) is an image the network has never seen; adding the four z-flipped passes took held-out
mean Dice from 0.73 to 0.33 (docs/benchmarks.md, acdc notes).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import InputError

__all__ = ["TRAINED_FLIPS", "TTA_CHOICES", "check_tta", "tta_passes", "flipped_back", "flip_averaged"]

TRAINED_FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (0, 1))  # axes of the (X, Y, Z) volume
TTA_CHOICES = ("off", "flips")


def check_tta(value) -> str:
    """The config's ``tta`` value, checked."""
    if value not in TTA_CHOICES:
        raise InputError(f"tta must be one of {', '.join(TTA_CHOICES)} (got {value!r}).",
                         'Use "flips" to average the prediction over the trained flips, or "off".')
    return value


def tta_passes(config: dict) -> int:
    """Network passes per case the prediction makes for each inference network and MC sample."""
    return len(TRAINED_FLIPS) if config.get("tta", "off") == "flips" else 1


def flipped_back(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, axes) -> torch.Tensor:
    """``predict`` (image (X, Y, Z) -> probabilities (C, X, Y, Z)) on the image flipped along
    ``axes``, its output flipped back to the image's orientation."""
    if not axes:
        return predict(image)
    return torch.flip(predict(torch.flip(image, dims=axes)), dims=[a + 1 for a in axes])


def flip_averaged(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                  first: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``predict`` over TRAINED_FLIPS, (C, X, Y, Z); ``first``: the unflipped prediction
    when the caller already has it (it is not computed again)."""
    total = first if first is not None else predict(image)
    for axes in TRAINED_FLIPS[1:]:
        total = total + flipped_back(predict, image, axes)
    return total / len(TRAINED_FLIPS)
