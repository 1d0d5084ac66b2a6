"""Several processes (``torchrun --nproc-per-node 2 -m semisupseg train``, gloo on the CPU) train one model.

- A 2-rank run with per-rank batch B against a 1-process run with batch 2B made of the same
  patches (rank r's sampler stream, concatenated):
  * exactly (relative 1e-4, float summation order) against the 1-process run whose loss is the
    mean of the two halves' losses: that is what DDP's gradient averaging computes;
  * within a stated tolerance against the plain 1-process batch-2B loss: cross-entropy (a mean
    over equal voxel counts) is the same at the first step (1e-4), the soft Dice pools its sums
    over the batch, so the halves' mean differs from it; over the first 3 steps the total loss
    stays within 1e-3 relative (measured on the tiny workspace: at most 2.1e-5).
- A killed 2-rank run (SIGTERM to torchrun) resumes from its checkpoint, and its losses after
  the checkpoint equal those of an uninterrupted 2-rank run (every rank's random stream is in
  the checkpoint).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from semisupseg.config import apply_overrides, load_config
from semisupseg.events import EventWriter
from semisupseg.training.distributed import Distributed
from semisupseg.training.trainer import Trainer

pytestmark = pytest.mark.slow
REPOSITORY = Path(__file__).resolve().parents[2]
# By path: "from conftest import" would find Testing/slicer_logic's conftest when both folders are collected.
_spec = importlib.util.spec_from_file_location("engine_conftest", Path(__file__).with_name("conftest.py"))
_engine_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_engine_conftest)
write_tiny_workspace = _engine_conftest.write_tiny_workspace
ITERATIONS = 40
CONFIG = {"method": "supervised", "iterations": ITERATIONS, "device": "cpu", "batch_labelled": 1,
          "network_options": {"widths": [4, 8, 16, 32, 64], "dropout": 0.0}, "patch_size": [32, 32, 16],
          "log_every": 1, "predict_cases": "none", "checkpoint_every": 1000, "reload_every": 0}
COMPARED_STEPS = 3


def torchrun(workspace: Path, config: Path, run_id: str, *extra: str) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "SemiSupSeg"), os.environ.get("PYTHONPATH", "")])}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "semisupseg", "train", "--workspace", str(workspace), "--run-id", run_id, *extra]
    if "--resume" not in extra:
        command += ["--config", str(config)]
    log = open(workspace / f"torchrun-{run_id}.log", "ab")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True)


def run_events(run_dir: Path) -> list:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def progress_losses(events) -> dict:
    return {e["iteration"]: e["losses"] for e in events if e["event"] == "progress"}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted 2-rank run of ITERATIONS iterations."""
    workspace = write_tiny_workspace(tmp_path_factory.mktemp("ddp") / "workspace")
    config = workspace / "config.json"
    config.write_text(json.dumps(CONFIG))
    process = torchrun(workspace, config, "straight")
    returncode = process.wait(600)
    log = (workspace / "torchrun-straight.log").read_text(errors="replace")
    assert returncode == 0, log[-3000:]
    return workspace, config, run_events(workspace / "runs" / "straight"), log


def one_process_trainer(workspace: Path, run_dir: Path) -> Trainer:
    """A single-process trainer with batch 2B whose batch is rank 0's B patches then rank 1's."""
    config = apply_overrides(load_config(None), **{**CONFIG, "batch_labelled": 2})
    trainer = Trainer(workspace, config, run_dir, EventWriter(stream=io.StringIO(), progress_bar=False), resume=False)
    samplers = []
    for rank in (0, 1):
        trainer.dist = Distributed(rank=rank, world_size=1)  # world 1: only the rank's seed changes
        samplers.append(trainer._build_sampler())
    trainer.dist = Distributed()

    class RankStreams:
        generator = samplers[0].generator

        def sample(self, n_labelled, n_unlabelled):
            halves = [s.sample(n_labelled // 2, n_unlabelled // 2) for s in samplers]
            return dataclasses.replace(halves[0], **{f.name: torch.cat([getattr(h, f.name) for h in halves])
                                                     for f in dataclasses.fields(halves[0])})

    trainer.sampler = RankStreams()
    return trainer


def halves_mean(method):
    """The method's step with the loss (and parts) averaged over the batch's two halves, as DDP does."""
    step = method.training_step

    def averaged(batch, ctx):
        outs = []
        for half in (0, 1):
            fields = {}
            for f in dataclasses.fields(batch):
                value = getattr(batch, f.name)
                n = value.shape[0] // 2
                fields[f.name] = value[half * n:(half + 1) * n]
            outs.append(step(dataclasses.replace(batch, **fields), ctx))
        return dataclasses.replace(outs[0], loss=(outs[0].loss + outs[1].loss) / 2,
                                   parts={k: (outs[0].parts[k] + outs[1].parts[k]) / 2 for k in outs[0].parts})

    method.training_step = averaged


def first_losses(trainer: Trainer, steps: int) -> dict:
    torch.set_num_threads(1)
    losses = {}
    for _ in range(steps):
        parts = trainer.step()
        losses[trainer.iteration] = {k: float(v) for k, v in parts.items()}
    return losses


def test_two_ranks_match_one_process_with_the_doubled_batch(straight_run, tmp_path):
    workspace, _, events, log = straight_run
    ddp = progress_losses(events)
    assert sorted(ddp) == list(range(1, ITERATIONS + 1))
    started = next(e for e in events if e["event"] == "started")
    assert started["iterations"] == ITERATIONS
    assert log.count('"event": "started"') == 1  # only rank 0 reports
    checkpoint = torch.load(workspace / "runs" / "straight" / "checkpoints" / "last.pt", weights_only=True)
    assert len(checkpoint["rank_rng"]) == 2
    assert not torch.equal(checkpoint["rank_rng"][0]["sampler"], checkpoint["rank_rng"][1]["sampler"])

    exact = one_process_trainer(workspace, tmp_path / "exact")
    halves_mean(exact.method)
    for iteration, parts in first_losses(exact, COMPARED_STEPS).items():
        for name, value in parts.items():
            assert ddp[iteration][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (iteration, name)

    plain = first_losses(one_process_trainer(workspace, tmp_path / "plain"), COMPARED_STEPS)
    assert ddp[1]["ce"] == pytest.approx(plain[1]["ce"], rel=1e-4)
    for iteration, parts in plain.items():
        assert ddp[iteration]["loss"] == pytest.approx(parts["loss"], rel=1e-3), iteration


def test_a_killed_two_rank_run_resumes_with_the_same_losses(straight_run):
    workspace, config, straight, _ = straight_run
    killed_config = workspace / "config-killed.json"
    killed_config.write_text(json.dumps({**CONFIG, "checkpoint_every": 1}))
    run_dir = workspace / "runs" / "killed"
    process = torchrun(workspace, killed_config, "killed")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and max(progress_losses(run_events(run_dir)) or [0]) < 3:
        assert process.poll() is None, (workspace / "torchrun-killed.log").read_text()[-3000:]
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(300)
    first_part = run_events(run_dir)
    stopped_at = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["iteration"]
    assert 3 <= stopped_at < ITERATIONS
    assert not any(e["event"] == "finished" for e in first_part)

    process = torchrun(workspace, killed_config, "killed", "--resume")
    assert process.wait(600) == 0, (workspace / "torchrun-killed.log").read_text()[-3000:]
    resumed = run_events(run_dir)[len(first_part):]
    assert next(e for e in resumed if e["event"] == "started")["start_iteration"] == stopped_at
    assert resumed[-1]["event"] == "finished" and resumed[-1]["resumed_at"] == stopped_at
    after = progress_losses(resumed)
    reference = progress_losses(straight)
    assert sorted(after) == list(range(stopped_at + 1, ITERATIONS + 1))
    for iteration in after:
        for name, value in reference[iteration].items():
            assert after[iteration][name] == pytest.approx(value, rel=1e-5, abs=1e-7), (iteration, name)


def test_every_rank_holds_the_same_student_and_teacher(straight_run):
    """Mean teacher on 2 ranks (labelled and unlabelled streams, EMA teacher): at every checkpoint
    the ranks' weights, teacher included, have the same SHA-256."""
    workspace = straight_run[0]
    config = workspace / "config-teacher.json"
    config.write_text(json.dumps({**CONFIG, "method": "mean_teacher", "iterations": 4, "batch_unlabelled": 1,
                                  "checkpoint_every": 2}))
    process = torchrun(workspace, config, "teacher")
    assert process.wait(600) == 0, (workspace / "torchrun-teacher.log").read_text()[-3000:]
    checkpoint = torch.load(workspace / "runs" / "teacher" / "checkpoints" / "last.pt", weights_only=True)
    digests = [entry["weights_sha256"] for entry in checkpoint["rank_rng"]]
    assert len(digests) == 2 and digests[0] == digests[1]
    teacher = {k: v for k, v in checkpoint["model"].items() if "teacher" in k}
    student = {k.replace("teacher", "student"): v for k, v in teacher.items()}
    assert teacher and all(k in checkpoint["model"] for k in student)
    assert any(not torch.equal(checkpoint["model"][k], v) for k, v in student.items())  # a real EMA, not a copy
    assert "WARNING the ranks' weights differ" not in (workspace / "torchrun-teacher.log").read_text()
