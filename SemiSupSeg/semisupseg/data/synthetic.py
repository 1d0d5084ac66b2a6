"""Deterministic synthetic workspace: left-atrium-like MR (or CT) volumes for the demo and tests.

Each case is a chest-like slab: air outside an elliptical body, soft tissue with a smooth texture,
two dark lungs, the target "atrium" (class 1: a body ellipsoid plus an appendage and two vein
stubs, its boundary wrinkled by a smooth random displacement), an aorta-like bright tube running
past it (class 2 with ``num_classes=3``, otherwise an unlabelled distractor) and a bright
unlabelled blob elsewhere. Tube and blob are as bright as the atrium, so no single threshold
separates the foreground: a network needs shape and context. The image then gets partial-volume
blur, a multiplicative bias field (MR) and Rician (MR) or Gaussian (CT) noise.

Everything about case ``i`` follows from ``(seed, i)``, so a case does not change when the number
of other cases does. Shapes are laid out in millimetres relative to the field of view, so the
foreground fraction (about 2-5 %) barely depends on ``size`` and ``spacing``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import InputError
from .io import from_array, write_image_atomic

LABEL_NAMES = {
    2: {"0": "background", "1": "atrium"},
    3: {"0": "background", "1": "atrium", "2": "vessel"},
}

# Tissue classes of the intensity model, and their mean intensity per modality.
AIR, TISSUE, LUNG, ATRIUM, VESSEL, BLOB = range(6)
_MEANS = {
    "MR": np.array([0.0, 0.32, 0.08, 0.62, 0.66, 0.68], np.float32),  # arbitrary units, scaled x1000
    "CT": np.array([-1000.0, 40.0, -820.0, 290.0, 310.0, 320.0], np.float32),  # Hounsfield units
}
_TEXTURE_STD = {"MR": 0.06, "CT": 25.0}
_NOISE_STD = {"MR": 0.035, "CT": 20.0}
_BIAS_STD = {"MR": 0.15, "CT": 0.0}
_MR_SCALE = 1000.0


@dataclass
class SyntheticCase:
    """One generated volume. Arrays are indexed (x, y, z); ``image`` is int16 (MR units or HU)."""

    image: np.ndarray
    label: np.ndarray  # uint8 in [0, num_classes)
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]  # row-major 3x3

    def reference(self) -> sitk.Image:
        """A one-voxel image carrying this case's geometry (for ``io.from_array``)."""
        ref = sitk.Image(1, 1, 1, sitk.sitkUInt8)
        ref.SetSpacing(self.spacing)
        ref.SetOrigin(self.origin)
        ref.SetDirection(self.direction)
        return ref


def synthesize_case(
    index: int,
    seed: int = 0,
    size: Sequence[int] = (80, 80, 48),
    spacing: Sequence[float] = (1.0, 1.0, 1.5),
    num_classes: int = 2,
    modality: str = "MR",
) -> SyntheticCase:
    """Generate case ``index`` of the synthetic set ``seed`` (pure function of its arguments)."""
    rng = np.random.default_rng([int(seed), int(index)])
    size = tuple(int(s) for s in size)
    spacing = tuple(float(s) for s in spacing)
    kind = "CT" if str(modality).upper() == "CT" else "MR"
    points = _physical_grid(size, spacing)
    extent = np.array(size) * np.array(spacing)
    warped = points + _smooth_field(rng, size, amplitude=0.04 * extent.min(), modes=6)

    classes = _tissue_classes(rng, points, warped, extent)
    label = np.zeros(size, np.uint8)
    label[classes == ATRIUM] = 1
    if num_classes == 3:
        label[classes == VESSEL] = 2
    image = _render_intensities(rng, classes, points, kind, extent)
    return SyntheticCase(image, label, spacing, *_case_geometry(rng, index, extent))


def _physical_grid(size: Tuple[int, ...], spacing: Tuple[float, ...]) -> np.ndarray:
    """(3, X, Y, Z) float32 voxel-centre coordinates in mm, relative to the volume centre."""
    axes = [((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32) for n, s in zip(size, spacing)]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _smooth_field(rng: np.random.Generator, size: Tuple[int, ...], amplitude: float, modes: int) -> np.ndarray:
    """(3, X, Y, Z) smooth random displacement in mm: a sum of ``modes`` low-frequency plane waves.

    Plane waves (not a zoomed coarse noise grid) because they are smooth everywhere and cost one
    ``sin`` per mode, and their spatial frequency (one to two periods across the field of view)
    is explicit.
    """
    unit = [np.linspace(-math.pi, math.pi, n, dtype=np.float32) for n in size]
    grids = np.meshgrid(*unit, indexing="ij")
    field = np.zeros((3,) + size, np.float32)
    for _ in range(modes):
        frequency = rng.uniform(-1.0, 1.0, 3)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(sum(f * g for f, g in zip(frequency, grids)) + phase)
        field += rng.normal(0.0, amplitude / math.sqrt(modes), 3)[:, None, None, None].astype(np.float32) * wave
    return field


def _ellipsoid(p: np.ndarray, centre, radii, rotation: np.ndarray) -> np.ndarray:
    """Implicit ellipsoid: < 0 inside, ~ (distance / radius) outside. ``p`` is (3, X, Y, Z) mm."""
    local = np.tensordot(rotation.T.astype(np.float32), p - np.asarray(centre, np.float32)[:, None, None, None], 1)
    return np.sqrt(sum((local[k] / radii[k]) ** 2 for k in range(3))) - 1.0


def _random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    return Rotation.from_euler("xyz", rng.uniform(-max_degrees, max_degrees, 3), degrees=True).as_matrix()


def _tissue_classes(rng: np.random.Generator, p: np.ndarray, warped: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """(X, Y, Z) uint8 map of AIR, TISSUE, LUNG, ATRIUM, VESSEL, BLOB.

    ``p`` are the true coordinates (body and lungs: large smooth shapes), ``warped`` the displaced
    ones (atrium, vessel, blob: the random displacement gives them irregular boundaries).
    """
    s = float(min(extent)) / 2.0  # shape scale in mm
    half = extent / 2.0
    classes = np.full(p.shape[1:], AIR, np.uint8)
    body = (p[0] / (0.47 * 2 * half[0])) ** 2 + (p[1] / (0.40 * 2 * half[1])) ** 2 <= 1.0
    classes[body] = TISSUE
    for side in (-1.0, 1.0):  # lungs, lateral
        lung = _ellipsoid(p, (side * 0.55 * half[0], 0.05 * half[1], 0.0), (0.30 * half[0], 0.55 * half[1], 0.9 * half[2]), _random_rotation(rng, 8))
        classes[(lung < 0) & body] = LUNG

    centre = rng.uniform(-0.08, 0.08, 3) * extent
    atrium = _atrium(rng, warped, centre, s)
    vessel = _vessel(rng, warped, centre, s)
    blob_centre = -centre + np.array([rng.choice([-1, 1]) * 0.35 * half[0], 0.3 * half[1], rng.uniform(-0.2, 0.2) * half[2]])
    blob = _ellipsoid(warped, blob_centre, rng.uniform(0.12, 0.18, 3) * s, _random_rotation(rng, 30))
    classes[blob < 0] = BLOB
    classes[vessel < 0] = VESSEL
    classes[atrium < 0] = ATRIUM
    return classes


def _atrium(rng: np.random.Generator, p: np.ndarray, centre: np.ndarray, s: float) -> np.ndarray:
    """Union of a body ellipsoid, an appendage and two vein stubs (min of implicit functions)."""
    radii = np.array([0.40, 0.33, 0.36]) * s * rng.uniform(0.85, 1.15, 3)
    rotation = _random_rotation(rng, 20)
    parts = [_ellipsoid(p, centre, radii, rotation)]
    # appendage: an elongated lobe on the anterior-lateral side
    offset = rotation @ (radii * np.array([0.75, -0.6, 0.3]))
    parts.append(_ellipsoid(p, centre + offset, radii[0] * np.array([0.55, 0.28, 0.28]) * rng.uniform(0.8, 1.2, 3),
                            rotation @ _random_rotation(rng, 25)))
    for side in (-1.0, 1.0):  # pulmonary-vein-like stubs, posterior
        offset = rotation @ (radii * np.array([side * 0.55, 0.85, rng.uniform(-0.2, 0.4)]))
        parts.append(_ellipsoid(p, centre + offset, s * np.array([0.09, 0.22, 0.09]) * rng.uniform(0.8, 1.2, 3),
                                _random_rotation(rng, 25)))
    return np.minimum.reduce(parts)


def _vessel(rng: np.random.Generator, p: np.ndarray, centre: np.ndarray, s: float) -> np.ndarray:
    """Aorta-like tube along z, gently curved, passing anterior-medial to the atrium with a gap."""
    radius = 0.15 * s * rng.uniform(0.85, 1.15)
    angle = rng.uniform(-0.6, 0.6) - math.pi / 2  # mostly anterior (-y)
    distance = 0.55 * s + radius
    cx, cy = centre[0] + distance * math.cos(angle), centre[1] + distance * math.sin(angle)
    bend, phase = rng.uniform(0.04, 0.1) * s, rng.uniform(0, 2 * math.pi)
    z = p[2] / s
    dx = p[0] - (cx + bend * np.sin(1.5 * z + phase))
    dy = p[1] - (cy + bend * np.cos(1.5 * z + phase))
    return np.sqrt(dx**2 + dy**2) / radius - 1.0


def _render_intensities(rng: np.random.Generator, classes: np.ndarray, p: np.ndarray, kind: str, extent: np.ndarray) -> np.ndarray:
    """Class means + smoothed-noise texture, partial-volume blur, bias field, noise -> int16."""
    means, scale = _MEANS[kind], _TEXTURE_STD[kind]
    texture = ndimage.gaussian_filter(rng.standard_normal(classes.shape).astype(np.float32), 1.5)
    texture *= scale / max(float(texture.std()), 1e-6)
    image = means[classes] + np.where(classes == AIR, 0.0, texture).astype(np.float32)
    image = ndimage.gaussian_filter(image, 0.6)  # partial-volume blur at boundaries
    if _BIAS_STD[kind] > 0:
        bias = _smooth_field(rng, classes.shape, amplitude=_BIAS_STD[kind], modes=3)[0]
        image = image * np.exp(bias)
    sigma = _NOISE_STD[kind]
    if kind == "MR":  # Rician: magnitude of a complex signal with Gaussian noise in both channels
        real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
        image = np.sqrt(real**2 + imag**2) * _MR_SCALE
    else:
        image = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), -32768, 32767).astype(np.int16)


def _case_geometry(rng: np.random.Generator, index: int, extent: np.ndarray):
    """Non-zero origin for every case; odd cases get a small rotation about z (3-8 degrees)."""
    origin = tuple(float(v) for v in (-extent / 2.0 + rng.uniform(-20.0, 20.0, 3)).round(3))
    direction = np.eye(3)
    if index % 2 == 1:
        direction = Rotation.from_euler("z", rng.choice([-1, 1]) * rng.uniform(3, 8), degrees=True).as_matrix()
    return origin, tuple(float(v) for v in direction.ravel())


def generate_synthetic_workspace(
    out_dir: Union[str, Path],
    n_labelled: int = 4,
    n_unlabelled: int = 8,
    n_test: int = 4,
    size: Sequence[int] = (80, 80, 48),
    spacing: Sequence[float] = (1.0, 1.0, 1.5),
    num_classes: int = 2,
    seed: int = 0,
    modality: str = "MR",
) -> Path:
    """Write a SemiSupSeg workspace of synthetic cases to ``out_dir`` and return its path.

    Layout: ``images/<id>.nii.gz`` for every case, ``labels/<id>.nii.gz`` for the ``n_labelled``
    labelled cases, ``truth/<id>.nii.gz`` (ground truth) for *every* case, and ``dataset.json``
    listing labelled cases with their label, the others with ``"label": null``; the last
    ``n_test`` ids are also listed under ``"held_out"`` (test cases: never labelled in training).
    Case ids are ``synth_000``, ``synth_001``, ... (labelled, then unlabelled, then test).
    """
    size, spacing = _check_arguments(n_labelled, n_unlabelled, n_test, size, spacing, num_classes)
    out = Path(out_dir)
    total = n_labelled + n_unlabelled + n_test
    cases: List[Dict[str, object]] = []
    for index in range(total):
        case_id = f"synth_{index:03d}"
        case = synthesize_case(index, seed, size, spacing, num_classes, modality)
        ref = case.reference()
        write_image_atomic(from_array(case.image, ref), out / "images" / f"{case_id}.nii.gz")
        label_image = from_array(case.label, ref)
        write_image_atomic(label_image, out / "truth" / f"{case_id}.nii.gz")
        labelled = index < n_labelled
        if labelled:
            write_image_atomic(label_image, out / "labels" / f"{case_id}.nii.gz")
        cases.append({"id": case_id, "image": f"images/{case_id}.nii.gz",
                      "label": f"labels/{case_id}.nii.gz" if labelled else None})
    description = {
        "name": "synthetic",
        "description": "Synthetic left-atrium-like volumes generated by semisupseg.data.synthetic.",
        "modality": {"0": str(modality)},
        "labels": LABEL_NAMES[num_classes],
        "cases": cases,
        "held_out": [c["id"] for c in cases[n_labelled + n_unlabelled:]],
        "synthetic": {"seed": int(seed), "size": list(size), "spacing": list(spacing), "num_classes": num_classes},
    }
    _write_json_atomic(description, out / "dataset.json")
    return out


def _check_arguments(n_labelled, n_unlabelled, n_test, size, spacing, num_classes):
    """Validate the generator's arguments; returns (size, spacing) as tuples."""
    hint = "Example: --labelled 4 --unlabelled 8 --test 4 --size 80 80 48 --classes 2."
    if num_classes not in LABEL_NAMES:
        raise InputError(f"Synthetic data has 2 or 3 classes, not {num_classes}.", hint)
    if min(n_labelled, n_unlabelled, n_test) < 0 or n_labelled + n_unlabelled + n_test < 1:
        raise InputError("Case counts must be >= 0 with at least one case in total.", hint)
    size, spacing = tuple(int(s) for s in size), tuple(float(s) for s in spacing)
    if len(size) != 3 or min(size) < 16:
        raise InputError(f"Synthetic volume size must be three numbers >= 16, not {size}.", hint)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"Voxel spacing must be three positive numbers, not {spacing}.", hint)
    return size, spacing


def _write_json_atomic(data: dict, path: Path) -> None:
    """Write ``data`` as indented JSON to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
