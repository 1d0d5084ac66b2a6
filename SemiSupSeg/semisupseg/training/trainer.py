"""The training loop: one run of one method on one workspace, driven by iterations.

``train_workspace`` is what ``semisupseg train`` calls. It reads and validates the workspace,
resolves the configuration, writes ``config.json`` and ``manifest.json``, trains with the JSON
events of the worker protocol, checkpoints (``last.pt``), honours cancel requests (SIGTERM, SIGINT
or a ``STOP`` file: the current iteration finishes, a checkpoint is written, exit 0), resumes from
``last.pt`` with the same schedule, and predicts every case at the end (and on request during
training) with the uncertainty maps the annotator sees.

The live annotation loop: a run with ``iterations`` 0 (``--continuous``) trains until stopped;
every ``reload_every`` iterations the workspace is looked at again (new cases, changed label
files: ``workspace_watch``); a ``PREDICT`` file in the run folder asks for predictions of some
cases at the next iteration boundary; ``init_from`` starts from an earlier run's weights.

A time budget (``time_budget_min``) ends training early enough for the final checkpoint and
prediction to fit in it (``time_budget``); the device is chosen and described in ``devices``
(CUDA, Apple GPU through MPS, CPU), which also says what falls back when MPS lacks something.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from ..config import apply_overrides, load_config, resolve_config, resolve_device, save_json_atomic
from ..data.dataset import load_dataset
from ..data.preprocess import prepare_case
from ..data.sampling import PatchSampler
from ..data.validate import validate_dataset
from ..errors import InputError
from ..events import EventWriter, log
from ..methods import StepContext, build_method
from ..networks import build_network
from .cancel_flag import CancelFlag
from .case_split import split_cases
from .checkpointing import Checkpointing
from .compilation import compile_network
from .derived_settings import derived_config
from .distributed import Distributed, NullEvents
from .device_recovery import DeviceRecovery
from .devices import autocast_choice, device_description, is_mps_failure
from .manifest import build_manifest
from .optimizers import build_optimizer
from .schedules import learning_rate
from .budget_keeping import BudgetKeeping
from .time_budget import TimeBudget
from .warm_start import warm_start
from .live_workspace import LiveWorkspace
from .prediction_rounds import PredictionRounds
from .workspace_watch import ContentDigests, case_states, file_stamp


def new_run_id(method: str) -> str:
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{method}"


def latest_run(workspace: Path) -> Path:
    runs = sorted((workspace / "runs").glob("*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise InputError(f"No run with a checkpoint in {workspace / 'runs'} to resume.", "Start a run without --resume first.")
    return runs[-1].parent.parent


def set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer(BudgetKeeping, Checkpointing, DeviceRecovery, LiveWorkspace, PredictionRounds):
    """Holds the state of one run: data, method, optimiser, schedule position, output folder.

    Its parts live in their own files: the time budget (budget_keeping), checkpoints and resume
    (checkpointing), device fallback and out-of-memory retries (device_recovery), the live workspace (live_workspace), prediction
    rounds and requests (prediction_rounds).
    """

    # Every duration the trainer measures (progress rates, train_seconds, the time budget) comes
    # from this clock; tests replace it with a fake one to check the budget's stopping rule.
    clock = staticmethod(time.perf_counter)

    def __init__(self, workspace: Path, config: dict, run_dir: Path, events: EventWriter, resume: bool):
        self.budget_started = self.clock()  # the budget counts setup too: the user waits for it
        self.workspace = workspace
        self.run_dir = run_dir
        self.events = events
        self.resume = resume
        self.spec = load_dataset(workspace)
        self.split = split_cases(self.spec, config["split"])
        training_cases = self.split.labelled + self.split.unlabelled
        validate_dataset(self.spec, cases=training_cases + self.split.held_out, require_labelled=True)
        self.dist = Distributed.from_environment()  # torchrun: rank, world size (see distributed.py)
        self.device = self.dist.device(resolve_device(config["device"]))
        self.dist.start(self.device)
        self.num_classes = self.spec.num_classes
        if not resume:  # a resumed run's config.json holds what it derived
            config = derived_config(config, workspace, self.device.type, training_cases + self.split.held_out)
        self.prepared = self._prepare(config)
        shapes = [p.image.shape for p in self.prepared.values()]
        spacings = [p.spacing for p in self.prepared.values()]
        self.config = resolve_config(config, self.device, shapes, spacings)
        self.total = int(self.config["iterations"])  # 0: continuous (until stopped or the budget)
        self.budget = TimeBudget.from_config(self.config)  # None: no time budget
        self._stepped, self._window_s = False, None  # a part's first step; one window's timed forward
        self._paced_total = 0  # schedule_to_budget: T as last estimated (0: not yet)
        self.fell_back_to_cpu = False
        self.method = self._build_method()
        # A warm-started teacher continues its average: the EMA sees iterations counted from the
        # source run's start, so its decay is at its cap at once instead of restarting at 0
        # (teacher := student), which would throw the source's teacher away at the first step.
        self.ema_offset = 0
        if self.config.get("init_from") and not resume:
            self._warm_start()
        self.optimizer = build_optimizer(self.method.trainable_parameters(), self.config["optimizer"])
        self.sampler = self._build_sampler()
        self.dist.wrap(self.method, self.device)
        self.dist.seed_rank(int(self.config["seed"]))
        self.iteration = 0
        # Training wall time of earlier parts of a resumed run (from the checkpoint) and the
        # start of this part; together they give the run's total in checkpoints and "finished".
        self.resumed_seconds = 0.0
        self.part_started = self.clock()
        self.skipped_steps = 0
        self.cancel = CancelFlag(run_dir / "STOP")
        self.digests = ContentDigests()
        self.dataset_stamp = file_stamp(workspace / "dataset.json")
        self.case_states = case_states(self.split, self.digests)
        # Cases whose new state failed validation, with that state: warned about once, retried
        # when their files change again; meanwhile they keep their previous role and data.
        self.refused: Dict[str, tuple] = {}

    @property
    def continuous(self) -> bool:
        return self.total == 0

    @property
    def ramp_length(self) -> int:
        """Iterations over which a continuous run's schedules play out (0: a run with an end)."""
        return int(self.config["ramp_iterations"]) if self.continuous else 0

    # ---- setup -------------------------------------------------------------------------
    def _prepare(self, config: dict) -> dict:
        """Read and normalise every case once (training and held-out); labels only where used."""
        labelled_ids = {c.id for c in self.split.labelled}
        spacing = config["target_spacing"]
        prepared = {}
        for case in self.split.labelled + self.split.unlabelled + self.split.held_out:
            prepared[case.id] = prepare_case(
                case, self.spec.modality, target_spacing=spacing, with_label=case.id in labelled_ids
            )
        return prepared

    def _network_factory(self):
        name, options = self.config["network"], dict(self.config["network_options"])

        compile_networks = bool(self.config["compile"])

        def build():
            net = build_network(name, in_channels=1, num_classes=self.num_classes, **options)
            if compile_networks:
                compile_network(net)  # in place: state_dict keys stay those of the plain network
            return net

        return build

    def _build_method(self):
        set_seed(int(self.config["seed"]))
        method = build_method(self.config["method"], self._network_factory(), self.num_classes, self.config["method_options"])
        method = method.to(self.device)
        if self.channels_last:
            method = method.to(memory_format=torch.channels_last_3d)
        return method

    def _warm_start(self) -> None:
        """Load the ``init_from`` run's final weights (see ``warm_start``); config.json records its folder."""
        source = warm_start(self.method, self.workspace, self.config["init_from"], self.config, self.spec.labels)
        self.config["init_from"] = str(source["run"])
        if source["teacher_continues"]:
            self.ema_offset = source["iteration"]
        log(f"warm start from {source['run']} (its iteration {source['iteration']})")

    def _build_sampler(self) -> PatchSampler:
        labelled = [self.prepared[c.id] for c in self.split.labelled]
        unlabelled = [self.prepared[c.id] for c in self.split.unlabelled] if self.method.uses_unlabelled else []
        return PatchSampler(
            labelled,
            unlabelled,
            tuple(self.config["patch_size"]),
            self.device,
            seed=self.dist.sampler_seed(int(self.config["seed"])),
            fg_fraction=float(self.config["fg_fraction"]),
            unlabelled_stream=self.method.uses_unlabelled,  # partially labelled cases also feed it
            strong=self.config.get("augmentation", "standard") == "strong",
        )

    @property
    def channels_last(self) -> bool:
        if self.config["network"] == "unet2d":
            return False  # a layout for 5-D tensors; the slice-wise network's weights are 2D
        setting = self.config["channels_last"]
        return self.device.type == "cpu" if setting == "auto" else bool(setting)

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        """bf16 on CUDA (amp auto or bf16), None (fp32) elsewhere unless asked; see devices.autocast_choice."""
        choice = autocast_choice(self.device, self.config["amp"])
        if choice.notice and not getattr(self, "_autocast_notice_given", False):
            self._autocast_notice_given = True  # once per run, not once per step
            self.events.emit("notice", message=choice.notice)
        return choice.dtype

    # ---- the loop ------------------------------------------------------------------------
    def step(self) -> Optional[dict]:
        """One iteration; returns the loss parts (tensors) or None when the step was skipped."""
        total, ramp_length = self.schedule_horizon()
        ctx = StepContext(self.iteration, total, self.autocast_dtype, self.device, ramp_length=ramp_length)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config["optimizer"]["lr"], ctx.progress, self.config["optimizer"]["schedule"])
        batch = self.sampler.sample(int(self.config["batch_labelled"]), int(self.config["batch_unlabelled"]))
        if self.channels_last:
            batch.x_l = batch.x_l.contiguous(memory_format=torch.channels_last_3d)
            batch.x_u = batch.x_u.contiguous(memory_format=torch.channels_last_3d)
        self.method.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None):
            out = self.dist.training_step(self.method, batch, ctx)
        # A non-finite loss skips the update (no EMA either), as the released code does. This is
        # the loop's one host sync per iteration; it protects the weights from a NaN step.
        if not self.dist.all_finite(out.loss):
            self.skipped_steps += 1
            self.events.emit("warning", message=f"non-finite loss at iteration {self.iteration}; step skipped")
            self.iteration += 1
            return None
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        clip = self.config["optimizer"]["grad_clip"]
        if clip:
            torch.nn.utils.clip_grad_norm_(self.method.trainable_parameters(), clip)
        self.optimizer.step()
        self.method.after_optimizer_step(dataclasses.replace(ctx, iteration=self.ema_offset + ctx.iteration))
        self.iteration += 1
        return {"loss": out.loss.detach(), **out.parts}

    def run(self) -> str:
        """Train until the planned iteration count (never, when continuous), the time budget, or a
        cancel request; returns the final state."""
        cfg = self.config
        self.cancel.install()
        started = self.part_started = self.clock()
        start_iteration = self.iteration
        window_start, window_iteration = started, self.iteration
        stopped_by = "iterations"
        try:
            while self.continuous or self.iteration < self.total:
                if self.dist.any(self.cancel.is_set()):  # every rank stops after the same iteration
                    self.save()
                    return "cancelled"
                self.serve_predict_request()
                # After a request, so its prediction counts; rank 0 (which predicts and times the
                # predictions) decides for every rank (a collective only in runs with a budget).
                if self.budget and self.dist.any(self.dist.is_main and self.budget_reached()):
                    stopped_by = "time_budget"
                    break
                try:
                    parts = self.timed_step()
                except torch.cuda.OutOfMemoryError:  # CUDA's and MPS's (torch.OutOfMemoryError)
                    self.shrink_after_out_of_memory()
                    continue
                except (RuntimeError, NotImplementedError) as err:
                    if self.fell_back_to_cpu or not is_mps_failure(self.device, err):
                        raise
                    self.fall_back_to_cpu(err)  # the failed step did not count; it runs again
                    continue
                it = self.iteration
                if parts is not None and (it % cfg["log_every"] == 0 or it == self.total or it == start_iteration + 1):
                    now = self.clock()
                    rate = (it - window_iteration) / max(now - window_start, 1e-9)
                    window_start, window_iteration = now, it
                    self.events.emit(
                        "progress",
                        iteration=it,
                        total=None if self.continuous else self.total,
                        losses=self.dist.mean_parts(parts),
                        lr=self.optimizer.param_groups[0]["lr"],
                        it_per_s=round(rate, 4),
                        **self._time_left(it, rate),
                    )
                if cfg["checkpoint_every"] and it % cfg["checkpoint_every"] == 0 and (self.continuous or it < self.total):
                    self.save()
                if self._prediction_due(it):
                    self.predict(round_name=f"iteration {it}")
                if cfg["reload_every"] and it % cfg["reload_every"] == 0:
                    self.reload_workspace()
            self.save()
            if cfg["predict_cases"] != "none":
                self.predict(round_name="final")
            elapsed = self.clock() - started
            budget = {"time_budget_s": self.budget.budget_s, "budget_used_s": round(self.budget_elapsed(), 2)} \
                if self.budget else {}
            self.events.emit(
                "finished",
                iterations=self.iteration,
                seconds=round(elapsed, 2),
                total_seconds=round(self.resumed_seconds + elapsed, 2),
                resumed_at=start_iteration if start_iteration else None,
                skipped_steps=self.skipped_steps,
                stopped_by=stopped_by,
                **budget,
            )
            return "finished"
        finally:
            self.cancel.uninstall()



def train_workspace(
    workspace: Path,
    config_path: Optional[Path] = None,
    overrides: Optional[dict] = None,
    run_id: Optional[str] = None,
    resume: bool = False,
    events: Optional[EventWriter] = None,
) -> str:
    """Run ``semisupseg train``; returns "finished" or "cancelled" (InputError for bad input)."""
    workspace = Path(workspace).resolve()
    events = events or EventWriter()
    if not Distributed.from_environment().is_main:
        events = NullEvents()  # rank 0 reports for a torchrun job
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not (workspace / "dataset.json").is_file():
        raise InputError(
            f"{workspace} has no dataset.json.",
            "Point --workspace at a folder written by the Slicer module or in the MSD layout (dataset.json + images).",
        )
    if resume:
        run_dir = workspace / "runs" / run_id if run_id else latest_run(workspace)
        config = load_config(run_dir / "config.json")
        if "iterations" in overrides:  # extending a run is allowed; everything else is the run's own
            config["iterations"] = overrides["iterations"]
        if "device" in overrides:
            config["device"] = overrides["device"]
        if "time_budget_min" in overrides:  # a new budget for the whole run (its time so far counts)
            config["time_budget_min"] = overrides["time_budget_min"]
    else:
        config = apply_overrides(load_config(config_path), **overrides)
        run_dir = workspace / "runs" / (run_id or new_run_id(config["method"]))
        if (run_dir / "checkpoints" / "last.pt").exists():
            raise InputError(f"Run {run_dir.name} already exists.", "Use --resume to continue it, or another --run-id.")
    # The run folder appears only once the workspace and the configuration passed validation
    # (inside Trainer): a refused run leaves nothing behind. Earlier events wait in the writer.
    trainer = Trainer(workspace, config, run_dir, events, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    events.attach(run_dir / "events.jsonl")
    if trainer.dist.is_main:
        save_json_atomic(trainer.config, run_dir / "config.json")
    inputs = [p for c in trainer.split.labelled for p in (c.image, c.label)]
    inputs += [c.image for c in trainer.split.unlabelled + trainer.split.held_out]
    if trainer.dist.is_main:
        save_json_atomic(build_manifest(trainer.device, inputs), run_dir / "manifest.json")
    if resume:
        trainer.restore()
    events.emit(
        "started",
        run=run_dir.name,
        run_dir=str(run_dir),
        device=device_description(trainer.device),
        method=trainer.config["method"],
        iterations=trainer.total or None,
        continuous=trainer.continuous,
        time_budget_min=trainer.config.get("time_budget_min"),
        init_from=trainer.config.get("init_from"),
        start_iteration=trainer.iteration,
        labelled=len(trainer.split.labelled),
        unlabelled=len(trainer.split.unlabelled),
        held_out=len(trainer.split.held_out),
        patch_size=trainer.config["patch_size"],
    )
    try:
        state = trainer.run()
        trainer.dist.barrier()  # leave the group together, after rank 0's final save and predictions
    finally:
        trainer.dist.close()
    if state == "cancelled":
        events.emit("cancelled", iteration=trainer.iteration, checkpoint=str(run_dir / "checkpoints" / "last.pt"))
    return state
