"""Train again and the live loop on real MRML: "Train again" warm-starts from the previous run
(--init-from) unless the method, network or classes changed; a real worker takes in a region accepted
while it trains (it reloads the workspace with the partial label), and the next run starts from its
weights and trains on the partial case. Accept region itself: test_accept_region.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")

from SemiSupSegLib import SemiSupSegLogic  # noqa: E402
from SemiSupSegLib.training_job import workerCommand  # noqa: E402
from slicer_test_scenes import FAST_TRAINING, blob, runToEnd, tinyTrainingCases, writeArray  # noqa: E402


def test_train_again_warm_starts_from_the_previous_run(tmp_path, mrml):
    command = workerCommand("python", tmp_path, tmp_path / "c.json", "run-b", initFrom=tmp_path / "runs" / "run-a")
    assert command[-2:] == ["--init-from", str(tmp_path / "runs" / "run-a")]
    assert "--init-from" not in workerCommand("python", tmp_path, tmp_path / "c.json", "run-b")
    with pytest.raises(ValueError, match="resumed run"):
        workerCommand("python", tmp_path, tmp_path / "c.json", "run-b", resume=True, initFrom=tmp_path)

    logic = SemiSupSegLogic()
    logic.writeWorkspace(tmp_path, tinyTrainingCases(mrml.scene))
    previous = tmp_path / "runs" / "run-a"
    assert logic.warmStartRun(tmp_path, "run-a", {"method": "dycon"})[0] is None  # no checkpoint yet
    (previous / "checkpoints").mkdir(parents=True)
    (previous / "checkpoints" / "last.pt").write_bytes(b"weights")
    (previous / "config.json").write_text(json.dumps({"method": "dycon"}))
    (previous / "slicer-run.json").write_text(json.dumps({"classNames": ["background", "organ"]}))
    assert logic.warmStartRun(tmp_path, "run-a", {"method": "dycon"}) == (previous, "")
    assert logic.warmStartRun(tmp_path, "run-a", {"method": "dycon"}, fromScratch=True)[0] is None
    assert logic.warmStartRun(tmp_path, None, {"method": "dycon"})[0] is None
    source, reason = logic.warmStartRun(tmp_path, "run-a", {"method": "mean_teacher"})
    assert source is None and "trained dycon, not mean_teacher" in reason
    source, reason = logic.warmStartRun(tmp_path, "run-a", {"method": "dycon", "network": "unet2d"})
    assert source is None and "unet3d network, not unet2d" in reason  # config.json without network: unet3d
    (previous / "slicer-run.json").write_text(json.dumps({"classNames": ["background", "liver"]}))
    source, reason = logic.warmStartRun(tmp_path, "run-a", {"method": "dycon"})
    assert source is None and "['liver']" in reason

    # startTraining puts the run on the command line (a stand-in "python" that exits at once).
    job = logic.startTraining(tmp_path, {"method": "dycon"}, pythonExecutable="/bin/true", initFrom=previous)
    job.wait(timeout=30)
    assert job.command[job.command.index("--init-from") + 1] == str(previous)
    note = json.loads((job.runDir / "slicer-run.json").read_text())
    assert note["classNames"] == ["background", "organ"] and note["initFrom"] == str(previous)


def _engineHasTheLiveLoop() -> bool:
    """The engine side of issue 12, built in parallel: partial labels (dataset.json's ignore_label read by
    the dataset loader), the workspace reload and --init-from."""
    engine = Path(__file__).resolve().parents[2] / "SemiSupSeg" / "semisupseg"

    def mentions(relativePath: str, key: str) -> bool:
        path = engine / relativePath
        return path.exists() and key in path.read_text(encoding="utf-8")

    return (mentions("data/dataset.py", "ignore_label") and mentions("training/trainer.py", "workspace_reloaded")
            and mentions("cli.py", "--init-from"))


def eventsUntil(job, accept, timeout: float = 300.0) -> list:
    """Poll a running job until an event satisfies ``accept`` (a safety deadline, not a timing assertion)."""
    import time

    events, deadline = [], time.monotonic() + timeout
    while not any(accept(event) for event in events):
        assert job.state in ("starting", "running"), f"worker ended early: {job.error}; events {events}"
        assert time.monotonic() < deadline, f"no such event within {timeout} s; events so far {events}"
        time.sleep(0.2)
        events += job.pollEvents()
    first = next(index for index, event in enumerate(events) if accept(event))
    return events[:first + 1]  # ends with the event looked for


@pytest.mark.slow
@pytest.mark.xfail(not _engineHasTheLiveLoop(), strict=False,
                   reason="the engine's partial labels / workspace reload / --init-from (issue 12, sections 1-2) are not there yet")
def test_a_running_worker_takes_in_an_accepted_region_and_train_again_warm_starts(mrml, tmp_path):
    """vol0 fully labelled, vol1 unlabelled; a region of vol1 is accepted while a real worker trains: the worker
    reloads the workspace with vol1 now (partially) labelled. Train again then starts from that run's weights
    and trains on both labelled cases, the partial label among its inputs."""
    logic = SemiSupSegLogic()
    cases = tinyTrainingCases(mrml.scene)
    logic.writeWorkspace(tmp_path, cases)
    vol1 = cases[1][0]
    shape = tuple(reversed(vol1.GetImageData().GetDimensions()))
    runDir = tmp_path / "runs" / "seed"  # an earlier run's results for vol1, written by the test
    writeArray(vol1, blob(shape, (8, 17, 15), (5, 9, 8)), runDir / "predictions" / "vol1.nii.gz", labelmap=True)
    uncertainty = np.zeros(shape, np.float32)
    uncertainty[4:12, 10:24, 8:22] = 0.9
    writeArray(vol1, uncertainty, runDir / "uncertainty" / "vol1.nii.gz", labelmap=False)
    region = {"rank": 1, "threshold": 0.5, "center_voxel": [15, 17, 8], "bbox_voxels": {"min": [8, 10, 4], "max": [21, 23, 11]}}
    (runDir / "regions.json").write_text(json.dumps({"format": 1, "cases": {"vol1": [region]}}))
    logic.loadResults(tmp_path, "seed", ["vol1"])

    config = dict(FAST_TRAINING, iterations=100000, reload_every=2)
    job = logic.startTraining(tmp_path, config, pythonExecutable=sys.executable)
    try:
        events = eventsUntil(job, lambda event: event["event"] == "progress")
        started = next(event for event in events if event["event"] == "started")
        assert (started["labelled"], started["unlabelled"]) == (1, 1)
        accepted = logic.acceptRegion(tmp_path, vol1, dict(region, case="vol1"))  # while the worker trains
        assert 0 < accepted["annotatedVoxels"] < np.prod(shape)
        # The worker reports a label it refuses as a warning: stop waiting then, and show it.
        reloaded = eventsUntil(job, lambda event: event["event"] in ("workspace_reloaded", "warning"), timeout=120)[-1]
        assert reloaded["event"] == "workspace_reloaded", reloaded
        changed = reloaded["added"] + reloaded["relabelled"] + reloaded["moved"]
        assert "vol1" in changed and reloaded["labelled"] == 2, reloaded
    finally:
        job.stop(timeout=120)
    assert job.state == "cancelled" and (job.runDir / "checkpoints" / "last.pt").exists()

    source, note = logic.warmStartRun(tmp_path, job.runId, FAST_TRAINING)
    assert source == job.runDir and note == ""
    again = logic.startTraining(tmp_path, FAST_TRAINING, pythonExecutable=sys.executable, initFrom=source)
    events = runToEnd(again)
    assert again.state == "finished", again.error
    started = next(event for event in events if event["event"] == "started")
    assert started["labelled"] == 2 and Path(started["init_from"]).name == job.runId
    manifest = json.dumps(json.loads((again.runDir / "manifest.json").read_text()))
    assert "vol1.partial.nii.gz" in manifest  # the partial label is among the training inputs
    assert {event["case"] for event in events if event["event"] == "prediction"} == {"vol0", "vol1"}
