"""The automatic training patch: ``default_patch_size`` from the volumes' shapes and spacings.

NumPy only (no torch), so the configuration can choose a patch before a network is built.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

PatchSize = Tuple[int, int, int]

GPU_PATCH_VOXELS = 112 * 112 * 80  # ~1.0e6: the LA literature's patch, fits a 3D U-Net at batch 4+4
CPU_PATCH_VOXELS = 64 * 64 * 48  # ~0.2e6: keeps a CPU step at a few seconds
# The slice-wise 2D U-Net on a CPU gets a smaller patch: at CPU scale more steps within the time
# budget were worth more than context per step. ACDC, 20 minutes on the 2-core CPU: 96 x 96 x 8
# trained 3041 iterations to a held-out Dice of 0.772, the 3D budget's 144 x 144 x 8 1323-1442
# iterations to 0.741-0.747 (docs/benchmarks.md, acdc notes). The sliding window still covers
# whole slices at inference. GPUs keep GPU_PATCH_VOXELS for every network.
CPU_PATCH_VOXELS_BY_NETWORK = {"unet2d": 96 * 96 * 8}


def cpu_patch_voxels(network: str) -> int:
    """The automatic patch's voxel budget for ``network`` on a CPU."""
    return CPU_PATCH_VOXELS_BY_NETWORK.get(network, CPU_PATCH_VOXELS)


def default_patch_size(
    shapes: Sequence[Sequence[int]],
    spacings: Sequence[Sequence[float]],
    divisor: Union[int, Sequence[int]] = 16,
    max_voxels: Optional[int] = None,
    on_gpu: bool = False,
    min_bottleneck_voxels: int = 2,
    strides: Optional[Sequence[int]] = None,
) -> PatchSize:
    """A patch size (x, y, z) for volumes of these training-grid shapes and spacings (mm).

    ``divisor`` is one number or one per axis (a network planned for thin slabs pools the slice
    axis fewer times: 16, 16, 8); below, "multiple of ``divisor``" is per axis. ``strides``: what
    one bottleneck voxel spans per axis (default: the divisors; 0: the axis does not count, as
    for the slice-wise network), for rule 6.

    1. ``cap`` = the median shape rounded to the nearest multiple of ``divisor`` (halves up, at
       least ``divisor``): a patch never needs to be larger than the typical volume, and the
       typical volume is padded by less than half a divisor (a 9-slice cine MRI with z divisor
       8 gets 8 slices, not 16 of which 7 would be padding the network computes on).
    2. If ``cap`` fits the budget (``max_voxels``, default ``GPU_PATCH_VOXELS`` or
       ``CPU_PATCH_VOXELS``) it is the answer.
    3. Otherwise aim at a physically isotropic patch (a cube in mm, so a coarse axis gets fewer
       voxels) of ``max_voxels`` voxels; axes where the cube exceeds ``cap`` are clipped and the
       freed budget goes to the other axes.
    4. Round each axis to the nearest multiple of ``divisor`` (at least ``divisor``), then shrink
       (the axis whose physical extent stays largest, ties: z first) until within budget, and
       grow (the physically shortest axis) while it still fits.
    5. When x and y have the same spacing, make them equal so 90-degree rotations apply.
    6. Grow past ``cap`` until ``prod(patch // divisor) >= min_bottleneck_voxels``: the network's
       own minimum (``networks.patch_rule``; 2, the default, is the strictest of the engine's
       networks: a normalised 1/16 bottleneck needs 2 voxels). Only tiny volumes get here, and
       the sampler and the sliding window pad them.

    Example: LA (about 183 x 140 x 88, 0.625 mm isotropic) gives 96 x 96 x 96 on a GPU and
    64 x 64 x 48 on a CPU; 256 x 256 x 30 at 0.8 x 0.8 x 5 mm gives 176 x 176 x 32 on a GPU;
    ACDC (about 232 x 256 x 9 at 1.5 x 1.5 x 5 mm) with divisors 16, 16, 8 gives 144 x 144 x 8
    on a CPU (z capped at the median 9 slices rounded to 8; the budget goes in-plane).
    """
    if not shapes:
        raise ValueError("default_patch_size needs at least one volume shape")
    d = [int(divisor)] * 3 if isinstance(divisor, (int, np.integer)) else [int(v) for v in divisor]
    budget = int(max_voxels or (GPU_PATCH_VOXELS if on_gpu else CPU_PATCH_VOXELS))
    median_shape = np.median(np.asarray(shapes, dtype=np.float64), axis=0)
    spacing = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    cap = [max(da, _nearest_multiple(s, da)) for s, da in zip(median_shape, d)]
    cells = list(strides) if strides is not None else d
    if math.prod(cap) <= budget:
        return _grown_to_network_minimum(cap, spacing, d, min_bottleneck_voxels, cells)
    patch = [max(da, min(c, int(round(v / da)) * da)) for v, c, da in zip(_isotropic_patch(cap, spacing, budget), cap, d)]
    _shrink_to_budget(patch, spacing, budget, d)
    _grow_within_budget(patch, cap, spacing, budget, d, axes=(0, 1, 2))
    if np.isclose(spacing[0], spacing[1], rtol=0.01) and patch[0] != patch[1]:
        high = max(patch[0], patch[1])
        if high <= min(cap[0], cap[1]) and math.prod([high, high, patch[2]]) <= budget:
            patch[0] = patch[1] = high
        else:
            patch[0] = patch[1] = min(patch[0], patch[1])
            _grow_within_budget(patch, cap, spacing, budget, d, axes=(2,))
    return _grown_to_network_minimum(patch, spacing, d, min_bottleneck_voxels, cells)


def _nearest_multiple(value: float, divisor: int) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, halves up (24 -> 32 for 16)."""
    return int(math.floor(value / divisor + 0.5)) * divisor


def _grown_to_network_minimum(
    patch: Sequence[int], spacing: np.ndarray, d: Sequence[int], min_cells: int, strides: Sequence[int]
) -> PatchSize:
    """``patch`` grown by ``d`` steps (per axis) until ``prod(patch // strides) >= min_cells``.

    The physically shortest axis grows (ties: z first); when x and y share a spacing they grow
    together, keeping the in-plane patch square for the 90-degree rotations.
    """
    patch = [int(p) for p in patch]
    square = bool(np.isclose(spacing[0], spacing[1], rtol=0.01)) and patch[0] == patch[1]
    counting = [a for a in range(3) if strides[a]]  # stride 0: the axis has no bottleneck of its own
    while math.prod(patch[a] // strides[a] for a in counting) < min_cells:
        axis = min(counting, key=lambda a: (patch[a] * spacing[a], -a))
        grow = (0, 1) if square and axis < 2 else (axis,)
        for a in grow:
            patch[a] += d[a]
    return tuple(patch)


def _isotropic_patch(cap: Sequence[int], spacing: np.ndarray, budget: int) -> List[float]:
    """Voxels per axis of a cube in mm holding ``budget`` voxels, axes clipped to ``cap``."""
    clipped = {}
    while len(clipped) < 3:
        free = [a for a in range(3) if a not in clipped]
        # prod_free(edge / s_a) * prod_clipped(cap_a) = budget, solved for the edge in mm
        fixed = math.prod(cap[a] for a in clipped)
        edge = (budget / fixed * math.prod(spacing[a] for a in free)) ** (1.0 / len(free))
        over = [a for a in free if edge / spacing[a] > cap[a]]
        if not over:
            break
        clipped.update({a: cap[a] for a in over})
    return [clipped[a] if a in clipped else edge / spacing[a] for a in range(3)]


def _shrink_to_budget(patch: List[int], spacing: np.ndarray, budget: int, d: Sequence[int]) -> None:
    while math.prod(patch) > budget:
        candidates = [a for a in range(3) if patch[a] > d[a]]
        if not candidates:
            return
        axis = max(candidates, key=lambda a: ((patch[a] - d[a]) * spacing[a], a))
        patch[axis] -= d[axis]


def _grow_within_budget(patch, cap, spacing, budget: int, d: Sequence[int], axes) -> None:
    while True:
        candidates = [
            a for a in axes
            if patch[a] + d[a] <= cap[a] and math.prod(patch) // patch[a] * (patch[a] + d[a]) <= budget
        ]
        if not candidates:
            return
        axis = min(candidates, key=lambda a: (patch[a] * spacing[a], a))
        patch[axis] += d[axis]
