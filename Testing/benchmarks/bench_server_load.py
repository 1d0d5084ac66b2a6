"""Load check of ``semisupseg serve`` (a benchmark, not a test): pollers and uploaders at once.

A server is started on 127.0.0.1 (its own process, a fresh root under ``.bench/server_load``)
with one tiny continuous training job (so the event log grows while it is read). Then, for
``--duration`` seconds, ``--pollers`` clients poll that job's events (``wait=0``, then a short
pause) and ``--uploaders`` clients upload ``--upload-kb`` KiB files (a new random body each time,
checksummed) into their own workspace. Every loop is bounded by the deadline; every request has a
timeout.

Reported (one JSON record on stdout, a readable summary on stderr): requests served per kind,
failures, latency p50 / p95 / max per kind, and "nothing lost": every poller's concatenated events
equal the prefix of the job's own event log (no gap, no duplicate, no reordering), and every
upload that returned 200 is on the server with the same SHA-256 (the last body sent for each name).

Latencies are measured in the client threads (Python threads share one interpreter with the
other clients): on a small machine they include the clients' own contention.

    .venv/bin/python Testing/benchmarks/bench_server_load.py --duration 60
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_common as bc  # noqa: E402

MODULE_DIR = bc.REPO / "SemiSupSeg"
TRAINING = {"method": "supervised", "iterations": 0, "network_options": {"widths": [4, 8, 16, 32, 64]},
            "patch_size": [32, 32, 16], "batch_labelled": 1, "log_every": 1, "predict_cases": "none",
            "checkpoint_every": 50}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--pollers", type=int, default=20)
    parser.add_argument("--uploaders", type=int, default=4)
    parser.add_argument("--upload-kb", type=int, default=512, help="size of each uploaded file in KiB")
    parser.add_argument("--poll-pause", type=float, default=0.2, help="seconds between a poller's requests")
    parser.add_argument("--root", type=Path, default=bc.BENCH_DIR / "server_load", help="server root (wiped)")
    return parser.parse_args(argv)


class Api:
    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def call(self, method: str, path: str, payload=None, body: bytes | None = None, headers=None):
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        if payload is not None:
            body = json.dumps(payload).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + "/api/v1" + path, data=body, method=method, headers=all_headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


def start_server(root: Path) -> tuple[subprocess.Popen, Api]:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(MODULE_DIR), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "semisupseg", "serve", "--root", str(root), "--port", str(port)],
                               stdout=open(root.parent / "server_load.log", "wb"), stderr=subprocess.STDOUT,
                               env=environment, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        token_file = root / ".semisupseg-token"
        if token_file.exists():
            api = Api(f"http://127.0.0.1:{port}", token_file.read_text().strip())
            try:
                api.call("GET", "/server")
                return process, api
            except OSError:
                pass
        if process.poll() is not None:
            raise RuntimeError("server exited; see " + str(root.parent / "server_load.log"))
        time.sleep(0.5)
    raise RuntimeError("server not ready after 180 s")


def tiny_workspace(api: Api, scratch: Path) -> None:
    """The tests' 3-case workspace, uploaded as workspace 'train'."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("server_helpers", bc.REPO / "Testing" / "engine" / "test_server.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    local = helpers.write_workspace(scratch / "local")
    api.call("POST", "/workspaces", {"name": "train"})
    for relative in sorted(p.relative_to(local).as_posix() for p in local.glob("*/*.nii.gz")) + ["dataset.json"]:
        data = (local / relative).read_bytes()
        api.call("PUT", f"/workspaces/train/files/{relative}", body=data,
                 headers={"X-Content-SHA256": hashlib.sha256(data).hexdigest()})


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: dict[str, list] = {}
        self.failures: dict[str, list] = {}

    def timed(self, kind: str, call):
        started = time.perf_counter()
        try:
            result = call()
        except (OSError, urllib.error.URLError, ValueError) as error:
            with self.lock:
                self.failures.setdefault(kind, []).append(repr(error)[:200])
            return None
        with self.lock:
            self.latencies.setdefault(kind, []).append(time.perf_counter() - started)
        return result


def poller(api: Api, job_id: str, deadline: float, pause: float, recorder: Recorder, received: list) -> None:
    offset = 0
    while time.monotonic() < deadline:
        reply = recorder.timed("poll events", lambda: api.call("GET", f"/jobs/{job_id}/events?offset={offset}&wait=0"))
        if reply is not None:
            received.extend(reply["events"])
            offset = reply["next_offset"]
        time.sleep(pause)


def uploader(api: Api, index: int, deadline: float, size: int, recorder: Recorder, sent: dict) -> None:
    workspace = f"upload{index}"
    api.call("POST", "/workspaces", {"name": workspace})
    rng = np.random.default_rng(index)
    count = 0
    while time.monotonic() < deadline:
        name = f"images/file{count % 8}.nii.gz"  # names are rewritten too: the last body must win
        body = rng.bytes(size)
        digest = hashlib.sha256(body).hexdigest()
        reply = recorder.timed("upload", lambda: api.call("PUT", f"/workspaces/{workspace}/files/{name}", body=body,
                                                          headers={"X-Content-SHA256": digest}))
        if reply is not None:
            sent[(workspace, name)] = digest
        count += 1


def wait_for_training(api: Api, job_id: str, timeout: float = 300.0) -> None:
    """Start the clock only once the worker emits progress (its start-up is not what is measured)."""
    offset, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = api.call("GET", f"/jobs/{job_id}/events?offset={offset}&wait=5")
        if any(event["event"] == "progress" for event in reply["events"]):
            return
        if reply["state"] not in ("queued", "running"):
            raise RuntimeError(f"the training job ended: {reply}")
        offset = reply["next_offset"]
    raise RuntimeError(f"no training progress after {timeout} s")


def percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def main(argv=None) -> int:
    args = parse_args(argv)
    process, api = start_server(args.root)
    try:
        tiny_workspace(api, args.root.parent / "server_load_scratch")
        job = api.call("POST", "/jobs", {"workspace": "train", "run_id": "load", "config": TRAINING, "continuous": True})
        wait_for_training(api, job["id"])
        deadline = time.monotonic() + args.duration
        recorder = Recorder()
        received = [[] for _ in range(args.pollers)]
        sent: dict = {}
        threads = [threading.Thread(target=poller, args=(api, job["id"], deadline, args.poll_pause, recorder, received[i]))
                   for i in range(args.pollers)]
        threads += [threading.Thread(target=uploader, args=(api, i, deadline, args.upload_kb * 1024, recorder, sent))
                    for i in range(args.uploaders)]
        load_before = bc.load_average()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.duration + 120)
        api.call("POST", f"/jobs/{job['id']}/stop")
        log = [json.loads(line) for line in
               (args.root / "jobs" / job["id"] / "events.jsonl").read_text().splitlines()]
        lost_events = sum(1 for events in received if events != log[:len(events)])
        index = {}
        for workspace in {w for w, _ in sent}:
            index.update({(workspace, k): v["sha256"] for k, v in api.call("GET", f"/workspaces/{workspace}/files")["files"].items()})
        on_disk = {key: hashlib.sha256((args.root / "workspaces" / key[0] / key[1]).read_bytes()).hexdigest() for key in sent}
        lost_uploads = sum(1 for key, digest in sent.items() if index.get(key) != digest or on_disk[key] != digest)
        figures = {"duration_s": args.duration, "pollers": args.pollers, "uploaders": args.uploaders,
                   "upload_kib": args.upload_kb, "load_average_before": load_before,
                   "job_events": len(log), "events_received_min": min(len(r) for r in received),
                   "pollers_with_gaps_or_duplicates": lost_events, "upload_names_verified": len(sent) - lost_uploads,
                   "uploads_lost_or_corrupt": lost_uploads}
        for kind in sorted(set(recorder.latencies) | set(recorder.failures)):
            values = recorder.latencies.get(kind, [])
            key = kind.replace(" ", "_")
            figures[f"{key}_served"] = len(values)
            figures[f"{key}_failed"] = len(recorder.failures.get(kind, []))
            figures[f"{key}_p50_ms"] = round(percentile(values, 50), 1)
            figures[f"{key}_p95_ms"] = round(percentile(values, 95), 1)
            figures[f"{key}_max_ms"] = round(percentile(values, 100), 1)
            figures[f"{key}_per_s"] = round(len(values) / args.duration, 1)
        bc.emit(bc.record("server_load", "load", f"{args.pollers}x{args.uploaders}", "cpu", **figures))
        for key, value in figures.items():
            bc.log(f"{key:34s} {value}")
        failures = {kind: errors[:3] for kind, errors in recorder.failures.items()}
        if failures:
            bc.log(f"first failures: {failures}")
        return 0 if lost_events == 0 and lost_uploads == 0 else 1
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    sys.exit(main())
