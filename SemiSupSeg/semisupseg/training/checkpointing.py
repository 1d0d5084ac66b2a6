"""``Checkpointing``: the trainer's ``last.pt``, written and read back so that a run resumes exactly.

A mixin of ``Trainer`` (``trainer.py``), which holds what it saves: the weights of every network,
the optimiser, the iteration, the random states (torch, the patch sampler's generator, CUDA / MPS,
each torchrun rank's), the training time so far, the time budget's state and the warm start's
EMA offset. ``training/checkpoint.py`` writes the file atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from ..events import log
from .checkpoint import load_checkpoint, save_checkpoint
from .devices import mps_available
from .optimizers import check_resumable
from .warm_start import class_names


class Checkpointing:
    """``save()`` / ``restore()`` of one run's ``checkpoints/last.pt`` (see the module docstring)."""

    def save(self) -> Path:
        path = self.run_dir / "checkpoints" / "last.pt"
        rank_rng = self.dist.gather_rng(self.sampler, self.method)  # a collective: every rank comes here
        if not self.dist.is_main:
            return path
        started = self.clock()
        budget = {"budget": self.budget.state(self.budget_elapsed())} if self.budget else {}
        save_checkpoint(
            path,
            iteration=self.iteration,
            method=self.method,
            optimizer=self.optimizer,
            sampler_rng=self.sampler.generator.get_state() if hasattr(self.sampler, "generator") else None,
            train_seconds=self.resumed_seconds + self.clock() - self.part_started,
            extra={"classes": class_names(self.spec.labels), "ema_offset": self.ema_offset,
                   **({"rank_rng": rank_rng} if rank_rng else {}), **budget},
        )
        if self.budget:
            self.budget.record_save(self.clock() - started)
        self.events.emit("checkpoint", path=str(path), iteration=self.iteration)
        return path

    def restore(self) -> None:
        state = load_checkpoint(self.run_dir / "checkpoints" / "last.pt")
        if state["method"] != self.method.name:
            raise InputError(
                f"The checkpoint was written by method '{state['method']}', the run is '{self.method.name}'.",
                "Resume with the run's own config.json.",
            )
        self.method.load_state_dict(state["model"])
        check_resumable(self.optimizer, state["optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.resumed_seconds = float(state.get("train_seconds", 0.0))  # absent in older checkpoints
        self.ema_offset = int(state.get("ema_offset", 0))
        if self.budget:  # a budget given only now (--resume --time-budget) counts the run's time so far
            self.budget.spent_before_s = self.resumed_seconds
            self.budget.restore(state.get("budget"))
        torch.set_rng_state(state["rng"]["torch"])
        if "sampler" in state["rng"] and hasattr(self.sampler, "generator"):
            self.sampler.generator.set_state(state["rng"]["sampler"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if "mps" in state["rng"] and mps_available():
            torch.mps.set_rng_state(state["rng"]["mps"])
        self.dist.restore_rng(state, self.sampler, int(self.config["seed"]), self.iteration)
        log(f"resumed {self.run_dir.name} at iteration {self.iteration} of {self.total or 'a continuous run'}")
