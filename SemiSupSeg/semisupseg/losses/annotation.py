"""The losses' one sentinel for "not annotated" voxels of a partially labelled patch.

A label voxel equal to the dataset's ``ignore_label`` (``dataset.json``) is "not annotated".
The data layer keeps such voxels as 255 in its uint8 arrays (``data.preprocess.NOT_ANNOTATED_STORED``)
and the patch sampler hands them to the methods as ``NOT_ANNOTATED = -1`` in ``Batch.y_l``
(int64). Every loss that reads a label map treats -1 as "no label here": the voxel contributes
neither to a supervised term's numerator nor to its denominator (and so gets no gradient from it).
-1 was chosen because it can never be a class index and is already FeCL's "takes no part" patch
label, so a block label derived from unannotated voxels needs no translation.
"""

from __future__ import annotations

import torch

NOT_ANNOTATED = -1


def annotated_mask(target: torch.Tensor) -> torch.Tensor:
    """Bool mask of annotated voxels: ``target >= 0`` (any shape)."""
    return target >= 0


def fill_not_annotated(target: torch.Tensor, value: int = 0) -> torch.Tensor:
    """``target`` (int) with not-annotated voxels replaced by ``value``, as int64.

    For functions such as ``one_hot`` or ``cross_entropy`` that need a valid class everywhere;
    the caller masks those voxels out afterwards.
    """
    target = target.long()
    return torch.where(target >= 0, target, torch.full_like(target, value))
