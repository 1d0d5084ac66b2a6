"""Training jobs of the server: a FIFO queue, one worker per device slot, state kept in ``ROOT/jobs.json``.

A job runs the same worker as the local path (``python -m semisupseg train`` as a child process,
JSON-lines events on its stdout). Each job keeps its own event log ``ROOT/jobs/<id>/events.jsonl``
(the worker's events, paths made relative to the run folder, plus the server's own ``queued``,
``interrupted`` and ``error`` events); clients read it by offset, so a client that reconnects, or
a server that restarts, loses nothing that was written.

Slots: one per CUDA device (``cuda:0``, ``cuda:1``, ...), or one ``cpu`` slot: one training per
GPU at a time, the others wait in submission order with their queue position reported (no job
overtakes an earlier one). A job that asks for ``gpus: N > 1`` waits for N free GPUs and runs the
same worker under ``torchrun --standalone --nproc-per-node N`` (DistributedDataParallel, see
``training/distributed.py``) with ``CUDA_VISIBLE_DEVICES`` set to its GPUs.

Restart: ``jobs.json`` is rewritten atomically at every state change. A job found ``running`` at
start-up belonged to a server that was killed: its worker, if still alive, is asked to stop (SIGTERM,
which ends in a checkpoint) and the job becomes ``interrupted``; ``resume`` queues it again and the
worker continues from ``checkpoints/last.pt`` (``semisupseg train --resume --run-id``). A worker that
finished while the server was away is recognised from the run's own ``events.jsonl``.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..atomic import atomic_output
from .security import check_name

QUEUED, RUNNING, FINISHED, CANCELLED, FAILED, INTERRUPTED = (
    "queued", "running", "finished", "cancelled", "failed", "interrupted")
ACTIVE = (QUEUED, RUNNING)
RESUMABLE = (INTERRUPTED, CANCELLED, FAILED)
JOBS_FILE = "jobs.json"
# Seconds a worker gets after the STOP file (the iteration, a checkpoint, maybe a prediction round)
# before SIGTERM, and after SIGTERM before it is killed.
STOP_GRACE_S = 60.0
TERMINATE_GRACE_S = 30.0
MAX_EVENTS_PER_READ = 1000
PATH_FIELDS = ("segmentation", "uncertainty", "mutual_information", "run_dir", "checkpoint", "path")


class JobRefused(ValueError):
    """A request the job manager cannot honour (unknown job, wrong state); ``status`` is the HTTP code."""

    def __init__(self, message: str, hint: str = "", status: int = 409):
        super().__init__(message)
        self.message, self.hint, self.status = message, hint, status


def device_slots() -> List[str]:
    """``cuda:i`` for every visible GPU, else ``["cpu"]`` (one training at a time on a CPU server)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA: the CPU slot
        count = 0
    return [f"cuda:{index}" for index in range(count)] or ["cpu"]


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def relative_paths(event: dict, run_dir: Path) -> dict:
    """The event with the worker's absolute paths inside the run folder made run-relative (``predictions/a.nii.gz``).

    Clients live on another computer: only a path relative to the run means something there (and the
    server's own folder layout is not disclosed).
    """
    out = dict(event)
    base = str(run_dir.resolve())
    for key in PATH_FIELDS:
        value = out.get(key)
        if isinstance(value, str) and os.path.isabs(value):
            resolved = str(Path(value).resolve())
            out[key] = "." if resolved == base else (
                Path(resolved).relative_to(base).as_posix() if resolved.startswith(base + os.sep) else Path(value).name)
    return out


def is_worker_of(pid: int, run_id: str) -> bool:
    """True when process ``pid`` is alive and its command line is a semisupseg worker for ``run_id``
    (Linux ``/proc``; elsewhere False, so a reused pid is never signalled)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [word.decode("utf-8", "replace") for word in cmdline]
    return "semisupseg" in words and "train" in words and run_id in words


class JobManager:
    """Queue, processes and persisted state of the server's training jobs (thread-safe)."""

    def __init__(self, root: Path, slots: Optional[List[str]] = None, python: str = sys.executable,
                 stop_grace: float = STOP_GRACE_S, environment: Optional[dict] = None):
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.slots = list(slots or device_slots())
        self.python = python
        self.stop_grace = stop_grace
        self.environment = environment
        self._lock = threading.RLock()
        self._jobs: Dict[str, dict] = self._load()
        self._events: Dict[str, List[dict]] = {}
        self._processes: Dict[str, subprocess.Popen] = {}
        self._readers: Dict[str, threading.Thread] = {}
        self._shutting_down = False
        self._reconcile_after_restart()
        self._schedule()

    # -- persistence ----------------------------------------------------------------------

    def _load(self) -> Dict[str, dict]:
        path = self.root / JOBS_FILE
        if not path.exists():
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        return {job["id"]: job for job in data.get("jobs", [])}

    def _save(self) -> None:
        with atomic_output(self.root / JOBS_FILE) as tmp:
            with open(tmp, "w", encoding="utf-8") as stream:
                json.dump({"format": 1, "jobs": list(self._jobs.values())}, stream, indent=1)

    def _event_log(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / "events.jsonl"

    def _loaded_events(self, job_id: str) -> List[dict]:
        """The job's events, read from its log once (a torn last line of a killed server is skipped)."""
        if job_id not in self._events:
            events = []
            path = self._event_log(job_id)
            if path.exists():
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        continue
            self._events[job_id] = events
        return self._events[job_id]

    def _append_event(self, job_id: str, event: dict) -> None:
        with self._lock:
            events = self._loaded_events(job_id)
            path = self._event_log(job_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(event) + "\n")
            events.append(event)

    def _server_event(self, job_id: str, kind: str, **fields) -> None:
        self._append_event(job_id, {"event": kind, "time": round(time.time(), 3), "source": "server", **fields})

    # -- queries ----------------------------------------------------------------------------

    def workspace_dir(self, job: dict) -> Path:
        return self.root / "workspaces" / job["workspace"]

    def run_dir(self, job: dict) -> Path:
        return self.workspace_dir(job) / "runs" / job["run_id"]

    def queue_position(self, job_id: str) -> Optional[int]:
        """1 for the next job to start, None when not queued."""
        with self._lock:
            queued = self._queued()
            return queued.index(job_id) + 1 if job_id in queued else None

    def _queued(self) -> List[str]:
        waiting = [job for job in self._jobs.values() if job["state"] == QUEUED]
        return [job["id"] for job in sorted(waiting, key=lambda job: (job["queued_at"], job["id"]))]

    def describe(self, job_id: str) -> dict:
        with self._lock:
            job = self._job(job_id)
            return {**job, "queue_position": self.queue_position(job_id), "events": len(self._loaded_events(job_id))}

    def list(self) -> List[dict]:
        with self._lock:
            return [self.describe(job_id) for job_id in sorted(self._jobs)]

    def events_since(self, job_id: str, offset: int) -> Tuple[List[dict], int]:
        """Events from index ``offset`` on (at most MAX_EVENTS_PER_READ) and the next offset."""
        with self._lock:
            self._job(job_id)
            events = self._loaded_events(job_id)
            offset = max(0, min(int(offset), len(events)))
            chunk = events[offset:offset + MAX_EVENTS_PER_READ]
            return list(chunk), offset + len(chunk)

    def active_job_for_run(self, workspace: str, run_id: str) -> Optional[dict]:
        with self._lock:
            for job in self._jobs.values():
                if job["workspace"] == workspace and job["run_id"] == run_id and job["state"] in ACTIVE:
                    return job
            return None

    def _job(self, job_id: str) -> dict:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobRefused(f"No job {job_id!r} on this server.", "List the jobs: GET /api/v1/jobs.", status=404)
        return job

    # -- commands ---------------------------------------------------------------------------

    def submit(self, workspace: str, config: dict, run_id: Optional[str] = None, resume: bool = False,
               init_from: Optional[str] = None, iterations: Optional[int] = None, continuous: bool = False,
               gpus: int = 1) -> dict:
        """Queue a training of ``ROOT/workspaces/<workspace>``; returns the job (with its queue position)."""
        check_name(workspace, "workspace")
        gpu_slots = [slot for slot in self.slots if slot.startswith("cuda")]
        if gpus < 1 or (gpus > 1 and gpus > len(gpu_slots)):
            raise JobRefused(f"This server has {len(gpu_slots)} GPU(s); the job asks for {gpus}.",
                             f"Ask for at most {max(len(gpu_slots), 1)}.", status=400)
        run_id = check_name(run_id, "run id") if run_id else time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        if init_from:
            check_name(init_from, "init_from run")
        with self._lock:
            if self.active_job_for_run(workspace, run_id):
                raise JobRefused(f"Run {run_id} of workspace {workspace} is already queued or training.",
                                 "Stop that job first, or choose another run id.")
            job_id = new_job_id()
            while job_id in self._jobs:
                job_id = new_job_id()
            config_path = self.jobs_dir / job_id / "config.json"
            with atomic_output(config_path) as tmp:
                Path(tmp).write_text(json.dumps(config, indent=1), encoding="utf-8")
            job = {"id": job_id, "workspace": workspace, "run_id": run_id, "state": QUEUED, "resume": bool(resume),
                   "init_from": init_from, "iterations": iterations, "continuous": bool(continuous),
                   "gpus": int(gpus), "device": None, "pid": None, "returncode": None, "error": None, "attempts": 0,
                   "created_at": time.time(), "queued_at": time.time(), "started_at": None, "ended_at": None}
            self._jobs[job_id] = job
            self._save()
            self._server_event(job_id, "queued", position=self.queue_position(job_id), run=run_id)
            self._schedule()
            return self.describe(job_id)

    def resume(self, job_id: str, iterations: Optional[int] = None) -> dict:
        """Queue an interrupted, cancelled or failed job again; it continues from its last checkpoint."""
        with self._lock:
            job = self._job(job_id)
            if job["state"] not in RESUMABLE:
                raise JobRefused(f"Job {job_id} is {job['state']}; only {', '.join(RESUMABLE)} jobs can be resumed.")
            if self.active_job_for_run(job["workspace"], job["run_id"]):
                raise JobRefused(f"Run {job['run_id']} is already queued or training in another job.")
            job.update(state=QUEUED, resume=True, queued_at=time.time(), error=None, returncode=None, ended_at=None)
            if iterations is not None:
                job["iterations"] = iterations
            self._save()
            self._server_event(job_id, "queued", position=self.queue_position(job_id), run=job["run_id"], resume=True)
            self._schedule()
            return self.describe(job_id)

    def stop(self, job_id: str) -> dict:
        """A queued job is cancelled at once; a running one gets the STOP file (checkpoint, then exit)."""
        with self._lock:
            job = self._job(job_id)
            if job["state"] == QUEUED:
                self._finish(job, CANCELLED, None)
                self._server_event(job_id, "cancelled", message="Stopped while waiting in the queue.")
            elif job["state"] == RUNNING:
                job["stop_requested"] = True
                self._save()
                self._request_stop(job)
            return self.describe(job_id)

    def request_prediction(self, workspace: str, run_id: str, cases: List[str]) -> None:
        """Write the run's PREDICT file (a JSON list of case ids); the training worker predicts them next."""
        job = self.active_job_for_run(workspace, run_id)
        if job is None or job["state"] != RUNNING:
            raise JobRefused(f"Run {run_id} is not training now.", "Predictions on request need a running job.")
        with atomic_output(self.run_dir(job) / "PREDICT") as tmp:
            Path(tmp).write_text(json.dumps(list(cases)), encoding="utf-8")

    def shutdown(self) -> None:
        """Server stopping: running workers are asked to stop (checkpoint) and their jobs become resumable."""
        with self._lock:
            self._shutting_down = True
            running = [(job, self._processes.get(job["id"])) for job in self._jobs.values() if job["state"] == RUNNING]
        for job, process in running:
            if process is not None:
                _signal_group(process.pid, signal.SIGTERM)
        for job, process in running:
            if process is not None:
                try:
                    process.wait(TERMINATE_GRACE_S)
                except subprocess.TimeoutExpired:
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait()
        for job, _ in running:
            reader = self._readers.get(job["id"])
            if reader is not None:
                reader.join(timeout=10)

    # -- scheduling -------------------------------------------------------------------------

    def _free_slots(self) -> List[str]:
        busy = {slot for job in self._jobs.values() if job["state"] == RUNNING for slot in job["device"].split(",")}
        return [slot for slot in self.slots if slot not in busy]

    def _schedule(self) -> None:
        """Start queued jobs in order while the next one's slots are free (it is never overtaken)."""
        with self._lock:
            if self._shutting_down:
                return
            while True:
                queued, free = self._queued(), self._free_slots()
                if not queued:
                    break
                job = self._jobs[queued[0]]
                needed = max(1, int(job.get("gpus", 1)))
                if len(free) < needed:
                    break
                self._launch(job, free[:needed])
            for position, job_id in enumerate(self._queued(), start=1):
                if self._jobs[job_id].get("reported_position") != position:
                    self._jobs[job_id]["reported_position"] = position
                    self._server_event(job_id, "queued", position=position, run=self._jobs[job_id]["run_id"])

    def _command(self, job: dict, devices: List[str]) -> List[str]:
        """The worker's command line; several GPUs: the same under torchrun, one process per GPU."""
        resume = job["resume"] and (self.run_dir(job) / "checkpoints" / "last.pt").exists()
        launcher = [self.python, "-m"]
        if len(devices) > 1:
            launcher += ["torch.distributed.run", "--standalone", "--nproc-per-node", str(len(devices)), "-m"]
        device = devices[0] if len(devices) == 1 else "cuda"  # each rank takes cuda:LOCAL_RANK of its GPUs
        command = launcher + ["semisupseg", "train", "--workspace", str(self.workspace_dir(job)),
                              "--run-id", job["run_id"], "--device", device]
        if resume:
            command.append("--resume")
        else:  # never reached a checkpoint: start the run again from its configuration
            command += ["--config", str(self.jobs_dir / job["id"] / "config.json")]
            if job["init_from"]:
                command += ["--init-from", job["init_from"]]
        if job["continuous"] and not resume:
            command.append("--continuous")
        elif job["iterations"] is not None:
            command += ["--iterations", str(int(job["iterations"]))]
        return command

    def _worker_environment(self, devices: Optional[List[str]] = None) -> dict:
        environment = dict(os.environ if self.environment is None else self.environment)
        if devices and len(devices) > 1:
            # Slot cuda:i is the server's i-th visible GPU: map through the server's own list, if any.
            visible = [d for d in environment.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            indices = [int(device.split(":")[1]) for device in devices]
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(visible[i] if i < len(visible) else str(i) for i in indices)
        package_parent = str(Path(__file__).resolve().parents[2])
        paths = [package_parent] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
        environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        environment["PYTHONUNBUFFERED"] = "1"
        environment["PYTHONIOENCODING"] = "utf-8"
        return environment

    def _launch(self, job: dict, devices: List[str]) -> None:
        command = self._command(job, devices)
        (self.run_dir(job)).mkdir(parents=True, exist_ok=True)
        (self.run_dir(job) / "STOP").unlink(missing_ok=True)  # an earlier stop would end the resumed run at once
        (self.run_dir(job) / "PREDICT").unlink(missing_ok=True)
        log_path = self.jobs_dir / job["id"] / "worker.log"
        with open(log_path, "ab") as stderr_log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_log,
                                       env=self._worker_environment(devices), cwd=str(self.workspace_dir(job)),
                                       start_new_session=True, text=True, encoding="utf-8", errors="replace",
                                       bufsize=1)
        job.update(state=RUNNING, device=",".join(devices), pid=process.pid, started_at=time.time(), attempts=job["attempts"] + 1,
                   stop_requested=False, reported_position=None)
        self._processes[job["id"]] = process
        self._save()
        reader = threading.Thread(target=self._read_worker, args=(job["id"], process), daemon=True,
                                  name=f"semisupseg job {job['id']}")
        self._readers[job["id"]] = reader
        reader.start()

    def _read_worker(self, job_id: str, process: subprocess.Popen) -> None:
        """The worker's stdout -> the job's event log; at the end, the job's final state."""
        job = self._jobs[job_id]
        run_dir = self.run_dir(job)
        last_terminal = None
        for line in process.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or "event" not in event:
                continue
            event = relative_paths(event, run_dir)
            if event["event"] in ("finished", "cancelled", "error"):
                last_terminal = event
            self._append_event(job_id, event)
        process.stdout.close()
        returncode = process.wait()
        with self._lock:
            self._processes.pop(job_id, None)
            state, error = self._outcome(job, last_terminal, returncode)
            job["returncode"] = returncode
            if state == INTERRUPTED:
                self._server_event(job_id, "interrupted", **self._interruption_message(job))
            elif error and (last_terminal is None or last_terminal["event"] != "error"):
                self._server_event(job_id, "error", **error)
            self._finish(job, state, error)
            self._schedule()

    def _outcome(self, job: dict, terminal: Optional[dict], returncode: int) -> Tuple[str, Optional[dict]]:
        kind = terminal["event"] if terminal else None
        if kind == "finished":
            return FINISHED, None
        if kind == "error":
            return FAILED, {"message": terminal.get("message", ""), "hint": terminal.get("hint", "")}
        if self._shutting_down and not job.get("stop_requested"):
            return INTERRUPTED, None
        if kind == "cancelled" or job.get("stop_requested"):
            return CANCELLED, None
        if returncode == 0:
            return FINISHED, None
        tail = _tail(self.jobs_dir / job["id"] / "worker.log")
        return FAILED, {"message": f"The training worker exited with code {returncode}: "
                                   f"{tail.splitlines()[-1] if tail else 'no output on stderr'}",
                        "hint": f"The worker's log is ROOT/jobs/{job['id']}/worker.log on the server."}

    def _interruption_message(self, job: dict) -> dict:
        checkpoint = (self.run_dir(job) / "checkpoints" / "last.pt").exists()
        return {"message": f"The server stopped while run {job['run_id']} was training"
                           + ("; its last checkpoint is kept." if checkpoint else " (before its first checkpoint)."),
                "hint": f"Resume it: POST /api/v1/jobs/{job['id']}/resume"
                        + (" (it continues from the checkpoint)." if checkpoint else " (it starts again).")}

    def _finish(self, job: dict, state: str, error: Optional[dict]) -> None:
        job.update(state=state, error=error, ended_at=time.time(), pid=None)
        self._save()

    def _request_stop(self, job: dict) -> None:
        """STOP file now; SIGTERM after ``stop_grace`` s, SIGKILL after TERMINATE_GRACE_S more (in a thread)."""
        run_dir = self.run_dir(job)
        with atomic_output(run_dir / "STOP") as tmp:
            Path(tmp).write_text("stop requested through the SemiSupSeg server\n", encoding="utf-8")
        process = self._processes.get(job["id"])
        if process is None:
            return

        def escalate() -> None:
            for sig, grace in ((signal.SIGTERM, self.stop_grace), (signal.SIGKILL, TERMINATE_GRACE_S)):
                try:
                    process.wait(grace)
                    return
                except subprocess.TimeoutExpired:
                    _signal_group(process.pid, sig)

        threading.Thread(target=escalate, daemon=True, name=f"semisupseg stop {job['id']}").start()

    # -- restart ----------------------------------------------------------------------------

    def _reconcile_after_restart(self) -> None:
        """Jobs the previous server left ``running``: stop a surviving worker, then mark them interrupted
        (or finished / cancelled when the run's own events say the worker got there)."""
        for job in self._jobs.values():
            if job["state"] != RUNNING:
                continue
            pid = job.get("pid")
            if pid and is_worker_of(pid, job["run_id"]):
                _signal_group(pid, signal.SIGTERM)
                _wait_for_exit(pid, TERMINATE_GRACE_S) or _signal_group(pid, signal.SIGKILL)
            last = _last_run_event(self.run_dir(job) / "events.jsonl", since=job.get("started_at") or 0)
            if last == "finished":
                self._server_event(job["id"], "finished", message="The run finished while the server was away.")
                self._finish(job, FINISHED, None)
            elif last == "cancelled" and job.get("stop_requested"):
                self._finish(job, CANCELLED, None)
            else:
                self._server_event(job["id"], "interrupted", **self._interruption_message(job))
                self._finish(job, INTERRUPTED, None)


def _signal_group(pid: int, sig) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` is gone (not our child any more after a restart, so no ``wait``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        state = _proc_state(pid)
        if state == "Z":  # a zombie of the dead server, reaped by init soon: it is over
            return True
        time.sleep(0.2)
    return False


def _proc_state(pid: int) -> Optional[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _last_run_event(path: Path, since: float) -> Optional[str]:
    """The kind of the last finished/cancelled/error event written after ``since`` in a run's events.jsonl."""
    if not path.exists():
        return None
    last = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") in ("finished", "cancelled", "error") and event.get("time", 0) >= since:
            last = event["event"]
    return last


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    with open(path, encoding="utf-8", errors="replace") as stream:
        return "".join(collections.deque(stream, maxlen=lines)).rstrip()
