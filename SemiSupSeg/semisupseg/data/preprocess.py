"""From files to training arrays: intensity normalisation, resampling, ``prepare_case``.

Normalisation by modality (the first channel's, from ``dataset.json``):

- **CT**: intensities are Hounsfield units, comparable across scanners, so a fixed mapping keeps
  that meaning: clip to ``ct_window`` (default -1000..1000 HU) and scale linearly to [-1, 1].
  A per-volume z-score would make the same tissue land on different values depending on how
  much air or bone the field of view holds.
- **MR and anything else**: arbitrary units, so z-score per volume, ``(x - mean) / std``.
  When more than half of the volume is exactly 0 (skull-stripped or masked/cropped data), the
  zeros are padding rather than tissue: mean and std come from the non-zero voxels only and the
  zero voxels are set to 0 afterwards (the tissue mean), so the padding does not dominate.

Partial labels: a label voxel equal to the dataset's ``ignore_label`` ("not annotated") becomes
``NOT_ANNOTATED_STORED`` (255) in ``PreparedCase.label``, whatever value the dataset declared, so
nothing downstream needs the dataset's value (the sampler turns 255 into the losses' -1). Labels
are resampled by nearest neighbour, which copies values and so keeps "not annotated" intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .dataset import Case
from .io import read_image, to_array

Spacing = Tuple[float, float, float]

_EPS = 1e-8

# "Not annotated" in the uint8 label arrays of PreparedCase. No class can be 255: classes are
# 0..C-1 and a label array holding 255 classes plus this value would need C = 256 > 255.
NOT_ANNOTATED_STORED = 255


@dataclass
class PreparedCase:
    """A case ready for the patch sampler (arrays C-ordered, indexed (x, y, z))."""

    id: str
    image: np.ndarray  # float32 (x, y, z), normalised, on the training grid
    label: Optional[np.ndarray]  # uint8 (x, y, z) on the training grid, or None; 255 = not annotated
    reference: sitk.Image  # the original grid (uint8 placeholder voxels): where outputs are written
    spacing: Spacing  # training-grid spacing (x, y, z) in mm

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.image.shape)

    @property
    def partially_labelled(self) -> bool:
        """True when the label has "not annotated" voxels (reads the whole label array)."""
        return self.label is not None and bool(np.any(self.label == NOT_ANNOTATED_STORED))


def normalise_intensity(
    arr: np.ndarray, modality: str, ct_window: Tuple[float, float] = (-1000.0, 1000.0)
) -> np.ndarray:
    """Normalised float32 copy of ``arr`` (see the module docstring for the rules).

    CT:   y = 2 * (clip(x, lo, hi) - lo) / (hi - lo) - 1          in [-1, 1]
    else: y = (x - mean) / max(std, 1e-8), statistics over all voxels, or over the non-zero
          voxels (zeros then set to 0) when more than half of the voxels are exactly 0.
    """
    arr = np.asarray(arr)
    if modality.strip().upper() == "CT":
        low, high = float(ct_window[0]), float(ct_window[1])
        if not high > low:
            raise InputError(f"CT window {ct_window} is empty.", "Give the window as (low, high) HU with low < high.")
        clipped = np.clip(arr.astype(np.float32), low, high)
        return np.ascontiguousarray((clipped - low) * (2.0 / (high - low)) - 1.0, dtype=np.float32)
    nonzero = arr != 0
    masked = np.count_nonzero(nonzero) < 0.5 * arr.size
    values = arr[nonzero] if masked and nonzero.any() else arr
    mean = float(np.mean(values, dtype=np.float64))
    std = float(np.std(values, dtype=np.float64))
    out = ((arr.astype(np.float64) - mean) / max(std, _EPS)).astype(np.float32)
    if masked:
        out[~nonzero] = 0.0
    return np.ascontiguousarray(out)


def resample_to_spacing(img: sitk.Image, spacing: Sequence[float], is_label: bool) -> sitk.Image:
    """``img`` on a grid with the same origin and direction and the given spacing.

    size_new = max(1, round(size * spacing_old / spacing_new)) per axis. Images are
    interpolated linearly (as float32), labels by nearest neighbour (pixel type kept). Points
    just outside the old grid (the last voxel of a slightly larger new grid) take the nearest
    voxel's value instead of 0, so no artificial dark border appears.
    """
    old_spacing, old_size = np.asarray(img.GetSpacing()), np.asarray(img.GetSize())
    new_spacing = np.asarray([float(s) for s in spacing])
    if new_spacing.shape != old_spacing.shape or np.any(new_spacing <= 0):
        raise InputError(f"Target spacing {tuple(spacing)} is not {img.GetDimension()} positive numbers.",
                         "Give the spacing in mm per axis, e.g. [1.0, 1.0, 1.0].")
    new_size = [max(1, int(round(n))) for n in old_size * old_spacing / new_spacing]
    return sitk.Resample(
        img,
        new_size,
        sitk.Transform(),
        _interpolator(is_label),
        img.GetOrigin(),
        new_spacing.tolist(),
        img.GetDirection(),
        0.0,
        _output_pixel_type(img, is_label),
        True,  # useNearestNeighborExtrapolator
    )


def resample_like(img: sitk.Image, reference: sitk.Image, is_label: bool) -> sitk.Image:
    """``img`` resampled onto ``reference``'s grid (size, spacing, origin, direction).

    Used to bring predictions made on the training grid back to the original image grid.
    Linear for images (float32 out), nearest neighbour for labels (pixel type kept).
    """
    return sitk.Resample(
        img, reference, sitk.Transform(), _interpolator(is_label), 0.0, _output_pixel_type(img, is_label), True
    )


def header_image(img: sitk.Image) -> sitk.Image:
    """A uint8 image with ``img``'s grid: keeps the geometry (and size) for writing outputs
    at one byte per voxel instead of holding on to the original float voxels."""
    placeholder = sitk.Image(img.GetSize(), sitk.sitkUInt8)
    placeholder.SetSpacing(img.GetSpacing())
    placeholder.SetOrigin(img.GetOrigin())
    placeholder.SetDirection(img.GetDirection())
    return placeholder


def prepare_case(
    case: Case,
    modality: str,
    target_spacing: Optional[Sequence[float]] = None,
    with_label: bool = True,
    ct_window: Tuple[float, float] = (-1000.0, 1000.0),
) -> PreparedCase:
    """Read a case, resample it to ``target_spacing`` (when given and different), normalise.

    The label (read when ``with_label`` and the case has one) is resampled onto the image's
    training grid itself, so image and label arrays always have the same shape. Its
    ``case.ignore_label`` voxels become ``NOT_ANNOTATED_STORED`` (see the module docstring).
    """
    original = read_image(case.image)
    image = sitk.Cast(original, sitk.sitkFloat32)
    resampled = target_spacing is not None and not np.allclose(
        image.GetSpacing(), [float(s) for s in target_spacing], rtol=1e-4, atol=0.0
    )
    if resampled:
        image = resample_to_spacing(image, target_spacing, is_label=False)
    label = None
    if with_label and case.label is not None:
        label_img = read_image(case.label)
        _check_something_annotated(case, label_img)
        if resampled:
            label_img = resample_like(label_img, image, is_label=True)
        elif label_img.GetSize() != original.GetSize():
            raise InputError(
                f"Case '{case.id}': label size {label_img.GetSize()} differs from image size {original.GetSize()}.",
                "Resample the label onto its image grid (validate_dataset reports the details).",
            )
        label = _annotation_coded(case, _label_array(case, to_array(label_img)))
    return PreparedCase(
        id=case.id,
        image=normalise_intensity(to_array(image), modality, ct_window),
        label=label,
        reference=header_image(original),
        spacing=tuple(float(s) for s in image.GetSpacing()),
    )


def _label_array(case: Case, values: np.ndarray) -> np.ndarray:
    """Label voxels as C-ordered uint8; values outside 0..255 would wrap, so they are refused."""
    if values.size and (values.min() < 0 or values.max() > 255):
        raise InputError(
            f"Case '{case.id}': label values range {values.min()}..{values.max()}, outside 0..255.",
            "Use label values 0..C-1 as declared in dataset.json 'labels'.",
        )
    return np.ascontiguousarray(np.rint(values) if values.dtype.kind == "f" else values, dtype=np.uint8)


def _check_something_annotated(case: Case, label_img: sitk.Image) -> None:
    """A label file whose every voxel is the ignore value is refused (checked on the file's own
    grid: annotated voxels that resampling drops are the sampler's business, see sampling.py)."""
    if case.ignore_label is None:
        return
    extrema = sitk.MinimumMaximumImageFilter()
    extrema.Execute(label_img)
    if extrema.GetMinimum() == extrema.GetMaximum() == case.ignore_label:
        raise InputError(
            f"Case '{case.id}': label file {case.label} has no annotated voxel (every voxel is "
            f"{case.ignore_label}, the ignore_label meaning 'not annotated').",
            "Annotate at least one region of this case, or set its 'label' to null in dataset.json "
            "so it trains as an unlabelled case.",
        )


def _annotation_coded(case: Case, label: np.ndarray) -> np.ndarray:
    """``label`` with the case's ignore value as ``NOT_ANNOTATED_STORED``; refuses a 255 that the
    dataset did not declare (it would otherwise read as "not annotated")."""
    if case.ignore_label != NOT_ANNOTATED_STORED:
        if label.size and int(label.max()) == NOT_ANNOTATED_STORED:
            raise InputError(
                f"Case '{case.id}': label file {case.label} contains value 255, which dataset.json "
                "does not declare.",
                'If 255 marks voxels that are not annotated, add "ignore_label": 255 to dataset.json; '
                "otherwise relabel the segmentation with values 0..C-1.",
            )
        if case.ignore_label is not None:
            label[label == case.ignore_label] = NOT_ANNOTATED_STORED
    return label


def _interpolator(is_label: bool) -> int:
    return sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear


def _output_pixel_type(img: sitk.Image, is_label: bool) -> int:
    if is_label:
        return img.GetPixelID()
    return sitk.sitkVectorFloat32 if img.GetNumberOfComponentsPerPixel() > 1 else sitk.sitkFloat32
