"""The training grid a run without ``target_spacing`` uses off a CUDA GPU (issue 15: time to quality).

On a CPU (or an Apple GPU, which takes the CPU defaults) the time of a step and of a prediction
grows with the voxels, and a few hundred steps are all a short run gets. LA at its own 0.625 mm
grid gives a 64x64x48 CPU patch of 40x40x30 mm, a fraction of the atrium; on a 1.6 mm grid nearly
the whole crop fits in one 64x64x32 patch. Measured on LA with a 5-minute budget and SGD at 0.05
(docs/benchmarks.md, time_to_quality): held-out Dice 0.757 at 1.25 mm, 0.804 at 1.6 mm, 0.792 at
2 mm.

Rule (config ``cpu_min_spacing_mm``, default 1.6; null: the image grid): when the median case
has more than ``SMALL_CASE_VOXELS`` voxels, every axis of the training grid is at least
``cpu_min_spacing_mm`` (an axis already coarser, such as a 5 mm slice axis, keeps its spacing).
Smaller cases keep their grid: coarsening them saves little time and loses detail. The resolved
spacing is written to the run's config.json as ``target_spacing``, so prediction, resume and warm
start use the same grid, and predictions are resampled back to each image's grid as with any
``target_spacing``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

# 2^17 voxels, e.g. 64x64x32: the synthetic test and demo volumes (at most 80x80x48 = 0.3 M at the
# demo's own 1.25 mm) stay below or set their own grid; an LA crop (about 2.3 M voxels) is above.
SMALL_CASE_VOXELS = 2 ** 17


def cpu_training_spacing(sizes: Sequence[Sequence[int]], spacings: Sequence[Sequence[float]],
                         min_spacing_mm: Optional[float]) -> Optional[List[float]]:
    """Per-axis spacing (mm) of the CPU training grid, or None to keep each image's grid.

    ``sizes`` and ``spacings`` are the cases' header values (x, y, z); the rule uses their medians.
    """
    if not min_spacing_mm or not len(sizes):
        return None
    median_voxels = float(np.median([float(np.prod(size)) for size in sizes]))
    if median_voxels <= SMALL_CASE_VOXELS:
        return None
    median_spacing = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    if np.all(median_spacing >= float(min_spacing_mm)):
        return None
    return [round(max(float(s), float(min_spacing_mm)), 4) for s in median_spacing]
