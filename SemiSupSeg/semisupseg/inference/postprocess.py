"""Optional clean-up of a predicted label map (config ``postprocess``, off by default as D14 asks).

``largest_foreground``: keep the largest 26-connected component of all foreground classes taken
together and set every other foreground voxel to background. It is the foreground form of
nnU-Net's post-processing: one organ or one connected group of structures (the heart's RV,
myocardium and LV touch each other) survives whole, even where one class is split in pieces,
while a confident blob far from it (a vessel taken for ventricle) goes. Keeping each class's
largest component instead lost whole classes on ACDC (a class cut in two by a thick slice keeps
the wrong piece: held-out cases fell to Dice 0; docs/benchmarks.md, acdc notes).

Not for data whose structures lie apart (two kidneys, several lesions): leave it "off" there.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..evaluation.metrics import largest_connected_component

__all__ = ["POSTPROCESS_CHOICES", "check_postprocess", "postprocessed", "removed_by_postprocess"]

POSTPROCESS_CHOICES = ("off", "largest_foreground")


def check_postprocess(value) -> str:
    """The config's ``postprocess`` value, checked."""
    if value not in POSTPROCESS_CHOICES:
        raise InputError(
            f"postprocess must be one of {', '.join(POSTPROCESS_CHOICES)} (got {value!r}).",
            'Use "largest_foreground" to keep only the largest connected group of predicted structures, or "off".',
        )
    return value


def removed_by_postprocess(labelmap: np.ndarray, mode: str) -> np.ndarray:
    """Boolean mask of the foreground voxels that ``mode`` sets to background (none for "off")."""
    labels = np.asarray(labelmap)
    if check_postprocess(mode) == "off":
        return np.zeros(labels.shape, dtype=bool)
    foreground = labels > 0
    return foreground & ~largest_connected_component(foreground)


def postprocessed(labelmap: np.ndarray, mode: str) -> np.ndarray:
    """A copy of the (x, y, z) label map with ``mode`` applied."""
    out = np.array(labelmap, copy=True)
    out[removed_by_postprocess(out, mode)] = 0
    return out
