"""Uncertain regions: where an annotator should look next, ranked, with centres in millimetres.

Steps (``find_uncertain_regions``):
1. Threshold the normalised uncertainty map (entropy / ln C in [0, 1]) at ``threshold``.
2. 3D connected components with full 26-connectivity (``scipy.ndimage.label`` with a 3x3x3
   structure): diagonal neighbours join, so a thin oblique band of uncertainty along an organ
   surface stays one region instead of breaking into voxel-sized pieces.
3. Components smaller than ``min_volume_mm3`` are dropped (not merged: a speck is noise, and
   merging it into a neighbour would shift that neighbour's centre).
4. Score = sum over the region's voxels of u(v) * w(v), with
       w(v) = (1 + boundary_weight * [v near the predicted boundary]) * class_weight[pred(v)]
   "Near the boundary" means the (2 * boundary_width + 1)^3 cube around v holds more than one
   predicted label: errors concentrate on boundaries, and correcting there changes the
   segmentation most. The default class weight is inverse frequency of the predicted classes,
   n_background / n_c, clipped to [1, max_class_weight]: without it the uncertainty of a large
   organ or of the background would always outrank a small structure whose few voxels matter
   more to its Dice (and to the annotator).
5. Rank by score, descending; keep ``max_regions``.

Coordinates: SimpleITK physical coordinates are LPS (x grows to the patient's Left, y to
Posterior, z to Superior). Each region reports LPS and RAS (3D Slicer's world frame: x and y
negated) centres in mm, and its voxel index (i, j, k) in the engine's (x, y, z) axis order.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError

__all__ = [
    "boundary_band",
    "default_class_weights",
    "find_uncertain_regions",
    "write_regions_json",
    "read_regions_json",
    "REGIONS_FORMAT",
]

REGIONS_FORMAT = 1
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def boundary_band(labelmap: np.ndarray, width: int = 2) -> np.ndarray:
    """Boolean (x, y, z) mask of voxels within ``width`` voxels (chessboard) of a label change.

    A voxel is in the band when the (2w+1)^3 cube centred on it contains more than one label,
    i.e. local max != local min. Image borders are not boundaries (``mode="nearest"``).
    """
    if width <= 0:
        return np.zeros(labelmap.shape, dtype=bool)
    size = 2 * int(width) + 1
    return ndimage.maximum_filter(labelmap, size=size, mode="nearest") != ndimage.minimum_filter(
        labelmap, size=size, mode="nearest"
    )


def default_class_weights(labelmap: np.ndarray, max_class_weight: float = 10.0) -> dict[int, float]:
    """Inverse-frequency weight per predicted class: n_0 / n_c clipped to [1, max_class_weight].

    n_c is the voxel count of class c in ``labelmap`` (background 0 gets weight 1). When no voxel
    is background, the most frequent class plays its part.
    """
    counts = np.bincount(labelmap.ravel().astype(np.int64))
    reference = counts[0] if counts[0] > 0 else counts.max()
    return {
        int(c): float(np.clip(reference / n, 1.0, max_class_weight))
        for c, n in enumerate(counts)
        if n > 0
    }


def _class_weight_lookup(num_labels: int, class_weights: dict[int, float]) -> np.ndarray:
    """Array ``lookup[c]`` = weight of class c (1 for classes not in ``class_weights``)."""
    lookup = np.ones(num_labels, dtype=np.float64)
    for c, w in class_weights.items():
        if 0 <= int(c) < num_labels:
            lookup[int(c)] = float(w)
    return lookup


def _physical(reference: sitk.Image, index) -> list[float]:
    return [float(v) for v in reference.TransformContinuousIndexToPhysicalPoint([float(i) for i in index])]


def _bbox_mm(reference: sitk.Image, lo: np.ndarray, hi: np.ndarray) -> dict[str, list[float]]:
    """LPS axis-aligned box around the region's voxels: min/max over the 8 transformed corners.

    Corners are the outer faces of the extreme voxels (index - 0.5 and index + 0.5), so a
    one-voxel region has the size of one voxel rather than zero.
    """
    corners = np.array(
        [
            _physical(reference, [(lo - 0.5)[a] if bit == 0 else (hi + 0.5)[a] for a, bit in enumerate(bits)])
            for bits in np.ndindex(2, 2, 2)
        ]
    )
    return {"min": corners.min(axis=0).tolist(), "max": corners.max(axis=0).tolist()}


def _describe(component, offset, u_local, lab_local, band_local, weighting, reference, voxel_mm3):
    """The region dict of one component (``component`` is its mask inside its bounding slice).

    weighting = (boundary_weight, class-weight lookup); weights are computed only here, on the
    component's voxels, so no full-volume float array is needed.
    """
    boundary_weight, class_lookup = weighting
    idx = np.argwhere(component) + offset  # (N, 3) global voxel indices (i, j, k)
    u = u_local[component].astype(np.float64)
    labels = lab_local[component]
    in_band = band_local[component]
    w = (1.0 + boundary_weight * in_band) * class_lookup[labels]
    weights = u if u.sum() > 0 else np.ones_like(u)
    centre_index = (idx * weights[:, None]).sum(axis=0) / weights.sum()
    lps = _physical(reference, centre_index)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    return {
        "score": float((u * w).sum()),
        "center_lps_mm": lps,
        "center_ras_mm": [-lps[0], -lps[1], lps[2]],
        "center_voxel": [int(v) for v in np.clip(np.rint(centre_index), lo, hi)],
        "bbox_voxels": {"min": lo.tolist(), "max": hi.tolist()},
        "bbox_mm": _bbox_mm(reference, lo, hi),
        "volume_ml": float(len(idx) * voxel_mm3 / 1000.0),
        "voxels": int(len(idx)),
        "mean_uncertainty": float(u.mean()),
        "sum_uncertainty": float(u.sum()),
        "predicted_class": int(np.bincount(labels.astype(np.int64)).argmax()),
        "boundary_fraction": float(in_band.mean()),
    }


def find_uncertain_regions(
    uncertainty: np.ndarray,
    labelmap: np.ndarray,
    reference: sitk.Image,
    threshold: float = 0.5,
    min_volume_mm3: float = 20.0,
    max_regions: int = 50,
    boundary_weight: float = 2.0,
    class_weights: dict[int, float] | None = None,
    boundary_width: int = 2,
    max_class_weight: float = 10.0,
) -> list[dict]:
    """Ranked connected regions of high uncertainty (see the module docstring for the method).

    Args:
        uncertainty: (x, y, z) float in [0, 1] (normalised entropy or mutual information).
        labelmap: (x, y, z) int predicted labels in [0, C), same shape.
        reference: image whose geometry (spacing, origin, direction) the arrays live on; its
            size must be the arrays' shape.
        threshold: voxels with u > threshold form regions.
        min_volume_mm3: smaller components are dropped.
        max_regions: at most this many regions are returned (the best scored).
        boundary_weight: extra weight for voxels within ``boundary_width`` voxels of a
            predicted label change (0 turns it off).
        class_weights: {class: weight} by predicted class; classes not listed weigh 1.
            None -> ``default_class_weights(labelmap, max_class_weight)``.

    Returns:
        list of dicts, best first: rank (1-based), score, center_lps_mm [x, y, z] (the
        uncertainty-weighted centroid, LPS mm), center_ras_mm, center_voxel [i, j, k] (rounded
        centroid, clipped to the bounding box), bbox_voxels {"min", "max"} inclusive indices,
        bbox_mm {"min", "max"} LPS mm, volume_ml, voxels, mean_uncertainty, sum_uncertainty,
        predicted_class (majority label inside), boundary_fraction.
    """
    u = np.asarray(uncertainty, dtype=np.float32)
    lab = np.asarray(labelmap).astype(np.int64)
    if u.shape != lab.shape or u.ndim != 3:
        raise ValueError(f"uncertainty {u.shape} and labelmap {lab.shape} must be the same 3D shape")
    if lab.size and lab.min() < 0:
        raise ValueError("labelmap has negative labels; expected values in [0, C)")
    if tuple(reference.GetSize()) != u.shape:
        raise ValueError(f"reference image size {reference.GetSize()} differs from the map shape {u.shape}")
    voxel_mm3 = float(np.prod(reference.GetSpacing()))
    band = boundary_band(lab, boundary_width)
    if class_weights is None:
        class_weights = default_class_weights(lab, max_class_weight)
    weighting = (float(boundary_weight), _class_weight_lookup(int(lab.max()) + 1, class_weights))
    components, _count = ndimage.label(u > threshold, structure=_FULL_CONNECTIVITY)
    regions = []
    for label_id, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        component = components[box] == label_id
        if component.sum() * voxel_mm3 < min_volume_mm3:
            continue
        offset = np.array([s.start for s in box])
        regions.append(
            _describe(component, offset, u[box], lab[box], band[box], weighting, reference, voxel_mm3)
        )
    regions.sort(key=lambda r: r["score"], reverse=True)
    regions = regions[: max(0, int(max_regions))]
    return [{"rank": rank, **region} for rank, region in enumerate(regions, start=1)]


def _finite(value):
    """Replace non-finite floats so the file stays strict JSON (they should not occur)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_regions_json(path: str | os.PathLike, per_case: dict[str, list[dict]], meta: dict | None = None) -> Path:
    """Write ``regions.json`` atomically (temporary file in the same folder, then ``os.replace``).

    Layout (read by the Slicer module without importing the engine):
        {"format": 1, "coordinate_system": "LPS", "units": "mm",
         "note": "...", "meta": {...}, "cases": {"<case id>": [region, ...], ...}}
    Regions are as returned by ``find_uncertain_regions``; volume_ml is in millilitres.
    """
    path = Path(path)
    document = {
        "format": REGIONS_FORMAT,
        "coordinate_system": "LPS",
        "units": "mm",
        "note": (
            "center_lps_mm and bbox_mm are SimpleITK/DICOM physical coordinates (LPS); "
            "center_ras_mm is the same point in 3D Slicer's RAS world frame (x and y negated); "
            "center_voxel and bbox_voxels are (i, j, k) image indices; volume_ml in millilitres."
        ),
        "meta": dict(meta or {}),
        "cases": {str(case): list(regions) for case, regions in per_case.items()},
    }
    text = json.dumps(_finite(document), indent=1, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_regions_json(path: str | os.PathLike) -> dict:
    """Read a ``regions.json`` written by ``write_regions_json``; InputError if it is not one."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist.", "Run `semisupseg predict` to create it.") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not readable JSON ({error}).", "Delete it and run predict again.") from None
    if not isinstance(document, dict) or not isinstance(document.get("cases"), dict):
        raise InputError(f"{path} has no 'cases' object.", "Delete it and run predict again.")
    if document.get("format", REGIONS_FORMAT) > REGIONS_FORMAT:
        raise InputError(
            f"{path} has format {document['format']}, newer than this engine reads ({REGIONS_FORMAT}).",
            "Update SemiSupSeg.",
        )
    return document
