"""The live annotation loop in the engine: continuous runs, workspace reload, PREDICT, warm start.

Everything is driven deterministically: STOP and PREDICT files are written by an event sink
when a given iteration is reported, and the reload is called directly on a ``Trainer`` after
the workspace was changed (no sleeping, no timing).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TINY_CENTRES, TINY_RADIUS, TINY_SIZE, sphere_mask, write_tiny_workspace, xyz_image
from semisupseg.cli import main
from semisupseg.config import apply_overrides, load_config
from semisupseg.events import EventWriter
from semisupseg.methods import StepContext
from semisupseg.training.trainer import Trainer, train_workspace

TINY = {
    "network_options": {"widths": [4, 8, 16, 32, 64]},
    "patch_size": [32, 32, 16],
    "batch_labelled": 1,
    "batch_unlabelled": 1,
    "log_every": 1,
    "checkpoint_every": 0,
    "device": "cpu",
    "predict_cases": "none",
}


class RecordingSink(EventWriter):
    """Keeps every event and runs ``actions[n](run_dir)`` when progress iteration n is reported."""

    def __init__(self, run_dir: Path, actions=None):
        super().__init__(stream=io.StringIO(), progress_bar=False)
        self.run_dir, self.actions, self.records = run_dir, dict(actions or {}), []

    def emit(self, event, **fields):
        record = super().emit(event, **fields)
        self.records.append(record)
        if event == "progress" and record["iteration"] in self.actions:
            self.actions[record["iteration"]](self.run_dir)
        return record

    def of(self, kind: str) -> list:
        return [r for r in self.records if r["event"] == kind]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def stop(run_dir: Path) -> None:
    (run_dir / "STOP").touch()


def config_file(folder: Path, **extra) -> Path:
    path = folder / "live_config.json"
    path.write_text(json.dumps({**TINY, **extra}))
    return path


def run_training(workspace: Path, run_id: str, actions=None, **config) -> tuple:
    """In-process ``train_workspace``; returns (state, sink)."""
    sink = RecordingSink(workspace / "runs" / run_id, actions)
    try:
        state = train_workspace(workspace, config_file(workspace.parent, **config), {}, run_id, False, sink)
    finally:
        sink.close()
    return state, sink


def make_trainer(workspace: Path, run_id: str, **config) -> Trainer:
    """A ``Trainer`` built as ``train_workspace`` builds it, to drive its methods one by one."""
    full = apply_overrides(load_config(config_file(workspace.parent, **config)))
    run_dir = workspace / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    sink = RecordingSink(run_dir)
    sink.attach(run_dir / "events.jsonl")
    return Trainer(workspace, full, run_dir, sink, resume=False)


def drawn_ids(sampler) -> tuple:
    """(labelled, unlabelled) case ids the sampler draws patches from."""
    if hasattr(sampler, "labelled_case_ids"):
        return sampler.labelled_case_ids, sampler.unlabelled_case_ids
    return [v.id for v in sampler._labelled], [v.id for v in sampler._unlabelled]


def write_label(workspace: Path, case_id: str, mask: np.ndarray) -> Path:
    """Write ``mask`` as ``labels/<case>.nii.gz`` atomically (as the Slicer logic does)."""
    path = workspace / "labels" / f"{case_id}.nii.gz"
    tmp = path.with_name(f".{case_id}.tmp.nii.gz")
    sitk.WriteImage(xyz_image(mask.astype(np.uint8)), str(tmp))
    os.replace(tmp, path)
    return path


def set_case_label(workspace: Path, case_id: str, label: str | None) -> None:
    dataset = json.loads((workspace / "dataset.json").read_text())
    for case in dataset["cases"]:
        if case["id"] == case_id:
            case["label"] = label
    write_atomically(workspace / "dataset.json", json.dumps(dataset, indent=1))


# ---- schedules of a run without an end ------------------------------------------------------
def test_step_context_progress_uses_the_ramp_length_when_the_run_has_no_end():
    assert StepContext(30, 300).progress == pytest.approx(0.1)
    assert StepContext(30, 0, ramp_length=60).progress == pytest.approx(0.5)
    assert StepContext(600, 0, ramp_length=60).progress == 1.0  # holds its end value
    assert StepContext(30, 300, ramp_length=0).progress == pytest.approx(0.1)


def test_continuous_run_stops_cleanly_on_stop_with_a_checkpoint(tiny_workspace, one_thread):
    state, sink = run_training(tiny_workspace, "live", actions={4: stop}, iterations=0)
    assert state == "cancelled"
    run = tiny_workspace / "runs" / "live"
    started = sink.of("started")[0]
    assert started["continuous"] is True and started["iterations"] is None
    progress = sink.of("progress")
    assert [p["iteration"] for p in progress] == [1, 2, 3, 4]
    assert all(p["total"] is None and p["eta_s"] is None for p in progress)
    assert all(p["lr"] == pytest.approx(0.05) for p in progress)  # constant schedule at the CPU default rate
    assert sink.records[-2]["event"] == "checkpoint" and sink.records[-1]["event"] == "cancelled"
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["iteration"] == 4 and checkpoint["classes"] == ["background", "sphere"]
    config = json.loads((run / "config.json").read_text())
    assert config["iterations"] == 0 and config["ramp_iterations"] == 300  # the CPU default run length
    # The stopped run resumes as a continuous run from its checkpoint.
    (run / "STOP").unlink()
    sink = RecordingSink(run, {6: stop})
    assert train_workspace(tiny_workspace, None, {}, "live", True, sink) == "cancelled"
    assert [p["iteration"] for p in sink.of("progress")] == [5, 6]


def test_continuous_run_ramps_over_ramp_iterations(tiny_workspace, one_thread):
    """A continuous run with ramp_iterations R takes the steps of a finite run of R iterations
    (the same losses); another R changes the mean teacher's consistency ramp and so its losses."""
    losses = {}
    for name, config in {"finite": {"iterations": 40}, "continuous": {"iterations": 0, "ramp_iterations": 40},
                         "short_ramp": {"iterations": 0, "ramp_iterations": 2}}.items():
        _, sink = run_training(tiny_workspace, name, actions={3: stop}, method="mean_teacher", **config)
        losses[name] = [p["losses"]["loss"] for p in sink.of("progress")]
    assert len(losses["finite"]) == 3
    assert losses["continuous"] == pytest.approx(losses["finite"], rel=1e-6)
    assert losses["short_ramp"][1:] != pytest.approx(losses["finite"][1:], rel=1e-3)


def test_continuous_run_with_a_decaying_schedule_is_an_input_error(tiny_workspace, capsys):
    config = config_file(tiny_workspace.parent, optimizer={"schedule": "poly"})
    rc = main(["train", "--workspace", str(tiny_workspace), "--config", str(config), "--continuous"])
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 2 and "poly" in error["message"] and "constant" in error["hint"]
    rc = main(["train", "--workspace", str(tiny_workspace), "--continuous", "--iterations", "5"])
    assert rc == 2


# ---- predict on request -------------------------------------------------------------------------
def test_predict_request_is_served_at_the_next_boundary_and_removed(tiny_workspace, one_thread):
    def request(run_dir):
        write_atomically(run_dir / "PREDICT", json.dumps(["case2"]))

    state, sink = run_training(tiny_workspace, "asked", actions={2: request, 3: stop}, iterations=0)
    assert state == "cancelled"
    run = tiny_workspace / "runs" / "asked"
    predictions = sink.of("prediction")
    assert [(p["case"], p["round"], p["iteration"]) for p in predictions] == [("case2", "request", 2)]
    assert Path(predictions[0]["segmentation"]).is_file() and Path(predictions[0]["uncertainty"]).is_file()
    kinds = [r["event"] for r in sink.records]
    assert kinds.index("prediction") < max(i for i, k in enumerate(kinds) if k == "progress")  # served mid-run
    assert not (run / "PREDICT").exists()
    assert not list(run.glob(".PREDICT*"))


def test_bad_predict_requests_warn_are_removed_and_the_run_goes_on(tiny_workspace, one_thread):
    trainer = make_trainer(tiny_workspace, "bad", iterations=0, predict_cases="all")
    trainer.predict("all cases")  # regions.json for every case
    request = trainer.run_dir / "PREDICT"
    for text, words in (("not json [", "JSON list"), ('{"cases": ["case0"]}', "JSON list"), ("[]", "JSON list"),
                        ('["nope"]', "unknown case ids ['nope']")):
        write_atomically(request, text)
        assert trainer.serve_predict_request() is False
        assert words in trainer.events.of("warning")[-1]["message"]
        assert not request.exists()
    # Known and unknown ids together: the known ones are predicted, the others reported.
    write_atomically(request, json.dumps(["case0", "ghost"]))
    assert trainer.serve_predict_request() is True
    assert trainer.events.of("prediction")[-1]["case"] == "case0"
    assert "ghost" in trainer.events.of("warning")[-1]["message"]
    # The request's round keeps the other cases' regions and scores.
    regions = json.loads((trainer.run_dir / "regions.json").read_text())
    assert set(regions["cases"]) == {"case0", "case1", "case2"}
    assert set(regions["meta"]["scores"]) == {"case0", "case1", "case2"}
    assert regions["meta"]["cases_of_this_round"] == ["case0"]
    trainer.step()  # and training goes on
    assert trainer.iteration == 1


# ---- the workspace changes while the run trains --------------------------------------------------
def test_a_label_added_while_training_changes_what_the_sampler_draws(tiny_workspace, one_thread):
    trainer = make_trainer(tiny_workspace, "grow", iterations=0, reload_every=1)
    assert trainer.step() is not None
    assert drawn_ids(trainer.sampler) == (["case0", "case1"], ["case2"])
    assert trainer.reload_workspace() is None  # nothing changed yet

    # The annotator labels case2 (label file, then dataset.json) and adds a new case3.
    mask = sphere_mask(TINY_SIZE, TINY_CENTRES["case2"], TINY_RADIUS)
    write_label(tiny_workspace, "case2", mask)
    set_case_label(tiny_workspace, "case2", "labels/case2.nii.gz")
    shutil.copy(tiny_workspace / "images" / "case0.nii.gz", tiny_workspace / "images" / "case3.nii.gz")
    dataset = json.loads((tiny_workspace / "dataset.json").read_text())
    dataset["cases"].append({"id": "case3", "image": "images/case3.nii.gz", "label": None})
    write_atomically(tiny_workspace / "dataset.json", json.dumps(dataset))

    change = trainer.reload_workspace()
    assert change.added == ["case3"] and change.relabelled == ["case2"] and change.removed == []
    assert drawn_ids(trainer.sampler) == (["case0", "case1", "case2"], ["case3"])
    assert np.array_equal(trainer.prepared["case2"].label, mask.astype(np.uint8))
    event = trainer.events.of("workspace_reloaded")[-1]
    assert event["added"] == ["case3"] and event["relabelled"] == ["case2"] and event["labelled"] == 3
    assert len(event["label_sha256"]["case2"]) == 64
    assert trainer.step() is not None and trainer.iteration == 2

    # A case removed from dataset.json leaves the sampler and the predicted cases.
    dataset["cases"] = [c for c in dataset["cases"] if c["id"] != "case3"]
    write_atomically(tiny_workspace / "dataset.json", json.dumps(dataset))
    assert trainer.reload_workspace().removed == ["case3"]
    assert drawn_ids(trainer.sampler)[1] == [] and "case3" not in trainer.prepared


def test_looking_at_an_unchanged_workspace_leaves_training_exactly_as_it_was(tiny_workspace, one_thread):
    """A reload at every iteration that finds nothing changes nothing: the same losses bit for bit."""
    losses = {}
    for every in (0, 1):
        _, sink = run_training(tiny_workspace, f"every{every}", iterations=5, reload_every=every)
        assert not sink.of("workspace_reloaded") and not sink.of("warning")
        losses[every] = [p["losses"]["loss"] for p in sink.of("progress")]
    assert len(losses[0]) == 5 and losses[1] == losses[0]


def test_a_changed_label_file_is_noticed_without_dataset_json_changing(tiny_workspace, one_thread):
    trainer = make_trainer(tiny_workspace, "fix", iterations=0)
    dataset_stat = os.stat(tiny_workspace / "dataset.json")
    hashed = trainer.digests.hashed
    assert trainer.reload_workspace() is None
    assert trainer.digests.hashed == hashed  # nothing changed: no file was read

    # The same voxels written again (a new file, new mtime): read once, not a change.
    original = sphere_mask(TINY_SIZE, TINY_CENTRES["case0"], TINY_RADIUS)
    write_label(tiny_workspace, "case0", original)
    assert trainer.reload_workspace() is None and trainer.digests.hashed == hashed + 1

    # A corrected label under the same name: noticed from its content.
    corrected = sphere_mask(TINY_SIZE, TINY_CENTRES["case0"], TINY_RADIUS - 2)
    write_label(tiny_workspace, "case0", corrected)
    assert os.stat(tiny_workspace / "dataset.json").st_mtime_ns == dataset_stat.st_mtime_ns
    change = trainer.reload_workspace()
    assert change.relabelled == ["case0"] and not change.added and not change.removed
    assert trainer.prepared["case0"].label.sum() == corrected.sum() < original.sum()
    assert trainer.events.of("workspace_reloaded")[-1]["relabelled"] == ["case0"]


def test_an_unusable_changed_label_is_reported_once_and_the_case_keeps_its_old_label(tiny_workspace, one_thread):
    trainer = make_trainer(tiny_workspace, "broken", iterations=0)
    before = trainer.prepared["case1"].label.copy()
    label = sitk.ReadImage(str(tiny_workspace / "labels" / "case1.nii.gz"))
    label.SetSpacing([2 * s for s in label.GetSpacing()])  # no longer on its image's grid
    sitk.WriteImage(label, str(tiny_workspace / "labels" / "case1.nii.gz"))
    assert trainer.reload_workspace() is None
    warnings = trainer.events.of("warning")
    assert len(warnings) == 1 and warnings[0]["case"] == "case1" and "case1" in warnings[0]["message"]
    assert np.array_equal(trainer.prepared["case1"].label, before)
    assert drawn_ids(trainer.sampler)[0] == ["case0", "case1"]
    assert trainer.reload_workspace() is None and len(trainer.events.of("warning")) == 1  # once
    assert trainer.step() is not None


# ---- warm start -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A 3-iteration DyCON run on its own tiny workspace, with predictions of every case."""
    workspace = write_tiny_workspace(tmp_path_factory.mktemp("source") / "workspace")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state, _ = run_training(workspace, "src", iterations=3, predict_cases="all")
    finally:
        torch.set_num_threads(previous)
    assert state == "finished"
    return workspace / "runs" / "src"


def read_map(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_init_from_reproduces_the_source_runs_predictions_before_its_first_step(source_run, one_thread):
    workspace = source_run.parent.parent
    warm = make_trainer(workspace, "warm", iterations=3, init_from="src", predict_cases="all")
    cold = make_trainer(workspace, "cold", iterations=3, predict_cases="all", seed=7)
    assert warm.iteration == 0 and warm.config["init_from"] == str(source_run)
    assert warm.ema_offset == 3  # the teacher continues the source's average
    warm.predict("iteration 0")
    cold.predict("iteration 0")
    for case in ("case0", "case1", "case2"):
        source_uncertainty = read_map(source_run / "uncertainty" / f"{case}.nii.gz")
        np.testing.assert_allclose(read_map(warm.run_dir / "uncertainty" / f"{case}.nii.gz"), source_uncertainty, atol=1e-6)
        assert np.array_equal(read_map(warm.run_dir / "predictions" / f"{case}.nii.gz"),
                              read_map(source_run / "predictions" / f"{case}.nii.gz"))
        # Not a coincidence: a run from random weights predicts something else.
        assert np.abs(read_map(cold.run_dir / "uncertainty" / f"{case}.nii.gz") - source_uncertainty).max() > 1e-3
    # The optimiser starts fresh, and the warm run trains on.
    assert not warm.optimizer.state
    assert warm.step() is not None and warm.iteration == 1


def test_init_from_through_the_command_line_records_the_source(source_run, capsys, one_thread):
    workspace = source_run.parent.parent
    config = config_file(workspace.parent)
    rc = main(["train", "--workspace", str(workspace), "--config", str(config), "--iterations", "1",
               "--run-id", "cli-warm", "--init-from", str(source_run)])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert rc == 0 and events[0]["init_from"] == str(source_run)
    saved = json.loads((workspace / "runs" / "cli-warm" / "config.json").read_text())
    assert saved["init_from"] == str(source_run)


@pytest.mark.parametrize("change, words", [
    ("classes", "classes"),
    ("network", "network_options"),
    ("missing", "no run"),
])
def test_init_from_an_incompatible_run_exits_2_with_a_clear_message(source_run, tmp_path, capsys, change, words):
    workspace = write_tiny_workspace(tmp_path / "other")
    extra, source = {}, str(source_run)
    if change == "classes":
        dataset = json.loads((workspace / "dataset.json").read_text())
        dataset["labels"] = {"0": "background", "1": "left atrium"}
        (workspace / "dataset.json").write_text(json.dumps(dataset))
    elif change == "network":
        extra = {"network_options": {"widths": [8, 16, 32, 64, 128]}}
    else:
        source = "no-such-run"
    config = config_file(tmp_path, **extra)
    rc = main(["train", "--workspace", str(workspace), "--config", str(config), "--iterations", "1", "--init-from", source])
    out = capsys.readouterr()
    error = json.loads(out.out.strip().splitlines()[-1])
    assert rc == 2 and error["event"] == "error" and "Traceback" not in out.err
    assert words in error["message"] and error["hint"]
    if change == "classes":
        assert "['background', 'sphere']" in error["message"] and "left atrium" in error["message"]
