"""The time budget of a run (``--time-budget MINUTES``, config ``time_budget_min``).

"Train for 20 minutes" means: 20 minutes from the worker's start to the last prediction file,
the final checkpoint and prediction included. So training stops *before* an iteration when

    elapsed + next_step + (periodic work due at that iteration) + final_save + final_prediction > budget

with every term an estimate made as late as possible, from this run's own measurements:

- ``elapsed``: the run's recorded time (``budget_spent_s`` of the last checkpoint, for a resumed
  run: time between that checkpoint and a kill is lost, its iterations are redone) plus this
  part's time since the worker began reading the workspace (setup counts: the user waits for it).
- ``next_step``: the longest of the last ``RECENT_STEPS`` steps (steps vary by a factor of 3 on a
  shared CPU; the longest is the conservative choice).
- ``final_save``: the longest checkpoint write so far, ``DEFAULT_SAVE_S`` before the first.
- ``final_prediction``: once any prediction round of this run was timed (a periodic round, an
  early round, a ``PREDICT`` request), seconds per training-grid voxel of that round times the
  voxels of the cases the final round predicts, times ``MEASURED_SAFETY``. Before that, an
  estimate from the training speed (``prediction_from_training``): one sliding window costs at
  most what one training patch costs in a step (a step runs forward *and* backward for every
  patch plus the teacher's forward: 3-4 forwards, where a window needs one per inference network),
  plus ``POST_SECONDS_PER_VOXEL`` per voxel of the original image for resampling back, entropy,
  regions and the compressed files. Checked against docs/benchmarks.md's first_overlay rows
  (256x256x100 volumes): CPU (128x128x50 training grid, 18 windows, 3.06 s steps of 4 patches)
  17 s estimated per case, 5.7 s measured; H200 (native grid, 32 windows, 0.17 s steps of 8
  patches) 4.0 s estimated, 2.6 s measured. Too long by 1.5x to 3x: that costs a few training
  steps, never the budget; the first timed round replaces it.

At least one iteration is trained in a run that has none, whatever the estimates (a budget
shorter than one step plus the prediction is then overrun, and the ``budget_reached`` event says
by how much it was expected to be). A continuous run (``--continuous``) with a budget trains until
the budget the same way and then ends as a finished run (final checkpoint and prediction); a STOP
file or SIGTERM before that cancels it as usual.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterable, Optional, Sequence

RECENT_STEPS = 10
MEASURED_SAFETY = 1.25  # the same round measured again on a shared CPU varies by about this much
DEFAULT_SAVE_S = 2.0  # a checkpoint of the default networks takes well under a second on this CPU
POST_SECONDS_PER_VOXEL = 0.5e-6  # resample back + entropy + regions + gzip, per original-grid voxel


def count_windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> int:
    """Sliding windows over a volume of ``shape`` (X, Y, Z): per axis 1 + ceil((size - roi) / step),
    step = max(1, int(roi * (1 - overlap))), as MONAI's sliding window scans (a volume smaller than
    the window is padded to it: one window along that axis)."""
    total = 1
    for size, roi in zip(shape, patch):
        step = max(1, int(roi * (1.0 - overlap)))
        total *= 1 + max(0, math.ceil((int(size) - int(roi)) / step))
    return total


def prediction_from_training(case_shapes: Iterable[Sequence[int]], reference_voxels: int, patch: Sequence[int],
                             overlap: float, step_s: float, patches_per_step: int, passes: int) -> float:
    """Seconds to predict cases of ``case_shapes`` (training grid), estimated from a step's seconds.

    t = sum_cases windows(case) * passes * step_s / patches_per_step + POST_SECONDS_PER_VOXEL * reference_voxels

    ``passes``: forwards per window (inference networks x (1 + MC-dropout samples)).
    """
    windows = sum(count_windows(shape, patch, overlap) for shape in case_shapes)
    per_window = step_s / max(1, patches_per_step)
    return windows * passes * per_window + POST_SECONDS_PER_VOXEL * reference_voxels


def must_stop(budget_s: float, elapsed_s: float, next_step_s: float, finish_s: float) -> bool:
    """Stop before the next step when it and the finish would not fit: elapsed + step + finish > budget."""
    return elapsed_s + next_step_s + finish_s > budget_s


class TimeBudget:
    """What the run measured so far, for the stopping rule (see the module docstring).

    ``state()`` / ``from_state`` keep it in the checkpoint (plain floats), so a resumed run
    knows its step, save and prediction speeds and the time it has already spent.
    """

    def __init__(self, budget_s: float, spent_s: float = 0.0, steps: Sequence[float] = (),
                 save_s: Optional[float] = None, predict_s_per_voxel: Optional[float] = None):
        self.budget_s = float(budget_s)
        self.spent_before_s = float(spent_s)
        self.steps = deque((float(s) for s in steps), maxlen=RECENT_STEPS)
        self.save_s = save_s
        self.predict_s_per_voxel = predict_s_per_voxel

    @classmethod
    def from_config(cls, config: dict) -> Optional["TimeBudget"]:
        minutes = config.get("time_budget_min")
        return None if minutes is None else cls(60.0 * float(minutes))

    def restore(self, state: Optional[dict]) -> None:
        """Take the measurements of a checkpoint's ``budget`` entry (the budget itself stays this run's)."""
        if not state:
            return
        self.spent_before_s = float(state.get("spent_s", 0.0))
        self.steps = deque((float(s) for s in state.get("steps", [])), maxlen=RECENT_STEPS)
        self.save_s = state.get("save_s")
        self.predict_s_per_voxel = state.get("predict_s_per_voxel")

    def state(self, spent_s: float) -> dict:
        """The checkpoint's ``budget`` entry (plain values: loadable with weights_only=True)."""
        state = {"budget_s": self.budget_s, "spent_s": float(spent_s), "steps": list(self.steps)}
        if self.save_s is not None:
            state["save_s"] = float(self.save_s)
        if self.predict_s_per_voxel is not None:
            state["predict_s_per_voxel"] = float(self.predict_s_per_voxel)
        return state

    # ---- measurements ------------------------------------------------------------------------
    def record_step(self, seconds: float) -> None:
        self.steps.append(float(seconds))

    def record_save(self, seconds: float) -> None:
        self.save_s = max(float(seconds), self.save_s or 0.0)

    def record_prediction(self, seconds: float, voxels: int) -> None:
        """A timed round: keeps the slowest rate per voxel seen (conservative)."""
        if voxels <= 0:
            return
        rate = float(seconds) / voxels
        self.predict_s_per_voxel = max(rate, self.predict_s_per_voxel or 0.0)

    # ---- estimates -----------------------------------------------------------------------------
    @property
    def next_step_s(self) -> float:
        return max(self.steps) if self.steps else 0.0

    @property
    def final_save_s(self) -> float:
        return DEFAULT_SAVE_S if self.save_s is None else float(self.save_s)

    def prediction_s(self, voxels: int, from_training: float) -> tuple:
        """(seconds, how) for a round over ``voxels`` training-grid voxels: measured rate x safety
        when a round was timed, else ``from_training`` (``prediction_from_training``)."""
        if voxels <= 0:
            return 0.0, "nothing to predict"
        if self.predict_s_per_voxel is not None:
            return MEASURED_SAFETY * self.predict_s_per_voxel * voxels, "measured"
        return float(from_training), "training speed"

    def left_s(self, elapsed_s: float) -> float:
        return max(0.0, self.budget_s - elapsed_s)
