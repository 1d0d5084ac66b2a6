"""Shared fixtures of the engine tests: tiny workspaces written with SimpleITK only.

``tiny_workspace`` is deliberately awkward geometry (anisotropic spacing, non-zero origin,
rotated direction) so that any code that drops or reorders geometry fails its tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

TINY_SIZE = (32, 32, 24)  # (x, y, z) voxels
TINY_SPACING = (0.8, 0.9, 1.5)  # mm
TINY_ORIGIN = (-12.5, 30.25, 7.0)  # mm
TINY_RADIUS = 6.0  # voxels
TINY_CENTRES = {"case0": (14, 15, 11), "case1": (18, 16, 12), "case2": (15, 17, 10)}
TINY_LABELLED = ("case0", "case1")  # case2 is unlabelled


def rotated_direction(z_degrees: float = 30.0, x_degrees: float = 10.0) -> tuple:
    """Row-major 3x3 direction: a rotation about z, then about x (orthonormal, not identity)."""
    cz, sz = math.cos(math.radians(z_degrees)), math.sin(math.radians(z_degrees))
    cx, sx = math.cos(math.radians(x_degrees)), math.sin(math.radians(x_degrees))
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return tuple((rz @ rx).ravel().tolist())


TINY_DIRECTION = rotated_direction()


def sphere_mask(size, centre, radius) -> np.ndarray:
    """Boolean (x, y, z) array: voxels within ``radius`` voxels of ``centre``."""
    grid = np.meshgrid(*[np.arange(n) for n in size], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def xyz_image(array_xyz: np.ndarray, spacing=TINY_SPACING, origin=TINY_ORIGIN, direction=TINY_DIRECTION) -> sitk.Image:
    """SimpleITK image from an (x, y, z) array with the given geometry."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz).transpose(2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def write_tiny_workspace(root: Path, seed: int = 0) -> Path:
    """Write the tiny workspace into ``root`` (created) and return it.

    3 cases of 32 x 32 x 24 voxels: MR-like float32 images (100 + 50 inside a sphere + noise),
    uint8 sphere labels for case0 and case1; case2 is unlabelled.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    cases = []
    for case_id, centre in TINY_CENTRES.items():
        mask = sphere_mask(TINY_SIZE, centre, TINY_RADIUS)
        image = (100.0 + 50.0 * mask + rng.normal(0.0, 5.0, TINY_SIZE)).astype(np.float32)
        sitk.WriteImage(xyz_image(image), str(root / "images" / f"{case_id}.nii.gz"))
        label = None
        if case_id in TINY_LABELLED:
            label = f"labels/{case_id}.nii.gz"
            sitk.WriteImage(xyz_image(mask.astype(np.uint8)), str(root / label))
        cases.append({"id": case_id, "image": f"images/{case_id}.nii.gz", "label": label})
    description = {
        "name": "tiny",
        "modality": {"0": "MR"},
        "labels": {"0": "background", "1": "sphere"},
        "cases": cases,
    }
    (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return root


@pytest.fixture
def tiny_workspace(tmp_path) -> Path:
    """A valid 3-case workspace (2 labelled, 1 unlabelled) with anisotropic, offset, rotated
    geometry; see ``write_tiny_workspace``. Returns its folder."""
    return write_tiny_workspace(tmp_path / "workspace")


@pytest.fixture
def one_thread():
    """Tiny 3D convolutions run several times faster on one thread than on two shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
