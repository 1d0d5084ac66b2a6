"""The trainer's side of the time budget (``time_budget.py`` holds the rule and its estimates).

``BudgetKeeping`` is a part of ``Trainer`` (its base class), kept apart because it is one job: time
the steps, decide before each step whether the budget still holds the next one plus the final
checkpoint and prediction, estimate that prediction (from a timed window forward until a round
was timed), and, with ``schedule_to_budget``, the T the schedules are paced to. It uses the
trainer's ``clock``, ``config``, ``budget``, ``method``, ``prepared`` and ``events``.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..inference.flip_averaging import tta_passes
from .time_budget import must_stop, paced_total, prediction_from_training, prediction_from_window


class BudgetKeeping:
    """Mixed into ``Trainer``: the time budget's measurements and decisions (see the module doc)."""

    @property
    def paced_by_budget(self) -> bool:
        """A run that trains until its budget, with schedules paced by it (time_budget.paced_total)."""
        return bool(self.budget and self.continuous and self.config["schedule_to_budget"])

    def schedule_horizon(self) -> tuple:
        """(T, ramp_length) of the next step's StepContext: the budget's estimated T once a paced
        run has timed its steps (before that, the continuous ramps, still at their start)."""
        if self.paced_by_budget and self._paced_total:
            return self._paced_total, 0
        return self.total, self.ramp_length

    def _time_left(self, it: int, rate: float) -> dict:
        """``eta_s`` (None for a run without an end or budget) and, with a budget, ``budget_left_s``."""
        eta = None if self.continuous else round((self.total - it) / max(rate, 1e-9), 1)
        if not self.budget:
            return {"eta_s": eta}
        left = round(self.budget.left_s(self.budget_elapsed()), 1)
        return {"eta_s": left if eta is None else min(eta, left), "budget_left_s": left}

    def timed_step(self) -> Optional[dict]:
        """``step()``, its duration recorded for the time budget's estimate of the next one."""
        started = self.clock()
        first_of_part = not self._stepped
        parts = self.step()
        self._stepped = True
        if self.budget:
            self.budget.record_step(self.clock() - started, first_of_part=first_of_part)
        return parts

    # ---- the time budget (time_budget.py) -------------------------------------------------------
    def budget_elapsed(self) -> float:
        """Seconds of the budget spent: earlier parts (checkpoint) + this part since the worker started."""
        return self.budget.spent_before_s + self.clock() - self.budget_started

    def budget_reached(self) -> bool:
        """Whether the next step would leave too little of the budget to checkpoint and predict;
        emits ``budget_reached`` with the estimates when it does. A run with no iteration yet always
        trains one (there would be nothing to predict with)."""
        if not self.budget or self.iteration == 0:
            return False
        elapsed = self.budget_elapsed()
        next_step = self.budget.next_step_s + self._periodic_work_s(self.iteration + 1)
        prediction, how = self._prediction_s(self.cases_to_predict() if self.config["predict_cases"] != "none" else [])
        finish = self.budget.final_save_s + prediction
        if self.paced_by_budget:
            self._paced_total = paced_total(self.iteration, self.budget.budget_s, elapsed, finish,
                                            self.budget.typical_step_s)
        if not must_stop(self.budget.budget_s, elapsed, next_step, finish):
            return False
        minutes = self.budget.budget_s / 60
        self.events.emit(
            "budget_reached",
            message=f"time budget of {minutes:g} min reached: training stops at iteration {self.iteration} "
                    "to checkpoint and predict within it",
            iteration=self.iteration,
            budget_s=round(self.budget.budget_s, 2),
            elapsed_s=round(elapsed, 2),
            next_step_s=round(next_step, 2),
            checkpoint_s=round(self.budget.final_save_s, 2),
            prediction_s=round(prediction, 2),
            prediction_estimate=how,
            expected_end_s=round(elapsed + finish, 2),
        )
        return True

    def _periodic_work_s(self, it: int) -> float:
        """Estimated seconds of the checkpoint and prediction round that iteration ``it`` brings."""
        cfg, seconds = self.config, 0.0
        if cfg["checkpoint_every"] and it % cfg["checkpoint_every"] == 0:
            seconds += self.budget.final_save_s
        if self._prediction_due(it):
            seconds += self._prediction_s(self.cases_to_predict())[0]
        return seconds

    def _prediction_s(self, case_ids: List[str]) -> tuple:
        """(seconds, how estimated) to predict ``case_ids`` (time_budget.TimeBudget.prediction_s)."""
        cases = [self.prepared[c] for c in case_ids if c in self.prepared]
        cfg = self.config
        passes = len(self.method.inference_networks()) * (int(cfg["mc_dropout"]) + tta_passes(cfg))
        shapes = [case.image.shape for case in cases]
        reference_voxels = sum(int(case.reference.GetNumberOfPixels()) for case in cases)
        voxels = sum(int(case.image.size) for case in cases)
        window_s = self._window_forward_s() if voxels and self.budget.predict_s_per_voxel is None else None
        if window_s is None:
            unmeasured, how = prediction_from_training(
                shapes, reference_voxels, cfg["patch_size"], float(cfg["sw_overlap"]), self.budget.next_step_s,
                int(cfg["batch_labelled"]) + int(cfg["batch_unlabelled"]), passes), "training speed"
        else:
            unmeasured, how = prediction_from_window(shapes, reference_voxels, cfg["patch_size"],
                                                     float(cfg["sw_overlap"]), window_s, passes), "timed window"
        return self.budget.prediction_s(voxels, unmeasured, how)

    def _window_forward_s(self) -> Optional[float]:
        """Seconds of one inference network's forward over one window (eval mode, no gradient, the
        prediction's autocast), timed once after a warm-up pass; None for compiled networks (a
        timing pass would first compile them for inference)."""
        if self._window_s is None and not self.config.get("compile"):
            net = self.method.inference_networks()[0]
            autocast = torch.bfloat16 if (self.device.type == "cuda" and self.config.get("amp", "auto") != "off") else None
            window = torch.zeros((1, 1, *self.config["patch_size"]), device=self.device)
            was_training = net.training
            net.eval()
            try:
                with torch.no_grad(), torch.autocast(self.device.type, dtype=autocast or torch.float32,
                                                     enabled=autocast is not None):
                    net(window)  # warm-up: allocations, kernel choice
                    _synchronize(self.device)
                    started = self.clock()
                    net(window)
                    _synchronize(self.device)
                    self._window_s = self.clock() - started
            finally:
                net.train(was_training)
        return self._window_s


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timing covers it (CUDA and MPS run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
