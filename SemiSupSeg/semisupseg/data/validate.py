"""Checking a dataset before training: every problem a user can fix becomes one ``InputError``.

Per case, in this order (the first failure is reported):
1. the image file exists (and is not a folder), 2. it is a readable image, 3. it is 3D with one
   component, 3b. it holds all the voxel data its header promises (a compressed stream
   decompresses completely to that size: ``io.check_image_complete``),
4. its voxels are finite (float images only: integer pixels cannot hold NaN/Inf; ITK's NIfTI
   reader already maps non-finite values to 0, NRRD and MetaImage keep them),
5. the label file exists, is readable, 3D and single-component (when the case has a label),
6. the label grid equals the image grid (size, spacing, origin, direction, within tolerance),
7. every label value is declared in ``dataset.json``'s ``labels`` (or is its ``ignore_label``,
   "not annotated"), and a label file has at least one annotated voxel.
Before the cases: at least one case is labelled (when ``require_labelled``).

Header checks use ``ImageFileReader.ReadImageInformation`` (no voxels); steps 4 and 7 read
the voxels, so ``check_voxels=False`` skips them when only a quick look is wanted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .dataset import Case, DatasetSpec
from .io import FOLDER_HINT, FOLDER_PROBLEM, ImageHeader, IncompleteImageError, check_image_complete, itk_reason, read_header

# Grids are "equal" within these tolerances: NIfTI stores geometry in float32 (about 1e-7
# relative), and resampling tools round differently, so exact comparison rejects good labels;
# 1e-4 is still far below anything that would misplace a voxel.
SPACING_RTOL = 1e-4
ORIGIN_RTOL = 1e-4  # relative to the coordinate's magnitude, but never below 1e-4 * voxel size
DIRECTION_ATOL = 1e-4

RESAMPLE_HINT = (
    "Resample the label onto its image grid (e.g. in 3D Slicer: export the segmentation as a "
    "label map with the image as reference geometry)."
)


def validate_dataset(
    spec: DatasetSpec,
    cases: Optional[Sequence[Case]] = None,
    require_labelled: bool = True,
    check_voxels: bool = True,
) -> Dict[str, ImageHeader]:
    """Check ``cases`` (default: all of ``spec.cases``); raise ``InputError`` on the first problem.

    Returns each checked case's image header by case id (sizes and spacings feed the
    data-derived defaults such as the patch size, without reading the images again).
    """
    cases = list(spec.cases if cases is None else cases)
    if require_labelled and not any(case.label is not None for case in cases):
        raise InputError(
            f"Dataset '{spec.name}' ({spec.root / 'dataset.json'}) has no labelled case (of {len(cases)}).",
            "Label at least one case (segment it in 3D Slicer and mark it as labelled, or set "
            "its 'label' path in dataset.json).",
        )
    return {case.id: validate_case(spec, case, check_voxels) for case in cases}


def validate_case(spec: DatasetSpec, case: Case, check_voxels: bool = True) -> ImageHeader:
    """All checks of one case (see the module docstring); returns the image header."""
    image_header = _checked_header(spec, case, case.image, "image")
    if check_voxels:
        _check_complete(spec, case, case.image, "image")
    if check_voxels and image_header.is_float:
        _check_finite(spec, case)
    if case.label is not None:
        label_header = _checked_header(spec, case, case.label, "label")
        if check_voxels:
            _check_complete(spec, case, case.label, "label")
        difference = grid_difference(image_header, label_header)
        if difference is not None:
            what, image_value, label_value = difference
            raise InputError(
                f"Case '{case.id}': the label {_shown(spec, case.label)} is not on the image grid: "
                f"{what} differs (image {_fmt(image_value)}, label {_fmt(label_value)}).",
                RESAMPLE_HINT,
            )
        if check_voxels:
            _check_label_values(spec, case)
    return image_header


def grid_difference(
    a: ImageHeader, b: ImageHeader
) -> Optional[Tuple[str, Tuple[float, ...], Tuple[float, ...]]]:
    """First of size / spacing / origin / direction where the grids differ, with both values.

    ``None`` when the grids are equal within the module tolerances.
    """
    if a.size != b.size:
        return "size", a.size, b.size
    spacing_a, spacing_b = np.asarray(a.spacing), np.asarray(b.spacing)
    if not np.allclose(spacing_a, spacing_b, rtol=SPACING_RTOL, atol=0.0):
        return "spacing", a.spacing, b.spacing
    origin_a, origin_b = np.asarray(a.origin), np.asarray(b.origin)
    origin_tol = np.maximum(ORIGIN_RTOL * np.maximum(abs(origin_a), abs(origin_b)), 1e-4 * spacing_a)
    if np.any(abs(origin_a - origin_b) > origin_tol):
        return "origin", a.origin, b.origin
    if np.any(abs(np.asarray(a.direction) - np.asarray(b.direction)) > DIRECTION_ATOL):
        return "direction", a.direction, b.direction
    return None


def _checked_header(spec: DatasetSpec, case: Case, path: Path, role: str) -> ImageHeader:
    """Header of the case's image or label file, after the existence/readability/shape checks."""
    shown = _shown(spec, path)
    try:
        header = read_header(path)
    except IsADirectoryError:
        raise InputError(f"Case '{case.id}': {role} path {shown} {FOLDER_PROBLEM}.", FOLDER_HINT) from None
    except FileNotFoundError:
        raise InputError(
            f"Case '{case.id}': {role} file {shown} does not exist.",
            f"Check the '{role}' path of this case in {spec.root / 'dataset.json'} (paths are "
            "relative to that folder), or restore the file.",
        ) from None
    except RuntimeError as err:
        _check_complete(spec, case, path, role)  # a cut or damaged stream says more than ITK's reason
        raise InputError(
            f"Case '{case.id}': {role} file {shown} cannot be read ({itk_reason(err)}).",
            "Save it again as NIfTI (.nii.gz), NRRD (.nrrd) or MetaImage (.mha), e.g. from 3D Slicer.",
        ) from None
    if header.dimension != 3 or min(header.size) < 2:
        kind = f"{header.dimension}D" if header.dimension != 3 else "a single slice"
        raise InputError(
            f"Case '{case.id}': {role} file {shown} is {kind} (size {_fmt(header.size)}); a 3D volume is needed.",
            "Use the whole 3D volume (for a 4D series, extract one time point or channel, "
            "e.g. with 3D Slicer's Sequences module).",
        )
    if header.components != 1:
        raise InputError(
            f"Case '{case.id}': {role} file {shown} has {header.components} components per voxel "
            "(vector or RGB image); a single-component (scalar) volume is needed.",
            "Convert it to a scalar volume (e.g. 3D Slicer's 'Vector to Scalar Volume' module) "
            "or extract one channel.",
        )
    return header


def _check_complete(spec: DatasetSpec, case: Case, path: Path, role: str) -> None:
    """The file holds every voxel byte its header promises (ITK would read a truncated NIfTI
    without a word and fill the rest with zeros); see ``io.check_image_complete``."""
    try:
        check_image_complete(path)
    except IncompleteImageError as err:
        raise InputError(
            f"Case '{case.id}': {role} file {_shown(spec, path)} is truncated or damaged: {err}.",
            "An interrupted copy or download does this: copy the file again from its source, "
            "or save it again from 3D Slicer.",
        ) from None
    except OSError as err:
        raise InputError(
            f"Case '{case.id}': {role} file {_shown(spec, path)} cannot be read ({err.strerror or err}: "
            f"{Path(err.filename or path).name}).",
            "Check that the file (and a .nhdr/.mhd header's data file) is there and readable.",
        ) from None


def _check_finite(spec: DatasetSpec, case: Case) -> None:
    voxels = _voxels(spec, case, case.image, "image")
    finite = np.isfinite(voxels)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise InputError(
            f"Case '{case.id}': image file {_shown(spec, case.image)} has {bad} NaN or infinite voxel(s).",
            "Replace them (e.g. with 0 or the image minimum) before training, for example with "
            "SimpleITK or numpy, or re-export the image from its source.",
        )


def _check_label_values(spec: DatasetSpec, case: Case) -> None:
    values = np.unique(_voxels(spec, case, case.label, "label"))
    ignore = spec.ignore_label  # "not annotated" (partial labels), only when dataset.json declares it
    declared = np.asarray(sorted(spec.labels) + ([] if ignore is None else [ignore]), dtype=np.float64)
    undeclared = [v for v in values.tolist() if not np.any(declared == v)]
    if ignore is not None and not undeclared and values.tolist() == [ignore]:
        raise InputError(
            f"Case '{case.id}': label file {_shown(spec, case.label)} has no annotated voxel (every "
            f"voxel is {ignore}, the ignore_label meaning 'not annotated').",
            "Annotate at least one region of this case (e.g. Accept region in 3D Slicer), or set its "
            "'label' to null in dataset.json so it trains as an unlabelled case.",
        )
    if undeclared:
        listed = ", ".join(_fmt_value(v) for v in undeclared[:10])
        more = f" and {len(undeclared) - 10} more" if len(undeclared) > 10 else ""
        raise InputError(
            f"Case '{case.id}': label file {_shown(spec, case.label)} contains value(s) {listed}{more} "
            f"not declared in dataset.json labels {sorted(spec.labels)}.",
            "Declare every value in 'labels' of dataset.json (values 0..C-1), or relabel the "
            "segmentation (e.g. merge or remove the extra segments in 3D Slicer's Segment Editor).",
        )


def _voxels(spec: DatasetSpec, case: Case, path: Path, role: str) -> np.ndarray:
    """All voxels of a file; a header that reads but voxels that do not is still the user's file."""
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as err:
        raise InputError(
            f"Case '{case.id}': {role} file {_shown(spec, path)} cannot be read ({itk_reason(err)}).",
            "The file may be truncated: save it again, e.g. from 3D Slicer.",
        ) from None


def _shown(spec: DatasetSpec, path: Path) -> str:
    """Path as the user wrote it in dataset.json when it lies under the dataset folder."""
    try:
        return str(Path(path).relative_to(spec.root))
    except ValueError:
        return str(path)


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(_fmt_value(v) for v in values) + ")"


def _fmt_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
