"""End to end through the CLI: events, outputs and their geometry, resume, cancel, bad inputs.

Uses ``tiny_workspace`` (conftest.py): rotated direction, anisotropic spacing, non-zero origin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from semisupseg.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "network_options": {"widths": [4, 8, 16, 32, 64]},
    "patch_size": [32, 32, 16],
    "batch_labelled": 2,
    "batch_unlabelled": 2,
    "log_every": 1,
    "checkpoint_every": 0,
    "device": "cpu",
}


def write_config(folder: Path, **extra) -> Path:
    path = folder / "tiny_config.json"
    path.write_text(json.dumps({**TINY, **extra}))
    return path


def read_events(capsys) -> list:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def train(workspace: Path, capsys, *args: str, **config) -> tuple:
    cfg = write_config(workspace.parent, **config)
    rc = main(["train", "--workspace", str(workspace), "--config", str(cfg), *args])
    return rc, read_events(capsys)


def test_train_writes_events_and_outputs_on_the_input_grid(tiny_workspace, capsys):
    rc, events = train(tiny_workspace, capsys, "--iterations", "3", "--method", "dycon", "--run-id", "r1")
    assert rc == 0
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["iteration"] for e in progress] == [1, 2, 3]
    assert {"sup", "uncl", "fecl"} <= set(progress[-1]["losses"])
    assert all(np.isfinite(v) for v in progress[-1]["losses"].values())

    run = tiny_workspace / "runs" / "r1"
    dataset = json.loads((tiny_workspace / "dataset.json").read_text())
    predictions = {e["case"]: e for e in events if e["event"] == "prediction"}
    assert set(predictions) == {c["id"] for c in dataset["cases"]}
    for case in dataset["cases"]:
        image = sitk.ReadImage(str(tiny_workspace / case["image"]))
        seg = sitk.ReadImage(predictions[case["id"]]["segmentation"])
        unc = sitk.ReadImage(predictions[case["id"]]["uncertainty"])
        for out in (seg, unc):
            assert out.GetSize() == image.GetSize()
            assert np.allclose(out.GetSpacing(), image.GetSpacing())
            assert np.allclose(out.GetOrigin(), image.GetOrigin())
            assert np.allclose(out.GetDirection(), image.GetDirection())
        assert seg.GetPixelID() == sitk.sitkUInt8
        assert unc.GetPixelID() == sitk.sitkFloat32
        values = sitk.GetArrayFromImage(unc)
        assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.0
    regions = json.loads((run / "regions.json").read_text())
    assert set(regions["cases"]) == set(predictions)

    config = json.loads((run / "config.json").read_text())
    assert config["iterations"] == 3 and config["method"] == "dycon" and config["patch_size"] == [32, 32, 16]
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["inputs"]) >= len(dataset["cases"])
    assert all(len(digest) == 64 for digest in manifest["inputs"].values())
    assert manifest["libraries"]["torch"] == torch.__version__
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 3 and state["method"] == "dycon"
    assert (run / "events.jsonl").read_text().count('"prediction"') == len(predictions)


def test_outputs_keep_geometry_when_training_resamples(tiny_workspace, capsys):
    rc, events = train(tiny_workspace, capsys, "--iterations", "1", "--method", "supervised",
                       target_spacing=[1.3, 1.3, 2.1])
    assert rc == 0
    for event in (e for e in events if e["event"] == "prediction"):
        image = sitk.ReadImage(str(next(tiny_workspace.glob(f"images/{event['case']}.*"))))
        seg = sitk.ReadImage(event["segmentation"])
        assert seg.GetSize() == image.GetSize()
        assert np.allclose(seg.GetDirection(), image.GetDirection())
        assert np.allclose(seg.GetOrigin(), image.GetOrigin())


class StopAfter:
    """An event sink that writes the run's STOP file once iteration ``n`` has been reported."""

    def __init__(self, run_dir: Path, n: int):
        self.run_dir, self.n = run_dir, n

    def __call__(self, event: dict) -> None:
        if event.get("event") == "progress" and event["iteration"] == self.n:
            (self.run_dir / "STOP").touch()


def train_with_stop(workspace: Path, run_id: str, stop_at: int, iterations: int, method: str = "dycon"):
    """In-process training whose STOP file appears after ``stop_at`` iterations."""
    from semisupseg.events import EventWriter
    from semisupseg.training.trainer import train_workspace

    class Sink(EventWriter):
        def emit(self, event, **fields):
            record = super().emit(event, **fields)
            stopper(record)
            return record

    import io

    stopper = StopAfter(workspace / "runs" / run_id, stop_at)
    sink = Sink(stream=io.StringIO(), progress_bar=False)
    cfg = write_config(workspace.parent, predict_cases="none")
    state = train_workspace(workspace, cfg, {"iterations": iterations, "method": method}, run_id, False, sink)
    sink.close()
    return state


def losses_by_iteration(run_dir: Path) -> dict:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return {e["iteration"]: e["losses"]["loss"] for e in map(json.loads, lines) if e["event"] == "progress"}


def test_cancel_leaves_a_usable_checkpoint_and_resume_continues_the_same_schedule(tiny_workspace, capsys):
    from semisupseg.events import EventWriter
    from semisupseg.training.trainer import train_workspace
    import io

    cfg = write_config(tiny_workspace.parent, predict_cases="none")
    # Reference: 6 uninterrupted iterations.
    sink = EventWriter(stream=io.StringIO(), progress_bar=False)
    assert train_workspace(tiny_workspace, cfg, {"iterations": 6}, "straight", False, sink) == "finished"
    sink.close()
    # Same run cancelled after 3 iterations, then resumed.
    assert train_with_stop(tiny_workspace, "interrupted", stop_at=3, iterations=6) == "cancelled"
    run = tiny_workspace / "runs" / "interrupted"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 3
    first_part_seconds = state["train_seconds"]
    assert first_part_seconds > 0
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "cancelled"

    # The cancelled checkpoint is usable: predict from it.
    rc = main(["predict", "--run", str(run), "--device", "cpu"])
    assert rc == 0
    assert len(list((run / "predictions").glob("*.nii.gz"))) == 3
    capsys.readouterr()

    (run / "STOP").unlink()
    rc = main(["train", "--workspace", str(tiny_workspace), "--run-id", "interrupted", "--resume"])
    assert rc == 0
    straight = losses_by_iteration(tiny_workspace / "runs" / "straight")
    resumed = losses_by_iteration(run)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for it in range(1, 7):  # the same schedule, RNG streams and weights: the same losses
        assert resumed[it] == pytest.approx(straight[it], rel=1e-5), it
    # The run's duration counts both parts: the first part's time comes from the checkpoint.
    finished = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()][-1]
    assert finished["event"] == "finished" and finished["resumed_at"] == 3
    assert finished["total_seconds"] == pytest.approx(first_part_seconds + finished["seconds"], abs=0.02)
    final_state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert final_state["train_seconds"] > first_part_seconds
    a = torch.load(tiny_workspace / "runs" / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def corrupt(workspace: Path, kind: str) -> str:
    """Break the tiny workspace in one way; returns a word the error message must contain."""
    dataset = json.loads((workspace / "dataset.json").read_text())
    labelled = next(c for c in dataset["cases"] if c["label"])
    label_path = workspace / labelled["label"]
    image_path = workspace / labelled["image"]
    if kind == "missing_image":
        image_path.unlink()
    elif kind == "label_grid":
        label = sitk.ReadImage(str(label_path))
        label.SetSpacing([s * 2 for s in label.GetSpacing()])
        sitk.WriteImage(label, str(label_path))
    elif kind == "undeclared_label":
        label = sitk.ReadImage(str(label_path))
        arr = sitk.GetArrayFromImage(label)
        arr[0, 0, 0] = 7
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(label)
        sitk.WriteImage(out, str(label_path))
    elif kind == "no_labelled":
        for case in dataset["cases"]:
            case["label"] = None
        (workspace / "dataset.json").write_text(json.dumps(dataset))
        return "label"
    elif kind in ("two_d", "vector", "nan"):
        image = sitk.ReadImage(str(image_path))
        arr = sitk.GetArrayFromImage(image).astype(np.float32)
        if kind == "two_d":
            out = sitk.GetImageFromArray(arr[0])
        elif kind == "vector":
            out = sitk.GetImageFromArray(np.stack([arr, arr], -1), isVector=True)
            out.CopyInformation(image)
        else:
            # NaN survives in NRRD (ITK's NIfTI reader maps non-finite voxels to 0 on reading).
            arr[1, 2, 3] = np.nan
            out = sitk.GetImageFromArray(arr)
            out.CopyInformation(image)
            image_path = image_path.with_name(labelled["id"] + ".nrrd")
            labelled["image"] = str(image_path.relative_to(workspace))
            (workspace / "dataset.json").write_text(json.dumps(dataset))
        sitk.WriteImage(out, str(image_path))
    return labelled["id"]


@pytest.mark.parametrize(
    "kind", ["missing_image", "label_grid", "undeclared_label", "no_labelled", "two_d", "vector", "nan"]
)
def test_bad_input_exits_2_with_one_message(tiny_workspace, capsys, kind):
    must_mention = corrupt(tiny_workspace, kind)
    rc, events = train(tiny_workspace, capsys, "--iterations", "1")
    assert rc == 2
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1
    assert must_mention.lower() in errors[0]["message"].lower()
    assert errors[0]["hint"]
    assert not (tiny_workspace / "runs").exists() or not list((tiny_workspace / "runs").glob("*/checkpoints"))


def test_worker_process_exit_code_and_no_traceback(tiny_workspace):
    corrupt(tiny_workspace, "label_grid")
    cfg = write_config(tiny_workspace.parent)
    proc = subprocess.run(
        [sys.executable, "-m", "semisupseg", "train", "--workspace", str(tiny_workspace), "--config", str(cfg)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["event"] == "error" and "spacing" in last["message"].lower()


def test_unknown_config_key_and_method_are_input_errors(tiny_workspace, capsys):
    rc, events = train(tiny_workspace, capsys, "--iterations", "1", learning_rate=0.1)
    assert rc == 2 and "learning_rate" in events[-1]["message"]
    rc, events = train(tiny_workspace, capsys, "--method", "nonsense")
    assert rc == 2 and "dycon" in events[-1]["hint"]


def test_methods_lists_the_core_methods(capsys):
    assert main(["methods", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {"supervised", "mean_teacher", "dycon"} <= set(listing)
    assert listing["dycon"]["options"]["tau"] == 0.6


def test_predict_with_mc_dropout_writes_mutual_information_on_the_image_grid(tiny_workspace, capsys):
    rc, _ = train(tiny_workspace, capsys, "--iterations", "1", "--run-id", "mc", predict_cases="none")
    assert rc == 0
    run = tiny_workspace / "runs" / "mc"
    rc = main(["predict", "--run", str(run), "--cases", "case0", "--mc-dropout", "2", "--device", "cpu"])
    assert rc == 0
    events = read_events(capsys)
    prediction = next(e for e in events if e["event"] == "prediction")
    mi = sitk.ReadImage(prediction["mutual_information"])
    image = sitk.ReadImage(str(next(tiny_workspace.glob("images/case0.*"))))
    assert mi.GetSize() == image.GetSize() and np.allclose(mi.GetDirection(), image.GetDirection())
    values = sitk.GetArrayFromImage(mi)
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.0  # dropout passes disagree
    regions = json.loads((run / "regions.json").read_text())
    assert regions["meta"]["case_order"] == ["case0"]
    rc = main(["predict", "--run", str(run), "--cases", "nope"])
    assert rc == 2
    # --tta flips overrides the run's config for this prediction only
    capsys.readouterr()
    rc = main(["predict", "--run", str(run), "--cases", "case0", "--tta", "flips", "--device", "cpu"])
    assert rc == 0
    assert [e["case"] for e in read_events(capsys) if e["event"] == "prediction"] == ["case0"]
    assert json.loads((run / "config.json").read_text())["tta"] == "off"


def test_out_of_memory_retries_smaller_without_losing_the_schedule(tiny_workspace, monkeypatch):
    from semisupseg.events import EventWriter
    from semisupseg.training import trainer as trainer_module
    import io

    real_step = trainer_module.Trainer.step
    failures = {"left": 3}

    def flaky_step(self):
        if failures["left"]:
            failures["left"] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "step", flaky_step)
    sink = EventWriter(stream=io.StringIO(), progress_bar=False)
    cfg = write_config(tiny_workspace.parent, predict_cases="none", patch_size=[48, 48, 32])
    state = trainer_module.train_workspace(tiny_workspace, cfg, {"iterations": 2}, "oom", False, sink)
    sink.close()
    assert state == "finished"
    run = tiny_workspace / "runs" / "oom"
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    notices = [e for e in events if e["event"] == "notice"]
    # unlabelled batch 2 -> 1, then labelled 2 -> 1, then the largest patch axis shrinks by 16
    assert [(n["batch_labelled"], n["batch_unlabelled"], n["patch_size"]) for n in notices] == [
        (2, 1, [48, 48, 32]), (1, 1, [48, 48, 32]), (1, 1, [32, 48, 32])]
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [1, 2]
    saved = json.loads((run / "config.json").read_text())
    assert saved["batch_labelled"] == 1 and saved["patch_size"] == [32, 48, 32]
