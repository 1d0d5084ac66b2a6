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
