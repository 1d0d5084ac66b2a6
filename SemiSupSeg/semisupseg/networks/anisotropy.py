"""Pooling and kernels that follow the voxel spacing (thin-slab scans), as nnU-Net plans them.

A 3D U-Net halves every axis four times. On a thin-slab scan (cine MRI: 1.5 x 1.5 x 5 mm, about
ten slices) that is wrong twice over: the first poolings throw away slices that are already 3x
coarser than the in-plane voxels, and 3x3x3 kernels at full resolution mix slices 5 mm apart as
if they were 1.5 mm neighbours. The rule, stage by stage with the stage's current spacing ``s``:

    fine_a   = s_a <= ratio * min(s)                (ratio = 2)
    kernel_a = 3 if fine_a else 1                   (in-plane convolutions while an axis is coarse)
    pool_a   = 2 if fine_a else 1                   (no pooling of a coarse axis until comparable)
    s_next   = s * pool

ACDC (1.5, 1.5, 5.0): stage 0 kernel (3, 3, 1), pool (2, 2, 1); from stage 1 on (3, 3, 5) is
comparable, so 3x3x3 and (2, 2, 2): z is pooled 3 times in all (patch z a multiple of 8), x and
y 4 times. Isotropic data (LA, 0.625 or 1.25 mm) gives 2 and 3 everywhere, the network's
default: ``spacing_options`` then returns ``{}`` and the network is exactly the usual one.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

FINE_RATIO = 2.0  # an axis up to twice the finest spacing counts as comparable (nnU-Net's rule)
LEVELS = 4  # poolings of the U-Net
DEFAULT_POOL = [2, 2, 2]
DEFAULT_KERNEL = [3, 3, 3]


def spacing_plan(spacing: Sequence[float], levels: int = LEVELS, ratio: float = FINE_RATIO) -> Dict[str, List[List[int]]]:
    """``{"pool_sizes": levels x [p_x, p_y, p_z], "kernel_sizes": (levels + 1) x [k_x, k_y, k_z]}``.

    spacing: (x, y, z) mm of the training grid. kernel_sizes[k] is the kernel of encoder stage k
    (and of decoder stage k, which works at the same resolution); pool_sizes[k] the pooling
    after encoder stage k. See the module docstring for the rule.
    """
    current = np.asarray([float(s) for s in spacing], dtype=np.float64)
    if current.shape != (3,) or np.any(current <= 0):
        raise ValueError(f"spacing must be three positive numbers, got {tuple(spacing)}")
    pools, kernels = [], []
    for stage in range(levels + 1):
        fine = current <= ratio * current.min() * (1 + 1e-6)
        kernels.append([3 if f else 1 for f in fine])
        if stage < levels:
            pool = [2 if f else 1 for f in fine]
            pools.append(pool)
            current = current * np.asarray(pool)
    return {"pool_sizes": pools, "kernel_sizes": kernels}


def is_default_plan(plan: Dict[str, List[List[int]]]) -> bool:
    """True when the plan is the plain isotropic U-Net (every pool 2, every kernel 3)."""
    return all(p == DEFAULT_POOL for p in plan["pool_sizes"]) and all(k == DEFAULT_KERNEL for k in plan["kernel_sizes"])


def spacing_options(network: str, options: dict, spacing: Sequence[float]) -> dict:
    """Network options to add for data of this (median) spacing: the plan's ``pool_sizes`` and
    ``kernel_sizes`` for ``unet3d`` on anisotropic data, ``{}`` otherwise.

    Nothing is added when the user set either option, for isotropic data (the default network is
    the plan), or for networks without the options (``vnet``, ``resnet_vnet``: their pooling is
    fixed by the reference architectures).
    """
    if network != "unet3d" or "pool_sizes" in options or "kernel_sizes" in options:
        return {}
    plan = spacing_plan(spacing)
    return {} if is_default_plan(plan) else plan


def total_pooling(pool_sizes: Sequence[Sequence[int]]) -> List[int]:
    """Product of the pool sizes per axis: how much the bottleneck is smaller than the input."""
    return [int(np.prod([p[axis] for p in pool_sizes])) for axis in range(3)]
