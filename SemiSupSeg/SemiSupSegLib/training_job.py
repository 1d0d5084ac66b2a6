"""The engine worker as a child process: start it, read its JSON-lines events, stop it.

``TrainingJob`` never blocks the caller: a daemon reader thread turns the worker's stdout into
events (``pollEvents`` drains them, a GUI timer calls it), stderr goes straight to
``runs/<id>/worker.log``. Stopping asks politely first (the STOP file the worker checks every
iteration, then SIGTERM, both of which end in a checkpoint) and then kills the worker's whole
process group, so no data-loader or GPU helper process outlives it.

In Slicer the worker is started through ``PythonSlicer``, a CTKAppLauncher that runs
``python-real`` as its child and does not forward SIGTERM: the launcher ends at once while the
real worker is still writing ``last.pt``. So every wait is on the whole process group, never on the
launcher alone, before the next step (issue 20, bug 2). On Windows a ``CTRL_BREAK_EVENT`` cannot
reach a process created with ``CREATE_NO_WINDOW`` (it has no console), so there the STOP file is
the only polite request and ``taskkill /T`` the end of it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .dependencies import noConsoleWindow

LOG = logging.getLogger("SemiSupSeg.worker")

STARTING, RUNNING, FINISHED, CANCELLED, FAILED = "starting", "running", "finished", "cancelled", "failed"


def drainEvents(events: "queue.Queue") -> list[dict]:
    """Everything in ``events`` now, oldest first, without waiting (what a GUI timer polls)."""
    drained = []
    while True:
        try:
            drained.append(events.get_nowait())
        except queue.Empty:
            return drained


TERMINAL_EVENTS = {"finished": FINISHED, "cancelled": CANCELLED}
# The engine's exit code for bad input (InputError): the run was refused, nothing was trained.
REFUSED_EXIT_CODE = 2
WORKER_LOG = "worker.log"
STOP_FILE = "STOP"
STDERR_TAIL_LINES = 20
# Seconds the worker gets to act on SIGTERM (finish the iteration, write the checkpoint) before it is killed.
TERMINATE_GRACE_S = 5.0
GROUP_POLL_S = 0.05
STOP_FILE_STEP, TERMINATE_STEP, KILL_STEP = "stop-file", "terminate", "kill"


def stopSteps(osName: str | None = None) -> tuple:
    """What ``TrainingJob.stop`` does, in order, each after the previous one had its time.

    POSIX: the STOP file, SIGTERM to the process group, SIGKILL to the group. Windows: the STOP
    file, then ``taskkill /F /T``; no console control event, which a worker started with
    ``CREATE_NO_WINDOW`` never receives (waiting for it would only delay the kill)."""
    if (osName or os.name) == "nt":
        return (STOP_FILE_STEP, KILL_STEP)
    return (STOP_FILE_STEP, TERMINATE_STEP, KILL_STEP)


def runFolder(workspaceDir, runId: str) -> Path:
    return Path(workspaceDir) / "runs" / runId


def isPythonInterpreter(path) -> bool:
    """Whether ``path`` names a Python interpreter (``python``, ``python3.12``, ``python-real``,
    ``PythonSlicer``, with or without ``.exe``) rather than an application such as ``Slicer``."""
    name = Path(str(path)).name.lower()
    if name.endswith(".exe"):
        name = name[:-4]
    return name.startswith("python")


def defaultPythonExecutable(executable: str | None = None, which=shutil.which) -> str:
    """The worker's Python: ``PythonSlicer`` (on Slicer's PATH or next to ``executable``), else
    ``executable`` (default ``sys.executable``) when it is a Python interpreter.

    Inside Slicer ``sys.executable`` is the Slicer application itself: starting it with
    ``-m semisupseg`` would open a second Slicer. Then a RuntimeError says how to choose a Python.
    """
    executable = executable or sys.executable
    launcher = which("PythonSlicer")
    if launcher:
        return launcher
    executableDir = Path(executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        if (executableDir / name).exists():
            return str(executableDir / name)
    if isPythonInterpreter(executable):
        return executable
    raise RuntimeError(
        f"No PythonSlicer next to {executable}, and {Path(executable).name} is not a Python interpreter (starting it "
        "would open another Slicer). Reinstall Slicer, or set SemiSupSegLogic.pythonExecutable to a Python that has "
        "torch and MONAI."
    )


def workerEnvironment(moduleDir, baseEnvironment: dict | None = None) -> dict:
    """The child's environment: ``moduleDir`` (where the ``semisupseg`` package lives) first on
    PYTHONPATH, unbuffered output so events arrive as they are printed, UTF-8 streams."""
    environment = dict(os.environ if baseEnvironment is None else baseEnvironment)
    paths = [str(moduleDir)] + [path for path in environment.get("PYTHONPATH", "").split(os.pathsep) if path]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    environment["PYTHONIOENCODING"] = "utf-8"
    return environment


def workerCommand(pythonExecutable: str, workspaceDir, configPath, runId: str, resume: bool = False,
                  initFrom=None) -> list[str]:
    """``python -m semisupseg train ...``; ``initFrom`` (a run folder) adds ``--init-from`` (warm start
    from that run's ``checkpoints/last.pt``). A resumed run continues its own weights, so the two exclude
    each other."""
    if resume and initFrom:
        raise ValueError("A resumed run continues from its own checkpoint; it cannot also start from another run.")
    command = [
        str(pythonExecutable), "-m", "semisupseg", "train",
        "--workspace", str(workspaceDir), "--config", str(configPath), "--run-id", runId,
    ]
    if resume:
        command.append("--resume")
    if initFrom:
        command += ["--init-from", str(initFrom)]
    return command


class TrainingJob:
    """One running (or finished) engine worker.

    Attributes: ``runId``, ``workspaceDir``, ``process`` (``subprocess.Popen``), ``logLines``
    (the worker's non-JSON stdout lines, most recent last).
    """

    def __init__(self, runId: str, workspaceDir, command: list[str], environment: dict | None = None, cwd=None,
                 terminateGrace: float = TERMINATE_GRACE_S):
        self.runId = runId
        self.terminateGrace = terminateGrace
        self.workspaceDir = Path(workspaceDir)
        self.command = list(command)
        self.runDir = runFolder(workspaceDir, runId)
        # Only a folder this job made may be removed when the engine refuses the run (a resumed
        # run's folder holds its checkpoints).
        self.createdRunDir = not self.runDir.exists()
        self.runDir.mkdir(parents=True, exist_ok=True)
        # A STOP file left by an earlier stop of this run would end a resumed run at once.
        (self.runDir / STOP_FILE).unlink(missing_ok=True)
        self.logLines: collections.deque[str] = collections.deque(maxlen=1000)
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._started = False
        self._terminalEvent: dict | None = None
        self._errorEvent: dict | None = None
        self._progress: dict | None = None
        self._stopRequested = False
        self.process = self._launch(environment, cwd)
        self._reader = threading.Thread(target=self._readStdout, name=f"SemiSupSeg worker {runId}", daemon=True)
        self._reader.start()

    # -- process ------------------------------------------------------------------------

    def _launch(self, environment, cwd) -> subprocess.Popen:
        options = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            options["start_new_session"] = True  # own process group: the whole tree can be signalled
        with open(self.runDir / WORKER_LOG, "ab") as stderrLog:
            return subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderrLog,
                env=environment,
                cwd=str(cwd) if cwd else None,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **options,
            )

    def _readStdout(self) -> None:
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            event = self._parseEvent(line)
            if event is None:
                self.logLines.append(line)
                LOG.info("%s: %s", self.runId, line)
                continue
            self._record(event)
            self._events.put(event)
        self.process.stdout.close()

    @staticmethod
    def _parseEvent(line: str) -> dict | None:
        if not line.startswith("{"):
            return None
        try:
            event = json.loads(line)
        except ValueError:
            return None
        return event if isinstance(event, dict) and "event" in event else None

    def _record(self, event: dict) -> None:
        kind = event.get("event")
        with self._lock:
            if kind == "started":
                self._started = True
            elif kind == "progress":
                self._started = True
                self._progress = event
            elif kind == "error":
                self._errorEvent = event
            elif kind in TERMINAL_EVENTS:
                self._terminalEvent = event

    # -- public -------------------------------------------------------------------------

    def pollEvents(self) -> list[dict]:
        """Events received since the previous call, oldest first."""
        return drainEvents(self._events)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def state(self) -> str:
        """``starting`` -> ``running`` -> ``finished`` | ``cancelled`` | ``failed``.

        The last three only once the process has exited, so a new run can start as soon as the
        state says the old one is over.
        """
        if self.process.poll() is None:
            with self._lock:
                return RUNNING if self._started or self._errorEvent is not None else STARTING
        self._reader.join(timeout=2.0)  # let the reader take the last lines before judging
        with self._lock:
            if self._errorEvent is not None:
                return FAILED
            if self._terminalEvent is not None:
                return TERMINAL_EVENTS[self._terminalEvent["event"]]
            if self._stopRequested:
                return CANCELLED
        return FINISHED if self.process.returncode == 0 else FAILED

    @property
    def progress(self) -> dict | None:
        """The last ``progress`` event (iteration, total, losses, eta_s, it_per_s)."""
        with self._lock:
            return self._progress

    @property
    def error(self) -> dict | None:
        """``{"message", "hint"}`` of the worker's ``error`` event, or the stderr tail if it died without one."""
        with self._lock:
            errorEvent = self._errorEvent
        if errorEvent is not None:
            return {"message": errorEvent.get("message", ""), "hint": errorEvent.get("hint", "")}
        if self.state != FAILED:
            return None
        tail = self.stderrTail()
        lastLine = tail.splitlines()[-1] if tail else "no output on stderr"
        return {
            "message": f"The training worker exited with code {self.process.returncode}: {lastLine}",
            "hint": f"See {self.runDir / WORKER_LOG}. Last lines:\n{tail}",
        }

    @property
    def refused(self) -> bool:
        """The engine refused the run: it exited with code 2 (bad input, ``error`` event with message
        and hint) before writing any checkpoint, so the run folder holds nothing worth keeping."""
        if self.process.poll() != REFUSED_EXIT_CODE:
            return False
        with self._lock:
            reported = self._errorEvent is not None
        return reported and not (self.runDir / "checkpoints").exists()

    def discardIfRefused(self) -> bool:
        """Remove the run folder of a refused run this job created (worker.log, the run note, whatever
        the engine wrote before refusing); its message and hint stay in ``error``. Returns whether removed."""
        if not (self.createdRunDir and self.runDir.exists() and self.refused):
            return False
        shutil.rmtree(self.runDir, ignore_errors=True)
        return not self.runDir.exists()

    def stderrTail(self, lines: int = STDERR_TAIL_LINES) -> str:
        path = self.runDir / WORKER_LOG
        if not path.exists():
            return ""
        with open(path, encoding="utf-8", errors="replace") as stream:
            return "".join(collections.deque(stream, maxlen=lines)).rstrip()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the worker exits (raises TimeoutError after ``timeout`` seconds); all its events are then queued."""
        try:
            returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(f"Run {self.runId} still running after {timeout} s") from error
        self._reader.join(timeout=5.0)
        return returncode

    def requestStop(self) -> None:
        """Ask the worker to stop after its current iteration (writes the STOP file); returns at once."""
        self._stopRequested = True
        if self.process.poll() is None:
            (self.runDir / STOP_FILE).write_text("stop requested by SemiSupSeg\n", encoding="utf-8")

    def stop(self, timeout: float = 10) -> None:
        """Stop the worker: the STOP file and up to ``timeout`` s for the whole process group to end
        (the worker checkpoints and exits); then SIGTERM (POSIX) and ``terminateGrace`` s more;
        then kill what is left of the tree. See ``stopSteps``."""
        if self.process.poll() is not None and not self._groupAlive():
            return
        steps = stopSteps()
        self.requestStop()
        if not self._waitForGroup(time.monotonic() + timeout):
            if TERMINATE_STEP in steps:
                LOG.warning("Run %s did not stop within %s s; terminating it", self.runId, timeout)
                self._terminateTree()
                if not self._waitForGroup(time.monotonic() + self.terminateGrace):
                    LOG.warning("Run %s ignored the termination request; killing its process tree", self.runId)
            else:
                LOG.warning("Run %s did not stop within %s s; killing its process tree", self.runId, timeout)
        self._killTree()
        self.process.wait()
        self._reader.join(timeout=5.0)

    def _groupAlive(self) -> bool:
        """Whether any process of the worker's group is left (POSIX); on Windows, the worker itself.

        The launcher is reaped first (``poll``): an unreaped child is a zombie that still counts as
        a member of the group."""
        launcherRunning = self.process.poll() is None
        if os.name == "nt":
            return launcherRunning
        try:
            os.killpg(self.process.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:  # a member we may not signal is still a member
            return True

    def _waitForGroup(self, deadline: float) -> bool:
        """Wait until the whole process group has ended (True) or ``deadline`` passed (False)."""
        while self._groupAlive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(GROUP_POLL_S)
        return True

    def _terminateTree(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def _killTree(self) -> None:
        """Kill every process left in the worker's group (the worker itself and any helpers it started)."""
        if os.name == "nt":
            if self.process.poll() is None:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True, check=False,
                               stdin=subprocess.DEVNULL, **noConsoleWindow())
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
