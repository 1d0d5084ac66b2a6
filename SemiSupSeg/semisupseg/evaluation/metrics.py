"""Segmentation metrics in millimetres: Dice, IoU, HD95 and ASD, per class, per case and mean.

Binary masks are (x, y, z) arrays; ``spacing`` is (x, y, z) in mm, so distances are physical
even on anisotropic grids. Surface voxels and surface distances come from MONAI
(``get_mask_edges`` and ``get_surface_distance``: surface = mask XOR its 6-connected erosion, exact Euclidean
distance between voxel centres with the spacing); the percentile and the mean over the pooled
distances are taken here, because MONAI's ``compute_hausdorff_distance`` uses another HD95
definition (the larger of the two directed 95th percentiles). Ours is the one the LA
semi-supervised literature reports (medpy's ``hd95``), so our numbers compare with its tables.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics.utils import get_mask_edges, get_surface_distance
from scipy import ndimage

from ..data.io import IMAGE_EXTENSIONS, ImageHeader, read_image, strip_image_extension, to_array
from ..data.validate import grid_difference
from ..errors import InputError

__all__ = [
    "HD95_DEFINITION",
    "ASD_DEFINITION",
    "EMPTY_DEFINITION",
    "METRIC_NAMES",
    "dice",
    "iou",
    "surface_distances_mm",
    "hd95",
    "asd",
    "largest_connected_component",
    "binary_metrics",
    "evaluate_case",
    "evaluate_folders",
]

HD95_DEFINITION = (
    "HD95: symmetric 95th percentile (linear interpolation) of the pooled surface distances of both "
    "directions (prediction surface -> truth surface and truth surface -> prediction surface), in mm. "
    "Surface = mask voxels with a 6-connected background neighbour; distance = Euclidean between voxel "
    "centres using the image spacing. Same as medpy's hd95; MONAI's default (max of the two directed "
    "95th percentiles) gives slightly larger values."
)
ASD_DEFINITION = (
    "ASD: symmetric average surface distance (ASSD) = mean of the same pooled surface distances of both "
    "directions, in mm. (medpy's asd, used by DyCON's scripts, is one-directional: prediction -> truth only.)"
)
EMPTY_DEFINITION = (
    "Empty masks: prediction empty and truth not (or the reverse) -> Dice 0, IoU 0, HD95 = ASD = the image "
    "diagonal in mm (a large finite penalty, not 0); both empty -> Dice 1, IoU 1, HD95 = ASD = 0."
)
METRIC_NAMES = ("dice", "iou", "hd95_mm", "asd_mm")
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _binary(mask) -> np.ndarray:
    return np.asarray(mask).astype(bool)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2 |P & T| / (|P| + |T|); 1 when both masks are empty."""
    p, t = _binary(pred), _binary(truth)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """|P & T| / |P | T| (Jaccard); 1 when both masks are empty."""
    p, t = _binary(pred), _binary(truth)
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the field of view's diagonal: sqrt(sum_a (n_a * s_a)^2)."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def surface_distances_mm(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each prediction surface voxel to the truth surface, and the reverse.

    Both masks must be non-empty. Returns (pred_to_truth (N_p,), truth_to_pred (N_t,)) float64.
    """
    p = torch.as_tensor(_binary(pred))
    t = torch.as_tensor(_binary(truth))
    if not p.any() or not t.any():
        raise ValueError("surface distances need two non-empty masks")
    edges_pred, edges_truth = get_mask_edges(p, t, crop=True)  # cropping to the union keeps it fast
    mm = [float(s) for s in spacing]
    pred_to_truth = get_surface_distance(edges_pred, edges_truth, distance_metric="euclidean", spacing=mm)
    truth_to_pred = get_surface_distance(edges_truth, edges_pred, distance_metric="euclidean", spacing=mm)
    return np.asarray(pred_to_truth, dtype=np.float64), np.asarray(truth_to_pred, dtype=np.float64)


def _empty_distance(pred: np.ndarray, truth: np.ndarray, spacing) -> float | None:
    """The distance convention for empty masks, or None when both are non-empty."""
    p_any, t_any = bool(_binary(pred).any()), bool(_binary(truth).any())
    if p_any and t_any:
        return None
    return 0.0 if not (p_any or t_any) else image_diagonal_mm(np.shape(pred), spacing)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 in mm as in ``HD95_DEFINITION`` (empty masks as in ``EMPTY_DEFINITION``)."""
    empty = _empty_distance(pred, truth, spacing)
    if empty is not None:
        return empty
    return float(np.percentile(np.concatenate(surface_distances_mm(pred, truth, spacing)), 95))


def asd(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric average surface distance in mm as in ``ASD_DEFINITION``."""
    empty = _empty_distance(pred, truth, spacing)
    if empty is not None:
        return empty
    return float(np.concatenate(surface_distances_mm(pred, truth, spacing)).mean())


def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (empty stays empty).

    scipy rather than MONAI's KeepLargestConnectedComponent: that one wants a channel-first
    tensor and an optional scikit-image for the labelling; this is the same operation in two lines.
    """
    components, count = ndimage.label(_binary(mask), structure=_FULL_CONNECTIVITY)
    if count <= 1:
        return components > 0
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def binary_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """{"dice", "iou", "hd95_mm", "asd_mm"} of one binary mask pair (surfaces computed once)."""
    result = {"dice": dice(pred, truth), "iou": iou(pred, truth)}
    empty = _empty_distance(pred, truth, spacing)
    if empty is not None:
        result.update(hd95_mm=empty, asd_mm=empty)
    else:
        pooled = np.concatenate(surface_distances_mm(pred, truth, spacing))
        result.update(hd95_mm=float(np.percentile(pooled, 95)), asd_mm=float(pooled.mean()))
    return result


def evaluate_case(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    classes: Iterable[int],
    lcc: bool = False,
) -> dict[int, dict[str, float]]:
    """Per-class metrics of one case: {class: {"dice", "iou", "hd95_mm", "asd_mm"}}.

    pred, truth: (x, y, z) integer label maps on the same grid; spacing (x, y, z) mm.
    lcc: keep only the largest connected component of each predicted class first.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    results = {}
    for c in classes:
        p = pred == c
        if lcc:
            p = largest_connected_component(p)
        results[int(c)] = binary_metrics(p, truth == c, spacing)
    return results


# --- folders -----------------------------------------------------------------------------------


def _image_files(folder: Path) -> dict[str, Path]:
    """{case id: path} of the image files in ``folder`` (case id = name without extension)."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # hidden files include our own temporary files of atomic writes
        if any(path.name.lower().endswith(ext) for ext in IMAGE_EXTENSIONS):
            files[strip_image_extension(path.name)] = path
    return files


def _header(image: sitk.Image) -> ImageHeader:
    return ImageHeader(
        size=tuple(image.GetSize()),
        spacing=tuple(image.GetSpacing()),
        origin=tuple(image.GetOrigin()),
        direction=tuple(image.GetDirection()),
        pixel_id=image.GetPixelID(),
        components=image.GetNumberOfComponentsPerPixel(),
    )


def _label_array(image: sitk.Image, path: Path, case_id: str) -> np.ndarray:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"Case '{case_id}': {path} is not a 3D scalar label map.",
            "Give label maps (one integer label per voxel), e.g. the predictions/ folder of a run.",
        )
    values = to_array(image)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.rint(values)):
            raise InputError(
                f"Case '{case_id}': {path} has non-integer values; it is not a label map.",
                "Pass the segmentation (predictions/), not the uncertainty map or the image.",
            )
    if values.size and values.min() < 0:
        raise InputError(f"Case '{case_id}': {path} has negative labels.", "Labels must be 0 (background), 1, 2, ...")
    return np.ascontiguousarray(values).astype(np.int64)


def _check_folder(folder, role: str) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise InputError(
            f"The {role} folder {path} does not exist or is not a folder.", f"Pass an existing folder with --{role}."
        )
    return path


def _mean_over_cases(cases: dict, classes: list[int]) -> dict[str, dict[str, float]]:
    means = {
        str(c): {m: float(np.mean([cases[k][str(c)][m] for k in cases])) for m in METRIC_NAMES} for c in classes
    }
    means["all"] = {m: float(np.mean([means[str(c)][m] for c in classes])) for m in METRIC_NAMES}
    return means


def evaluate_folders(
    pred_dir: str | Path,
    truth_dir: str | Path,
    classes: Sequence[int] | None = None,
    lcc: bool = False,
) -> dict:
    """Evaluate every prediction in ``pred_dir`` against the same-named label map in ``truth_dir``.

    Files match by case id (file name without .nii.gz/.nii/.nrrd/.mha/...). A prediction without
    a truth file is skipped and listed under "warnings"; truth files without a prediction are
    ignored (a truth folder may hold training cases too). Prediction and truth must share the
    grid (size, spacing, origin, direction), else InputError naming the case.
    classes: foreground labels to score; None -> every non-zero label found in any prediction or
    truth. A class absent from both masks of a case scores Dice 1, distances 0.

    Returns a JSON-ready dict (class keys are strings):
        {"cases": {case: {"<c>": {"dice", "iou", "hd95_mm", "asd_mm"}}},
         "mean": {"<c>": {...}, "all": {... mean over classes}},
         "classes": [c, ...], "lcc": bool, "skipped": [case, ...], "warnings": [str, ...],
         "definitions": {"hd95", "asd", "empty"}}
    """
    preds = _image_files(_check_folder(pred_dir, "pred"))
    truths = _image_files(_check_folder(truth_dir, "truth"))
    if not preds:
        raise InputError(f"No label maps found in {pred_dir}.", "Expected files like <case>.nii.gz (or .nrrd, .mha).")
    skipped = sorted(case for case in preds if case not in truths)
    warnings_list = [f"Case '{case}': no truth file in {truth_dir}; skipped." for case in skipped]
    matched = [case for case in preds if case in truths]
    if not matched:
        raise InputError(
            f"No prediction in {pred_dir} has a truth file of the same name in {truth_dir}.",
            "Name each truth file like its prediction (<case>.nii.gz).",
        )
    per_case: dict[str, dict[int, dict[str, float]]] = {}
    for case in matched:
        pred_img, truth_img = read_image(preds[case]), read_image(truths[case])
        difference = grid_difference(_header(pred_img), _header(truth_img))
        if difference is not None:
            what, a, b = difference
            raise InputError(
                f"Case '{case}': prediction and truth grids differ in {what} ({a} vs {b}).",
                "Write predictions on the truth image's grid (semisupseg predict does), or resample them.",
            )
        pred, truth = _label_array(pred_img, preds[case], case), _label_array(truth_img, truths[case], case)
        present = sorted((set(np.unique(pred).tolist()) | set(np.unique(truth).tolist())) - {0})
        wanted = present if classes is None else [int(c) for c in classes]
        per_case[case] = evaluate_case(pred, truth, truth_img.GetSpacing(), wanted, lcc=lcc)
    all_classes = sorted({c for r in per_case.values() for c in r}) if classes is None else [int(c) for c in classes]
    if not all_classes:
        raise InputError("No foreground label in any prediction or truth file.", "Pass --classes explicitly.")
    both_empty = {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}
    cases = {
        case: {str(c): dict(per_case[case].get(c, both_empty)) for c in all_classes} for case in matched
    }
    return {
        "cases": cases,
        "mean": _mean_over_cases(cases, all_classes),
        "classes": all_classes,
        "lcc": bool(lcc),
        "skipped": skipped,
        "warnings": warnings_list,
        "definitions": {"hd95": HD95_DEFINITION, "asd": ASD_DEFINITION, "empty": EMPTY_DEFINITION},
    }
