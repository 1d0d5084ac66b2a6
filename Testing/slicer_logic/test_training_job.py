"""TrainingJob mechanics with small stand-in workers (fast, no engine needed): event parsing,
state, error reporting, graceful stop and killing the whole process tree."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")

from SemiSupSegLib import TrainingJob  # noqa: E402


def fakeWorker(tmp_path, body: str, **options) -> TrainingJob:
    script = "import json, os, sys, time\n" + textwrap.dedent(body)
    return TrainingJob("run-1", tmp_path, [sys.executable, "-c", script], **options)


def emit(**event) -> str:
    return f"print(json.dumps({json.dumps(event)}), flush=True)\n"


def processGone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_events_plain_lines_and_finish(tmp_path):
    job = fakeWorker(
        tmp_path,
        emit(event="started", run="run-1", device="cpu")
        + "print('a plain log line', flush=True)\n"
        + emit(event="progress", iteration=1, total=2, losses={"loss": 0.5}, eta_s=1.0, it_per_s=2.0)
        + "print('to stderr', file=sys.stderr)\n"
        + emit(event="finished"),
    )
    assert job.wait(timeout=30) == 0
    events = job.pollEvents()
    assert [event["event"] for event in events] == ["started", "progress", "finished"]
    assert job.pollEvents() == []  # drained
    assert job.state == "finished" and job.returncode == 0 and job.error is None
    assert job.progress["iteration"] == 1 and job.progress["losses"] == {"loss": 0.5}
    assert list(job.logLines) == ["a plain log line"]
    assert (tmp_path / "runs" / "run-1" / "worker.log").read_text().strip() == "to stderr"


def test_state_is_starting_until_the_worker_reports(tmp_path):
    job = fakeWorker(tmp_path, "time.sleep(1.0)\n" + emit(event="started") + "time.sleep(30)\n")
    try:
        assert job.state == "starting"  # the constructor returned without waiting for the worker
        deadline = time.monotonic() + 20
        while job.state == "starting" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.state == "running"
    finally:
        job.stop(timeout=0.1)


def test_error_event_is_the_error(tmp_path):
    job = fakeWorker(tmp_path, emit(event="error", message="Case 'a': label grid differs", hint="Re-export it") + "sys.exit(2)\n")
    assert job.wait(timeout=30) == 2
    assert job.state == "failed"
    assert job.error == {"message": "Case 'a': label grid differs", "hint": "Re-export it"}


REFUSAL = emit(event="error", message="Patch size [16, 16, 16] is too small", hint="Use at least 32") + "sys.exit(2)\n"


def test_a_refused_run_leaves_no_run_folder_and_keeps_its_message(tmp_path):
    job = fakeWorker(tmp_path, REFUSAL)
    assert job.wait(timeout=30) == 2 and job.refused
    assert (tmp_path / "runs" / "run-1" / "worker.log").exists()  # written while the worker ran
    assert job.discardIfRefused() and not (tmp_path / "runs" / "run-1").exists()
    assert job.state == "failed" and job.error == {"message": "Patch size [16, 16, 16] is too small", "hint": "Use at least 32"}
    assert not job.discardIfRefused()  # nothing left to do


@pytest.mark.parametrize("body, why", [
    (emit(event="started") + "print('Traceback: boom', file=sys.stderr)\nsys.exit(1)\n", "a crash: worker.log is the evidence"),
    ("print('no event', flush=True)\nsys.exit(2)\n", "exit code 2 without the engine's error event"),
    ("os.makedirs(os.path.join('runs', 'run-1', 'checkpoints'))\n" + REFUSAL, "a checkpoint was written"),
])
def test_runs_that_were_not_refused_keep_their_folder(tmp_path, body, why):
    job = fakeWorker(tmp_path, body, cwd=tmp_path)
    job.wait(timeout=30)
    assert job.state == "failed" and not job.refused, why
    assert not job.discardIfRefused() and (tmp_path / "runs" / "run-1" / "worker.log").exists(), why


def test_a_refused_resume_keeps_the_folder_it_did_not_create(tmp_path):
    runDir = tmp_path / "runs" / "run-1"
    runDir.mkdir(parents=True)
    (runDir / "config.json").write_text("{}")
    job = fakeWorker(tmp_path, REFUSAL)
    job.wait(timeout=30)
    assert job.refused and not job.discardIfRefused() and (runDir / "config.json").exists()


def test_crash_without_error_event_reports_the_stderr_tail(tmp_path):
    job = fakeWorker(tmp_path, emit(event="started") + "print('Traceback: boom happened', file=sys.stderr)\nsys.exit(1)\n")
    assert job.wait(timeout=30) == 1
    assert job.state == "failed"
    assert "exited with code 1" in job.error["message"] and "boom happened" in job.error["message"]
    assert "worker.log" in job.error["hint"]


def test_stop_uses_the_stop_file_first(tmp_path):
    job = fakeWorker(
        tmp_path,
        emit(event="started")
        + textwrap.dedent(
            """
            while not os.path.exists(os.path.join(os.environ["RUN_DIR"], "STOP")):
                time.sleep(0.05)
            """
        )
        + emit(event="cancelled"),
        environment=dict(os.environ, RUN_DIR=str(tmp_path / "runs" / "run-1")),
    )
    started = time.monotonic()
    job.stop(timeout=20)
    assert time.monotonic() - started < 10
    assert job.state == "cancelled" and job.returncode == 0
    assert [event["event"] for event in job.pollEvents()] == ["started", "cancelled"]


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_stop_kills_a_worker_that_ignores_stop_and_sigterm_with_its_children(tmp_path):
    childPidFile = tmp_path / "child.pid"
    job = fakeWorker(
        tmp_path,
        textwrap.dedent(
            f"""
            import signal, subprocess
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            open({str(childPidFile)!r}, "w").write(str(child.pid))
            """
        )
        + emit(event="started")
        + "time.sleep(300)\n",
        terminateGrace=0.5,
    )
    deadline = time.monotonic() + 20
    while not (childPidFile.exists() and childPidFile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    childPid = int(childPidFile.read_text())
    job.stop(timeout=0.5)
    assert job.returncode is not None
    assert processGone(job.process.pid) and processGone(childPid)
    assert job.state == "cancelled"
    assert (tmp_path / "runs" / "run-1" / "STOP").exists()


def test_resuming_removes_a_stale_stop_file(tmp_path):
    runDir = tmp_path / "runs" / "run-1"
    runDir.mkdir(parents=True)
    (runDir / "STOP").write_text("old")
    job = fakeWorker(tmp_path, emit(event="finished"))
    job.wait(timeout=30)
    assert not (runDir / "STOP").exists()


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_stop_waits_for_the_real_worker_behind_a_launcher_that_ends_at_once(tmp_path):
    """PythonSlicer is a CTKAppLauncher: it runs python-real as a child and ends at SIGTERM at once.
    The worker behind it needs a moment to write its checkpoint; stop must not SIGKILL it meanwhile."""
    checkpoint, workerPidFile = tmp_path / "last.pt", tmp_path / "worker.pid"
    worker = textwrap.dedent(
        f"""
        import os, signal, sys, time
        def checkpointThenExit(signum, frame):
            time.sleep(1.0)  # writing last.pt takes a while
            with open({str(checkpoint)!r} + ".tmp", "w") as stream:
                stream.write("complete")
            os.replace({str(checkpoint)!r} + ".tmp", {str(checkpoint)!r})
            sys.exit(0)
        signal.signal(signal.SIGTERM, checkpointThenExit)
        open({str(workerPidFile)!r}, "w").write(str(os.getpid()))
        while True:  # ignores the STOP file
            time.sleep(0.05)
        """
    )
    launcher = f"import subprocess\nsubprocess.run([sys.executable, '-c', {worker!r}])\n"  # default SIGTERM: dies at once
    job = fakeWorker(tmp_path, launcher, terminateGrace=20)
    deadline = time.monotonic() + 20
    while not (workerPidFile.exists() and workerPidFile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    workerPid = int(workerPidFile.read_text())
    job.stop(timeout=0.3)
    assert checkpoint.read_text() == "complete", "the worker was killed while writing its checkpoint"
    assert processGone(workerPid) and job.state == "cancelled"


def test_stop_steps_per_platform():
    from SemiSupSegLib.training_job import stopSteps

    assert stopSteps("posix") == ("stop-file", "terminate", "kill")
    # CTRL_BREAK_EVENT never reaches a CREATE_NO_WINDOW process: the STOP file, then taskkill.
    assert stopSteps("nt") == ("stop-file", "kill")


def test_worker_python_is_never_the_slicer_application(tmp_path):
    from SemiSupSegLib.training_job import defaultPythonExecutable

    noLauncher = lambda name: None  # noqa: E731
    slicerApp = tmp_path / "Slicer-5.8" / "bin" / "SlicerApp-real"
    slicerApp.parent.mkdir(parents=True)
    slicerApp.write_text("")
    with pytest.raises(RuntimeError, match="another Slicer"):
        defaultPythonExecutable(str(slicerApp), which=noLauncher)
    (slicerApp.parent / "PythonSlicer").write_text("")
    assert defaultPythonExecutable(str(slicerApp), which=noLauncher) == str(slicerApp.parent / "PythonSlicer")
    assert defaultPythonExecutable("/usr/bin/python3.12", which=noLauncher) == "/usr/bin/python3.12"
    assert defaultPythonExecutable(str(slicerApp), which=lambda name: "/opt/Slicer/bin/PythonSlicer") == "/opt/Slicer/bin/PythonSlicer"
