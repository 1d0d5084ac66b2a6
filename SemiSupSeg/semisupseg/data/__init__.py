"""The engine's data layer: dataset description, validation, image I/O, preprocessing, patches.

``PatchSampler`` is imported lazily (it needs torch), so reading and validating a dataset costs
only SimpleITK and numpy.
"""

from __future__ import annotations

from .dataset import Case, DatasetSpec, load_dataset
from .io import ImageHeader, from_array, read_header, read_image, to_array, write_image_atomic
from .patch_size import default_patch_size
from .preprocess import (
    PreparedCase,
    normalise_intensity,
    prepare_case,
    resample_like,
    resample_to_spacing,
)
from .validate import grid_difference, validate_case, validate_dataset

_LAZY = {"PatchSampler"}

__all__ = [
    "Case",
    "DatasetSpec",
    "ImageHeader",
    "PatchSampler",
    "PreparedCase",
    "default_patch_size",
    "from_array",
    "grid_difference",
    "load_dataset",
    "normalise_intensity",
    "prepare_case",
    "read_header",
    "read_image",
    "resample_like",
    "resample_to_spacing",
    "to_array",
    "validate_case",
    "validate_dataset",
    "write_image_atomic",
]


def __getattr__(name: str):
    if name in _LAZY:
        from . import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
