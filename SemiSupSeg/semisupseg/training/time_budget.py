"""The time budget of a run (``--time-budget MINUTES``, config ``time_budget_min``).

"Train for 20 minutes" means: 20 minutes from the worker's start to the last prediction file,
the final checkpoint and prediction included. So training stops *before* an iteration when

    elapsed + next_step + (periodic work due at that iteration) + final_save + final_prediction > budget

with every term an estimate made as late as possible, from this run's own measurements:

- ``elapsed``: the run's recorded time (``budget_spent_s`` of the last checkpoint, for a resumed
  run: time between that checkpoint and a kill is lost, its iterations are redone) plus this
  part's time since the worker began reading the workspace (setup counts: the user waits for it).
- ``next_step``: the longest of the last ``RECENT_STEPS`` steps (steps vary by a factor of 3 on a
  shared CPU; the longest is the conservative choice). A part's first step (allocations, kernel
  selection: 8.6 s against 1.5-2 s for the next ones in the demo on this CPU) counts only until a
  second step is timed.
- ``final_save``: the longest checkpoint write so far, ``DEFAULT_SAVE_S`` before the first.
- ``final_prediction``: once any prediction round of this run was timed (a periodic round, an
  early round, a ``PREDICT`` request), seconds per training-grid voxel of that round times the
  voxels of the cases the final round predicts, times ``MEASURED_SAFETY``. Before that, from one
  timed forward pass of an inference network over one window (``prediction_from_window``: the
  trainer times it once, after a warm-up pass, when the estimate is first needed): windows x
  passes x that time x ``WINDOW_SAFETY``, plus ``post_seconds`` (a part per case and a part per
  voxel of the original image: resampling back, entropy, regions and the compressed files). The earlier
  estimate from the training speed (``prediction_from_training``: a window costs what a training
  patch costs in a step) is kept for a run whose networks are compiled (timing a pass would
  compile them for inference first); it was 1.5x (H200) to 3x (this CPU) too long on the
  first_overlay volumes, and 10x on the demo's first step (276 s estimated, 28 s measured: the run
  stopped after one iteration), which is why the window is now timed.

**Schedules paced by the budget** (config ``schedule_to_budget``). A run that trains until its
budget has no planned T, so by default its schedules play out over ``ramp_iterations`` like a
continuous run's. With ``schedule_to_budget`` its T is instead re-estimated before every step as
the iterations the budget leaves room for (``paced_total``): the learning-rate schedule (``poly``
is then allowed) and the methods' ramps run their whole course within the budget, as a finite run
of that length would.

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
# After the network, per case: a fixed part (files, regions.json) and a part per original-grid voxel
# (resample back, entropy, regions, gzip). Fitted on two final rounds on this 2-core CPU: the demo
# (16 cases of 80x80x48: 11.7 s) and LA at 1.25 mm (16 crops of about 2.5 M voxels: 18.6 s); a single
# per-voxel rate of 2e-6 s had overestimated LA's round 5x (99 s) and ended a 5-minute run at 3.6 min.
POST_SECONDS_PER_CASE = 0.3
POST_SECONDS_PER_VOXEL = 0.3e-6
# A window's forward timed once, alone, is faster than the same windows inside a round (batching,
# stitching, memory traffic): the demo's 16 cases took 28 s for an estimate of 15 s without it.
WINDOW_SAFETY = 1.5


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

    t = sum_cases windows(case) * passes * step_s / patches_per_step + post(cases, reference_voxels)

    ``passes``: forwards per window (inference networks x (1 + MC-dropout samples)).
    """
    shapes = list(case_shapes)
    windows = sum(count_windows(shape, patch, overlap) for shape in shapes)
    per_window = step_s / max(1, patches_per_step)
    return windows * passes * per_window + post_seconds(len(shapes), reference_voxels)


def prediction_from_window(case_shapes: Iterable[Sequence[int]], reference_voxels: int, patch: Sequence[int],
                           overlap: float, window_s: float, passes: int) -> float:
    """Seconds to predict cases of ``case_shapes`` (training grid) from one window's timed forward.

    t = WINDOW_SAFETY * sum_cases windows(case) * passes * window_s + post(cases, reference_voxels)
    """
    shapes = list(case_shapes)
    windows = sum(count_windows(shape, patch, overlap) for shape in shapes)
    return WINDOW_SAFETY * windows * passes * window_s + post_seconds(len(shapes), reference_voxels)


def post_seconds(cases: int, reference_voxels: int) -> float:
    """post(cases, voxels) = POST_SECONDS_PER_CASE * cases + POST_SECONDS_PER_VOXEL * voxels."""
    return POST_SECONDS_PER_CASE * cases + POST_SECONDS_PER_VOXEL * reference_voxels


def paced_total(iteration: int, budget_s: float, elapsed_s: float, finish_s: float, step_s: float) -> int:
    """The iterations a run that trains until its budget is expected to reach:

        T = t + floor((budget - elapsed - finish) / step)

    ``step`` is a typical step (the median of the recent ones, not the longest the stopping rule
    uses: T sets where the schedules stand, and a T too short would end the ramps early), at least
    t + 1 so that progress t / T stays below 1 while training goes on."""
    left = max(0.0, budget_s - elapsed_s - finish_s)
    return max(iteration + 1, iteration + int(left // max(step_s, 1e-9)))


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
        self.first_step_s: Optional[float] = None

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
    def record_step(self, seconds: float, first_of_part: bool = False) -> None:
        """A step's seconds; a part's first step (warm-up) is kept apart (see ``next_step_s``)."""
        if first_of_part:
            self.first_step_s = float(seconds)
        else:
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
        if self.steps:
            return max(self.steps)
        return self.first_step_s or 0.0

    @property
    def typical_step_s(self) -> float:
        """The median of the recent steps (the first step of a part until a second is timed)."""
        if self.steps:
            ordered = sorted(self.steps)
            return ordered[len(ordered) // 2]
        return self.first_step_s or 0.0

    @property
    def final_save_s(self) -> float:
        return DEFAULT_SAVE_S if self.save_s is None else float(self.save_s)

    def prediction_s(self, voxels: int, unmeasured: float, how_unmeasured: str = "training speed") -> tuple:
        """(seconds, how) for a round over ``voxels`` training-grid voxels: measured rate x safety
        when a round was timed, else ``unmeasured`` (``prediction_from_window`` or
        ``prediction_from_training``, named by ``how_unmeasured``)."""
        if voxels <= 0:
            return 0.0, "nothing to predict"
        if self.predict_s_per_voxel is not None:
            return MEASURED_SAFETY * self.predict_s_per_voxel * voxels, "measured"
        return float(unmeasured), how_unmeasured

    def left_s(self, elapsed_s: float) -> float:
        return max(0.0, self.budget_s - elapsed_s)
