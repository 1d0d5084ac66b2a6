"""Uncertain regions: places an annotator can go to, ranked by the error they are expected to hold.

Found on real LA data: at a threshold, the uncertain voxels of a trained model form one thin shell
around the whole predicted structure (80-115 mm across); its centroid lies inside the structure,
where the map is cold. So a region here is a *place*: a piece of that shell small enough to look
at and correct in one go.

Steps (``find_uncertain_regions``):
1. Threshold the map ``u`` (in [0, 1]) at ``threshold``; 3D connected components with full
   26-connectivity (a thin oblique band stays one component); components smaller than
   ``min_volume_mm3`` are dropped (a speck is noise).
2. Places: a component whose extent along every image axis is at most ``max_extent_mm`` is one
   region. A larger one (a shell, a sprawling blob) is cut into pieces: its voxels are visited in
   descending order of the local error density ``d = box_mean(q * mask)`` (a moving average over
   ``density_mm`` per axis); the first unvisited voxel is a seed, and the piece is every
   unvisited voxel of the component inside the box of side ``max_extent_mm`` centred on the seed.
   Pieces therefore fit the box, start where the uncertain mass is densest, and never overlap.
   Pieces under ``min_volume_mm3`` (slivers at box edges) are dropped.
3. Expected error: ``q(v)`` estimates the probability that voxel v is wrong. With the
   prediction's probabilities it is ``1 - max_c p_c(v)`` (the chance the predicted class is not
   the true one, for a calibrated model); without them, ``u`` itself. A region's score is
       score = sum_{v in region} q(v) * w(v),
       w(v)  = (1 + boundary_weight * [v near the predicted boundary]) * class_weight[pred(v)]
   i.e. the expected number of wrong voxels, weighted by class: the default class weight is
   inverse frequency of the predicted classes, n_background / n_c clipped to
   [1, max_class_weight], so a small structure's errors are not outranked by a large organ's.
   ``boundary_weight`` (0 by default since the LA finding: the boundary band holds the
   uncertainty of every prediction, right or wrong) can favour voxels within
   ``boundary_width`` voxels of a predicted label change.
4. Jump target (``center_voxel``, ``center_lps_mm``, ``center_ras_mm``): the region's voxel of
   highest local density ``d`` (for a cut piece, its seed). It lies in the region, where the
   uncertainty is concentrated: not a centroid, which for a shell is empty space. The slice
   views centred there show the region's most uncertain part.
5. Rank by score, descending; keep ``max_regions``.

Coordinates: SimpleITK physical coordinates are LPS (x grows to the patient's Left, y to
Posterior, z to Superior). Each region reports LPS and RAS (3D Slicer's world frame: x and y
negated) points in mm, and voxel indices (i, j, k) in the engine's (x, y, z) axis order.
``extent_mm`` is the region's size along the image axes (at most ``max_extent_mm`` each);
``bbox_mm`` is its axis-aligned LPS box (larger than ``extent_mm`` on an oblique grid).
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
    "error_density",
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


def _describe(piece: "_Piece", maps: "_Maps", reference, voxel_mm3: float, spacing: np.ndarray) -> dict:
    """The region dict of one piece (its mask inside its bounding box at ``piece.lo``)."""
    box = tuple(slice(a, b + 1) for a, b in zip(piece.lo, piece.hi))
    mask = piece.mask
    idx = np.argwhere(mask) + piece.lo  # (N, 3) global voxel indices (i, j, k)
    u = maps.u[box][mask].astype(np.float64)
    q = maps.q[box][mask].astype(np.float64)
    labels = maps.labels[box][mask]
    in_band = maps.band[box][mask]
    w = (1.0 + maps.boundary_weight * in_band) * maps.class_lookup[labels]
    target = piece.target
    lps = _physical(reference, target)
    lo, hi = piece.lo, piece.hi
    return {
        "score": float((q * w).sum()),
        "expected_errors": float(q.sum()),
        "center_lps_mm": lps,
        "center_ras_mm": [-lps[0], -lps[1], lps[2]],
        "center_voxel": [int(v) for v in target],
        "center_uncertainty": float(maps.u[tuple(target)]),
        "bbox_voxels": {"min": lo.tolist(), "max": hi.tolist()},
        "bbox_mm": _bbox_mm(reference, lo, hi),
        "extent_mm": [float(v) for v in (hi - lo + 1) * spacing],
        "volume_ml": float(len(idx) * voxel_mm3 / 1000.0),
        "voxels": int(len(idx)),
        "mean_uncertainty": float(u.mean()),
        "sum_uncertainty": float(u.sum()),
        "predicted_class": int(np.bincount(labels.astype(np.int64)).argmax()),
        # The structure the region is about (several classes): the foreground class predicted on
        # most of its voxels, else on most of its bounding box (an uncertain band beside an organ
        # is mostly background); 0 when no foreground is predicted there (a possibly missed one).
        "about_class": _about_class(labels, maps.labels[box]),
        "boundary_fraction": float(in_band.mean()),
    }


def _about_class(region_labels: np.ndarray, box_labels: np.ndarray) -> int:
    for labels in (region_labels, box_labels):
        counts = np.bincount(labels.astype(np.int64).ravel())
        if counts.size > 1 and counts[1:].any():
            return int(counts[1:].argmax() + 1)
    return 0


class _Maps:
    """The per-voxel arrays every region reads: u, q, labels, boundary band, weights, density."""

    def __init__(self, u, q, labels, band, boundary_weight, class_lookup, density):
        self.u, self.q, self.labels, self.band = u, q, labels, band
        self.boundary_weight, self.class_lookup, self.density = boundary_weight, class_lookup, density


class _Piece:
    """One region's voxels: ``mask`` (bool, box-shaped) placed at inclusive box ``lo``..``hi``."""

    def __init__(self, lo: np.ndarray, mask: np.ndarray, target: np.ndarray):
        coords = np.argwhere(mask)
        self.lo = lo + coords.min(axis=0)
        self.hi = lo + coords.max(axis=0)
        inner = tuple(slice(a, b + 1) for a, b in zip(coords.min(axis=0), coords.max(axis=0)))
        self.mask = mask[inner]
        self.target = np.asarray(target, dtype=np.int64)


def _box_voxels(spacing: np.ndarray, size_mm: float) -> np.ndarray:
    """Odd box side in voxels per axis whose extent is at most ``size_mm`` (at least 1 voxel)."""
    side = np.floor(float(size_mm) / spacing).astype(np.int64)
    side = np.maximum(side - (side % 2 == 0), 1)  # odd, so a seed sits in the middle
    return side


def _densest(density_local: np.ndarray, mask: np.ndarray, weights_local: np.ndarray) -> np.ndarray:
    """Index (in the local box) of the mask voxel with the highest density.

    Ties (a uniform blob has a plateau of equal densities) go to the voxel nearest the region's
    ``weights``-weighted centroid, so a compact blob's target is its middle.
    """
    coords = np.argwhere(mask)
    values = density_local[mask].astype(np.float64)
    top = values >= values.max() - 1e-6 * max(abs(values.max()), 1e-12)
    w = weights_local[mask].astype(np.float64)
    centroid = (coords * w[:, None]).sum(axis=0) / w.sum() if w.sum() > 0 else coords.mean(axis=0)
    candidates = coords[top]
    return candidates[int(np.argmin(((candidates - centroid) ** 2).sum(axis=1)))]


def _split_component(component: np.ndarray, lo: np.ndarray, density_local: np.ndarray, half: np.ndarray,
                     min_voxels: int) -> list:
    """Cut one component (bool mask in its box at ``lo``) into pieces of at most 2 * half + 1 voxels per axis.

    Seeds are visited in descending density; each takes every unvisited component voxel within
    ``half`` voxels of it (chessboard per axis). Returns [_Piece] (pieces under ``min_voxels`` dropped).
    """
    remaining = component.copy()
    coords = np.argwhere(component)
    order = np.argsort(-density_local[component], kind="stable")
    pieces = []
    for seed in coords[order]:
        if not remaining[tuple(seed)]:
            continue
        start = np.maximum(seed - half, 0)
        stop = np.minimum(seed + half + 1, component.shape)
        window = tuple(slice(a, b) for a, b in zip(start, stop))
        taken = remaining[window].copy()
        remaining[window] = False
        if taken.sum() >= min_voxels:
            pieces.append(_Piece(lo + start, taken, lo + seed))
    return pieces


def _places(components: np.ndarray, maps: _Maps, spacing: np.ndarray, max_extent_mm: float, min_voxels: int) -> list:
    """Every region as a _Piece: whole components that fit the box, pieces of those that do not."""
    side = _box_voxels(spacing, max_extent_mm)
    half = (side - 1) // 2
    pieces = []
    for label_id, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        component = components[box] == label_id
        if component.sum() < min_voxels:
            continue
        lo = np.array([s.start for s in box])
        extent = np.array(component.shape)
        if np.all(extent <= side):
            target = lo + _densest(maps.density[box], component, maps.u[box])
            pieces.append(_Piece(lo, component, target))
        else:
            pieces.extend(_split_component(component, lo, maps.density[box], half, min_voxels))
    return pieces


def _voxel_weights(maps: _Maps) -> np.ndarray:
    """w(v) of the module docstring: boundary and class weights, float32 (x, y, z)."""
    return ((1.0 + maps.boundary_weight * maps.band) * maps.class_lookup[maps.labels]).astype(np.float32)


def _error_boxes(mask: np.ndarray, maps: _Maps, spacing: np.ndarray, max_extent_mm: float, min_voxels: int,
                 max_regions: int) -> list:
    """Regions as the boxes of side ``max_extent_mm`` holding the most expected errors.

    E(c) = sum of q * w over the box centred on voxel c (a box filter). Centres are uncertain
    voxels (``mask``), taken in descending E; a centre whose box would overlap a box already
    taken is skipped, so boxes never overlap. The region is the uncertain voxels of its box, and
    its ``bbox_voxels`` the whole box (clipped to the image): the place the annotator reviews.
    Sorting the uncertain voxels once (rather than an arg-max over the volume per region) keeps
    this O(n log n) in the number of uncertain voxels.
    """
    side = _box_voxels(spacing, max_extent_mm)
    half = (side - 1) // 2
    weighted = maps.q.astype(np.float32) * _voxel_weights(maps)
    box_mean = ndimage.uniform_filter(weighted, size=side, mode="constant")
    centres = np.argwhere(mask)
    order = np.argsort(-box_mean[mask], kind="stable")
    blocked = np.zeros(mask.shape, dtype=bool)
    pieces = []
    for centre in centres[order]:
        if len(pieces) >= max_regions:
            break
        if blocked[tuple(centre)]:
            continue
        start = np.maximum(centre - half, 0)
        stop = np.minimum(centre + half + 1, mask.shape)
        window = tuple(slice(a, b) for a, b in zip(start, stop))
        taken = mask[window]
        if taken.sum() < min_voxels:
            continue
        # a later centre within 2 * half of this one would give an overlapping box
        reach = tuple(slice(max(c - 2 * h, 0), c + 2 * h + 1) for c, h in zip(centre, half))
        blocked[reach] = True
        target = start + _densest(maps.density[window], taken, maps.u[window])
        piece = _Piece(start, taken, target)
        piece.lo, piece.hi, piece.mask = start, stop - 1, taken  # the whole box, not just its uncertain voxels
        piece.box_expected = (float(maps.q[window].sum()), float(weighted[window].sum()))
        pieces.append(piece)
    return pieces


def error_density(q: np.ndarray, mask: np.ndarray, spacing: np.ndarray, density_mm: float) -> np.ndarray:
    """Moving average of ``q`` over the uncertain voxels in a box of about ``density_mm`` per axis.

    float32 (x, y, z). Where the uncertain mass is thick (an organ part the model is confused
    about) it is high; along a thin shell that merely outlines the prediction it stays low.
    """
    size = [max(1, int(round(density_mm / s))) for s in spacing]
    return ndimage.uniform_filter(np.where(mask, q, 0.0).astype(np.float32), size=size, mode="constant")


def find_uncertain_regions(
    uncertainty: np.ndarray,
    labelmap: np.ndarray,
    reference: sitk.Image,
    threshold: float = 0.5,
    min_volume_mm3: float = 20.0,
    max_regions: int = 50,
    boundary_weight: float = 0.0,
    class_weights: dict[int, float] | None = None,
    boundary_width: int = 2,
    max_class_weight: float = 10.0,
    max_extent_mm: float = 20.0,
    density_mm: float = 6.0,
    error_probability: np.ndarray | None = None,
    return_masks: bool = False,
    placement: str = "shell_pieces",
):
    """Ranked uncertain places (see the module docstring for the method).

    Args:
        uncertainty: (x, y, z) float in [0, 1] (normalised entropy or another source's map).
        labelmap: (x, y, z) int predicted labels in [0, C), same shape.
        reference: image whose geometry (spacing, origin, direction) the arrays live on; its
            size must be the arrays' shape.
        threshold: voxels with u > threshold form regions.
        min_volume_mm3: smaller components and pieces are dropped.
        max_regions: at most this many regions are returned (the best scored).
        boundary_weight: extra weight for voxels within ``boundary_width`` voxels of a
            predicted label change (0 turns it off).
        class_weights: {class: weight} by predicted class; classes not listed weigh 1.
            None -> ``default_class_weights(labelmap, max_class_weight)``.
        max_extent_mm: a region's largest size along each image axis (larger components are cut).
        density_mm: side of the moving average that orders seeds and picks the jump target.
        error_probability: (x, y, z) q in [0, 1], the chance each voxel is wrong (e.g.
            1 - max_c p_c); None -> ``uncertainty``.
        return_masks: also return each region's voxel mask [(lo (3,), bool box-shaped mask)].

    Returns:
        list of dicts, best first: rank (1-based), score (class-weighted expected errors),
        expected_errors (sum of q), center_lps_mm, center_ras_mm, center_voxel [i, j, k] (the
        jump target, inside the region), center_uncertainty, bbox_voxels {"min", "max"}
        inclusive indices, bbox_mm {"min", "max"} LPS mm, extent_mm (per image axis), volume_ml,
        voxels, mean_uncertainty, sum_uncertainty, predicted_class (majority label inside),
        boundary_fraction. With ``return_masks``: (regions, masks) in the same order.
    """
    u = np.asarray(uncertainty, dtype=np.float32)
    lab = np.asarray(labelmap).astype(np.int64)
    if u.shape != lab.shape or u.ndim != 3:
        raise ValueError(f"uncertainty {u.shape} and labelmap {lab.shape} must be the same 3D shape")
    if lab.size and lab.min() < 0:
        raise ValueError("labelmap has negative labels; expected values in [0, C)")
    if tuple(reference.GetSize()) != u.shape:
        raise ValueError(f"reference image size {reference.GetSize()} differs from the map shape {u.shape}")
    q = u if error_probability is None else np.asarray(error_probability, dtype=np.float32)
    if q.shape != u.shape:
        raise ValueError(f"error_probability {q.shape} must have the map's shape {u.shape}")
    spacing = np.array(reference.GetSpacing(), dtype=np.float64)
    voxel_mm3 = float(np.prod(spacing))
    if class_weights is None:
        class_weights = default_class_weights(lab, max_class_weight)
    mask = u > threshold
    maps = _Maps(
        u, q, lab, boundary_band(lab, boundary_width), float(boundary_weight),
        _class_weight_lookup(int(lab.max()) + 1 if lab.size else 1, class_weights),
        error_density(q, mask, spacing, density_mm),
    )
    components, _count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    min_voxels = max(1, int(math.ceil(float(min_volume_mm3) / voxel_mm3 - 1e-9)))
    if placement == "shell_pieces":
        pieces = _places(components, maps, spacing, max_extent_mm, min_voxels)
    elif placement == "error_boxes":
        pieces = _error_boxes(mask, maps, spacing, max_extent_mm, min_voxels, int(max_regions))
    else:
        raise ValueError(f"unknown region placement {placement!r}")
    described = [(_describe(p, maps, reference, voxel_mm3, spacing), p) for p in pieces]
    for region, piece in described:
        if hasattr(piece, "box_expected"):
            region["box_expected_errors"], region["score"] = piece.box_expected
    described.sort(key=lambda pair: pair[0]["score"], reverse=True)
    described = described[: max(0, int(max_regions))]
    regions = [{"rank": rank, **region} for rank, (region, _p) in enumerate(described, start=1)]
    if return_masks:
        return regions, [(p.lo, p.mask) for _r, p in described]
    return regions


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
