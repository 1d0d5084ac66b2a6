"""``RemoteTrainingJob`` against a real ``semisupseg serve`` on 127.0.0.1 (its own process, the real worker,
a tiny U-Net on 32 x 32 x 24 volumes): the same interface as the local ``TrainingJob``, results
downloaded into the local run folder, only changed files uploaded again, clear errors for a wrong
token, a server that is not there and a server that restarts during training, then a resume.

The remote job uses only the standard library (no Slicer needed); the server helpers come from
``Testing/engine/test_server.py``.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the server extra: pip install -e '.[server]'")
pytest.importorskip("uvicorn", reason="needs the server extra: pip install -e '.[server]'")
sitk = pytest.importorskip("SimpleITK")

from SemiSupSegLib.remote_job import RemoteTrainingJob, remoteWorkspaceName, workspaceUploads  # noqa: E402

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("server_test_helpers", HERE.parent / "engine" / "test_server.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

pytestmark = pytest.mark.slow
TERMINAL = ("finished", "cancelled", "failed")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = helpers.ServerProcess(tmp_path_factory.mktemp("remote") / "root", max_upload_mb=16)
    yield process
    process.close()


def drain(job, until=lambda events: False, timeout: float = 300.0) -> list:
    """Poll like the widget's timer until the job ends or ``until(events)``; returns the events."""
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += job.pollEvents()
        if until(events) or job.state in TERMINAL:
            return events + job.pollEvents()
        time.sleep(0.2)
    raise AssertionError(f"no end after {timeout} s: {[e['event'] for e in events][-20:]}")


def test_remote_run_downloads_results_and_uploads_only_changed_files(server, tmp_path):
    workspace = helpers.write_workspace(tmp_path / "local")
    job = RemoteTrainingJob(server.url, server.token, workspace, helpers.FAST_CONFIG, runId="remote-1", pollWait=2)
    events = drain(job)
    assert job.state == "finished" and job.returncode == 0 and job.error is None, events[-3:]
    kinds = [event["event"] for event in events]
    uploads = [event for event in events if event["event"] == "upload"]
    assert [event["done"] for event in uploads] == [1, 2, 3, 4, 5, 6] and uploads[-1]["file"] == "dataset.json"
    assert uploads[-1]["bytes"] == uploads[-1]["total_bytes"] == sum(
        (workspace / path).stat().st_size for path in workspaceUploads(workspace))
    assert kinds.index("upload") < kinds.index("started") < kinds.index("progress") < kinds.index("finished")
    assert job.progress["iteration"] == job.progress["total"] == 4

    predictions = [event for event in events if event["event"] == "prediction"]
    assert sorted(event["case"] for event in predictions) == ["case0", "case1", "case2"]
    for event in predictions:  # paths point at local copies, byte-equal to the server's files
        local = Path(event["segmentation"])
        assert local == workspace / "runs" / "remote-1" / "predictions" / f"{event['case']}.nii.gz"
        served = server.root / "workspaces" / job.remoteWorkspace / "runs" / "remote-1" / "predictions" / local.name
        assert local.read_bytes() == served.read_bytes()
        assert sitk.ReadImage(event["uncertainty"]).GetSize() == helpers.SIZE
    regions = json.loads((workspace / "runs" / "remote-1" / "regions.json").read_text())
    assert set(regions["cases"]) == {"case0", "case1", "case2"}
    assert (workspace / "runs" / "remote-1" / "events.jsonl").exists()

    # One label changes (the annotator accepted a region): only that file travels again.
    label = workspace / "labels" / "case0.nii.gz"
    image = sitk.ReadImage(str(label))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 1
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    sitk.WriteImage(changed, str(label))
    second = RemoteTrainingJob(server.url, server.token, workspace, {**helpers.FAST_CONFIG, "iterations": 2,
                                                                      "predict_cases": "none"},
                               runId="remote-2", pollWait=2)
    events = drain(second)
    assert second.state == "finished", second.error
    assert second.uploaded == ["labels/case0.nii.gz"] and len(second.skipped) == 5
    assert [event["file"] for event in events if event["event"] == "upload"] == ["labels/case0.nii.gz"]
    assert second.remoteWorkspace == job.remoteWorkspace == remoteWorkspaceName(workspace)


def test_the_panels_time_budget_reaches_the_remote_worker(server, tmp_path):
    """The Training section's time budget travels in the remote job's config like in a local run's:
    the server's worker reports the budget in its ``finished`` event (4 iterations end it first)."""
    from SemiSupSegLib.panel_text import trainingConfig
    from SemiSupSegLib.presenter import PanelParameters

    panelConfig = trainingConfig(PanelParameters(timeBudgetMin=5, keepTraining=False))
    workspace = helpers.write_workspace(tmp_path / "local")
    job = RemoteTrainingJob(server.url, server.token, workspace, {**helpers.FAST_CONFIG, "predict_cases": "none",
                                                                  "time_budget_min": panelConfig["time_budget_min"]},
                            runId="budget-1", pollWait=2)
    assert job._jobRequest()["config"]["time_budget_min"] == 5
    events = drain(job)
    assert job.state == "finished", job.error
    finished = [event for event in events if event["event"] == "finished"][-1]
    assert finished["time_budget_s"] == 300 and finished["stopped_by"] == "iterations"
    assert any("budget_left_s" in event for event in events if event["event"] == "progress")
    assert not job.refused and not job.discardIfRefused() and (workspace / "runs" / "budget-1").is_dir()


def test_wrong_token_and_missing_server_give_clear_errors(server, tmp_path):
    workspace = helpers.write_workspace(tmp_path / "local")
    wrong = RemoteTrainingJob(server.url, "not-the-token", workspace, helpers.FAST_CONFIG, runId="w1")
    events = drain(wrong, timeout=60)
    assert wrong.state == "failed" and wrong.returncode == 1
    assert "refused the access token" in wrong.error["message"] and ".semisupseg-token" in wrong.error["hint"]
    assert [event["event"] for event in events] == ["error"]
    assert wrong.refused and (workspace / "runs" / "w1" / "events.jsonl").exists()
    assert wrong.discardIfRefused() and not (workspace / "runs" / "w1").exists()  # nothing was queued or trained

    nowhere = f"http://127.0.0.1:{helpers.free_port()}"
    absent = RemoteTrainingJob(nowhere, server.token, workspace, helpers.FAST_CONFIG, runId="w2")
    drain(absent, timeout=60)
    assert absent.state == "failed" and "Cannot reach the SemiSupSeg server" in absent.error["message"]
    assert "ssh -L 8765:127.0.0.1:8765" in absent.error["hint"]

    empty = tmp_path / "empty"
    empty.mkdir()
    unwritten = RemoteTrainingJob(server.url, server.token, empty, helpers.FAST_CONFIG, runId="w3")
    drain(unwritten, timeout=60)
    assert unwritten.state == "failed" and "dataset.json" in unwritten.error["message"]
    assert "bug" not in unwritten.error["hint"]


def test_server_restart_during_training_is_reported_and_the_run_resumes(tmp_path):
    root = tmp_path / "root"
    workspace = helpers.write_workspace(tmp_path / "local")
    first = helpers.ServerProcess(root)
    port, token = first.port, first.token
    try:
        job = RemoteTrainingJob(first.url, token, workspace, helpers.LONG_CONFIG, runId="long", pollWait=2,
                                reconnectSeconds=300)
        drain(job, until=lambda ev: any(e["event"] == "progress" and e["iteration"] >= 2 for e in ev))
        first.kill()
    finally:
        first.close()
    second = helpers.ServerProcess(root, port=port)  # the same address: the client reconnects by itself
    try:
        events = drain(job)
        assert job.state == "failed", events[-3:]
        assert "restarted" in job.error["message"] or "server stopped" in job.error["message"]
        assert "resume" in job.error["hint"]
        assert any(event["event"] == "notice" and "Lost the connection" in event["message"] for event in events)

        resumed = RemoteTrainingJob(second.url, token, workspace, helpers.LONG_CONFIG, runId="long", resume=True,
                                    pollWait=2)
        events = drain(resumed, until=lambda ev: sum(e["event"] == "progress" for e in ev) >= 1)
        assert resumed.uploaded == []  # every file survived the restart on the server
        started = next(event for event in events if event["event"] == "started")
        assert started["start_iteration"] >= 2
        assert resumed.progress["iteration"] > started["start_iteration"]
        resumed.stop(timeout=120)
        assert resumed.state == "cancelled", resumed.error
    finally:
        second.close()


def test_hashes_are_cached_by_size_and_modification_time(tmp_path):
    from SemiSupSegLib.remote_job import HASH_CACHE, cachedSha256, fileSha256

    (tmp_path / "images").mkdir()
    image = tmp_path / "images" / "a.nii.gz"
    image.write_bytes(b"first")
    assert cachedSha256(tmp_path, ["images/a.nii.gz"]) == {"images/a.nii.gz": fileSha256(image)}
    cache = json.loads((tmp_path / HASH_CACHE).read_text())
    cache["images/a.nii.gz"][2] = "0" * 64  # a stale digest with the same stamp is trusted: nothing is re-read
    (tmp_path / HASH_CACHE).write_text(json.dumps(cache))
    assert cachedSha256(tmp_path, ["images/a.nii.gz"])["images/a.nii.gz"] == "0" * 64
    image.write_bytes(b"second, longer")  # another size: hashed again
    assert cachedSha256(tmp_path, ["images/a.nii.gz"]) == {"images/a.nii.gz": fileSha256(image)}
