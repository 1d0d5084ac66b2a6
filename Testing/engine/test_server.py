"""``semisupseg serve`` over real HTTP on 127.0.0.1: the server runs as its own process (so it can be
killed), trains with the real worker (a tiny U-Net, a few iterations on 32 x 32 x 24 volumes, CPU).

Covered: the full loop (upload -> train -> events -> download, a partial label with
``ignore_label`` 255 among the uploads), refusals (no token, wrong token, ``..``, absolute paths,
symbolic links out of the workspace, checksum mismatch, oversized uploads announced and streamed,
a dataset.json naming files outside), the queue (one CPU slot: the second job waits with its
position) and a server killed mid-training that, restarted, resumes the job from its checkpoint.

The helpers (``start_server``, ``Client``, ``write_workspace``) are also used by
``Testing/slicer_logic/test_remote_job.py`` and ``Testing/benchmarks/bench_server_load.py``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the server extra: pip install -e '.[server]'")
pytest.importorskip("uvicorn", reason="needs the server extra: pip install -e '.[server]'")
sitk = pytest.importorskip("SimpleITK")

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_DIR = REPOSITORY / "SemiSupSeg"
SIZE = (32, 32, 24)  # (x, y, z)
SPACING = (0.8, 0.9, 1.5)
ORIGIN = (-12.5, 30.25, 7.0)
CENTRES = {"case0": (14, 15, 11), "case1": (18, 16, 12), "case2": (15, 17, 10)}
FAST_CONFIG = {"method": "supervised", "iterations": 4, "network_options": {"widths": [4, 8, 16, 32, 64]},
               "patch_size": [32, 32, 16], "batch_labelled": 1, "log_every": 1}
# A run that goes on until stopped (each iteration checkpoints, so a kill loses at most one).
LONG_CONFIG = {**FAST_CONFIG, "iterations": 100000, "checkpoint_every": 1, "predict_cases": "none"}
UPLOAD_LIMIT_MB = 1.0


# -- helpers (shared with the remote-job test and the load benchmark) ---------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``python -m semisupseg serve`` in its own process; ``url``, ``token``, ``kill()``, ``close()``."""

    def __init__(self, root: Path, port: int | None = None, max_upload_mb: float = UPLOAD_LIMIT_MB,
                 startup_timeout: float = 180.0):
        self.root, self.port = Path(root), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                       "PYTHONPATH": os.pathsep.join([str(MODULE_DIR), os.environ.get("PYTHONPATH", "")])}
        self.log = open(self.root.parent / f"server-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "semisupseg", "serve", "--root", str(self.root), "--port", str(self.port),
             "--max-upload-mb", str(max_upload_mb)],
            stdout=self.log, stderr=subprocess.STDOUT, env=environment, start_new_session=True)
        self._wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log_text()}")
            token_file = self.root / ".semisupseg-token"
            if token_file.exists():
                self.token = token_file.read_text().strip()
                try:
                    Client(self.url, self.token).get("/server")
                    return
                except (OSError, urllib.error.URLError):
                    pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout} s: {self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return (self.root.parent / f"server-{self.port}.log").read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash or ``kill -9``)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class HttpFailure(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class Client:
    """A minimal JSON client over urllib (the standard library, as the Slicer side uses)."""

    def __init__(self, url: str, token: str | None):
        self.url, self.token = url, token

    def call(self, method: str, path: str, payload=None, body: bytes | None = None, headers=None, raw=False):
        all_headers = dict(headers or {})
        if self.token is not None:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if payload is not None:
            body = json.dumps(payload).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + "/api/v1" + path, data=body, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                data = response.read()
        except urllib.error.HTTPError as error:
            text = error.read()
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = {"text": text.decode(errors="replace")}
            raise HttpFailure(error.code, parsed) from None
        return data if raw else json.loads(data)

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, payload=None):
        return self.call("POST", path, payload=payload if payload is not None else {})

    def upload(self, workspace: str, relative: str, data: bytes, digest: str | None = None):
        return self.call("PUT", f"/workspaces/{workspace}/files/{relative}", body=data,
                         headers={"X-Content-SHA256": digest or hashlib.sha256(data).hexdigest()})

    def events_until(self, job_id: str, done, timeout: float = 300.0, offset: int = 0):
        """Long-poll until ``done(events)`` or the job ends; returns (events, next offset, last reply)."""
        events, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.get(f"/jobs/{job_id}/events?offset={offset}&wait=5")
            events += reply["events"]
            offset = reply["next_offset"]
            if done(events) or (reply["state"] not in ("queued", "running") and not reply["events"]):
                return events, offset, reply
        raise AssertionError(f"job {job_id}: no end after {timeout} s; events {[e['event'] for e in events][-20:]}")


def xyz_image(array: np.ndarray) -> "sitk.Image":
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    return image


def sphere(centre, radius=6.0) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) for n in SIZE], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def write_workspace(root: Path, partial_case: str | None = "case1") -> Path:
    """3 cases (case0 labelled, ``partial_case`` partially labelled: only z < centre annotated, the rest
    255; case2 unlabelled); dataset.json declares ``ignore_label`` 255 when a partial label is there."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    cases = []
    for case_id, centre in CENTRES.items():
        mask = sphere(centre)
        image = (100.0 + 50.0 * mask + rng.normal(0.0, 5.0, SIZE)).astype(np.float32)
        sitk.WriteImage(xyz_image(image), str(root / "images" / f"{case_id}.nii.gz"))
        label = None
        if case_id == "case0" or case_id == partial_case:
            values = mask.astype(np.uint8)
            if case_id == partial_case:
                values[:, :, centre[2]:] = 255  # the upper half is "not annotated"
            label = f"labels/{case_id}.nii.gz"
            sitk.WriteImage(xyz_image(values), str(root / label))
        cases.append({"id": case_id, "image": f"images/{case_id}.nii.gz", "label": label})
    description = {"name": "tiny", "modality": {"0": "MR"}, "labels": {"0": "background", "1": "sphere"},
                   "cases": cases}
    if partial_case:
        description["ignore_label"] = 255
    (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return root


def upload_workspace(client: Client, name: str, local: Path) -> dict:
    """Create ``name`` and upload every file of ``local`` (dataset.json last); returns {path: sha256}."""
    client.post("/workspaces", {"name": name})
    files = sorted(p.relative_to(local).as_posix() for p in local.glob("*/*.nii.gz")) + ["dataset.json"]
    digests = {}
    for relative in files:
        data = (local / relative).read_bytes()
        digests[relative] = client.upload(name, relative, data)["sha256"]
    return digests


# -- fixtures ---------------------------------------------------------------------------------

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server") / "root"
    process = ServerProcess(root)
    yield process
    process.close()


@pytest.fixture
def client(server):
    return Client(server.url, server.token)


# -- tests ------------------------------------------------------------------------------------

def test_token_file_is_private_and_every_request_needs_the_token(server):
    token_file = server.root / ".semisupseg-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert len(server.token) >= 40
    for path in ("/workspaces", "/server", "/docs", "/openapi.json", "/no/such/route"):
        for token in (None, "wrong-" + server.token[6:], server.token[:-1]):
            with pytest.raises(HttpFailure) as refused:
                Client(server.url, token).get(path, raw=True)
            assert refused.value.status == 401, (path, token)
    # FastAPI's default pages outside /api/v1 do not exist (even with the token).
    for path in ("/docs", "/redoc", "/openapi.json"):
        request = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {server.token}"})
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(request, timeout=30)
        assert missing.value.code == 404, path
    spec = Client(server.url, server.token).get("/openapi.json")
    assert "/api/v1/workspaces" in spec["paths"] and "/api/v1/jobs/{job_id}/events" in spec["paths"]
    assert b"SemiSupSeg server API" in Client(server.url, server.token).get("/docs", raw=True)


def test_full_loop_upload_train_events_download(server, client, tmp_path):
    local = write_workspace(tmp_path / "local")
    digests = upload_workspace(client, "loop", local)
    listed = client.get("/workspaces/loop/files")["files"]
    assert {path: entry["sha256"] for path, entry in listed.items()} == digests
    for relative in digests:  # stored byte for byte
        assert (server.root / "workspaces" / "loop" / relative).read_bytes() == (local / relative).read_bytes()
    assert "loop" in [w["name"] for w in client.get("/workspaces")["workspaces"]]

    job = client.call("POST", "/jobs", payload={"workspace": "loop", "run_id": "r1", "config": FAST_CONFIG})
    assert job["state"] in ("queued", "running")
    events, _, reply = client.events_until(job["id"], lambda ev: False)
    kinds = [event["event"] for event in events]
    assert reply["state"] == "finished", events[-3:]
    assert kinds[0] == "queued" and kinds[-1] == "finished" and "progress" in kinds, kinds
    started = next(event for event in events if event["event"] == "started")
    assert started["labelled"] == 2 and started["unlabelled"] == 1 and started["run_dir"] == "."
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4]
    predictions = {event["case"]: event for event in events if event["event"] == "prediction"}
    assert sorted(predictions) == ["case0", "case1", "case2"]
    assert predictions["case2"]["segmentation"] == "predictions/case2.nii.gz"  # run-relative, not a server path

    segmentation = client.get("/workspaces/loop/runs/r1/files/predictions/case2.nii.gz", raw=True)
    uncertainty = client.get("/workspaces/loop/runs/r1/files/" + predictions["case2"]["uncertainty"], raw=True)
    regions = json.loads(client.get("/workspaces/loop/runs/r1/files/regions.json", raw=True))
    assert set(regions["cases"]) == {"case0", "case1", "case2"}
    for name, data in (("seg.nii.gz", segmentation), ("unc.nii.gz", uncertainty)):
        (tmp_path / name).write_bytes(data)
        image = sitk.ReadImage(str(tmp_path / name))
        assert image.GetSize() == SIZE and np.allclose(image.GetSpacing(), SPACING)
    entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "unc.nii.gz")))
    assert entropy.dtype == np.float32 and 0.0 <= entropy.min() and entropy.max() <= 1.0
    files = client.get("/workspaces/loop/runs/r1")["files"]
    assert "checkpoints/last.pt" in files and "regions.json" in files
    assert client.get(f"/jobs/{job['id']}")["state"] == "finished"

    # Continue training: a new run starts from r1's final weights.
    more = client.call("POST", "/jobs", payload={"workspace": "loop", "run_id": "r2", "init_from": "r1",
                                                 "config": {**FAST_CONFIG, "iterations": 2, "predict_cases": "none"}})
    events, _, reply = client.events_until(more["id"], lambda ev: False)
    assert reply["state"] == "finished", events[-3:]
    assert next(e for e in events if e["event"] == "started")["init_from"] is not None
    with pytest.raises(HttpFailure) as refused:  # the server picks the device and the source run's path
        client.call("POST", "/jobs", payload={"workspace": "loop", "config": {"init_from": "/etc"}})
    assert refused.value.status == 400


def test_paths_outside_the_workspace_are_refused(server, client, tmp_path):
    client.post("/workspaces", {"name": "guarded"})
    workspace = server.root / "workspaces" / "guarded"
    outside = tmp_path / "outside"
    outside.mkdir()
    data = b"not an image"
    bad_paths = ["../guarded2/images/a.nii.gz", "images/../../x.nii.gz", "images/..%2F..%2Fx.nii.gz",
                 "/etc/x.nii.gz", "images/.hidden.nii.gz", "runs/r1/checkpoints/last.pt", "other/a.nii.gz",
                 "images/sub/a.nii.gz", "C:/x.nii.gz"]
    for relative in bad_paths:
        with pytest.raises(HttpFailure) as refused:
            client.upload("guarded", relative, data)
        assert refused.value.status in (400, 404), relative
    # A raw request keeps "../" unnormalised (clients like curl --path-as-is send it so).
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("PUT", "/api/v1/workspaces/guarded/files/../../../escaped.nii.gz", body=data,
                       headers={"Authorization": f"Bearer {server.token}",
                                "X-Content-SHA256": hashlib.sha256(data).hexdigest()})
    assert connection.getresponse().status in (400, 404)
    connection.close()
    for name in ("..", ".hidden", "a/b", "a b"):
        with pytest.raises(HttpFailure) as refused:
            client.post("/workspaces", {"name": name})
        assert refused.value.status in (400, 404, 405), name

    # Symbolic links placed inside the workspace do not lead out of it.
    (outside / "target.nii.gz").write_bytes(b"original")
    (workspace / "images" / "link.nii.gz").symlink_to(outside / "target.nii.gz")
    (workspace / "labels").rmdir()
    (workspace / "labels").symlink_to(outside, target_is_directory=True)
    for relative in ("images/link.nii.gz", "labels/new.nii.gz"):
        with pytest.raises(HttpFailure) as refused:
            client.upload("guarded", relative, data)
        assert refused.value.status == 400, relative
    (workspace / "runs" / "r9").mkdir(parents=True)
    (workspace / "runs" / "r9" / "regions.json").symlink_to(outside / "target.nii.gz")
    with pytest.raises(HttpFailure) as refused:
        client.get("/workspaces/guarded/runs/r9/files/regions.json", raw=True)
    assert refused.value.status == 400
    assert (outside / "target.nii.gz").read_bytes() == b"original"
    assert sorted(p.name for p in outside.iterdir()) == ["target.nii.gz"]
    assert not list(server.root.parent.glob("*.nii.gz")) and not (server.root / "escaped.nii.gz").exists()

    # A dataset.json whose cases point outside is refused before it replaces anything.
    evil = {"name": "x", "modality": {"0": "MR"}, "labels": {"0": "bg"},
            "cases": [{"id": "a", "image": "../../../etc/passwd", "label": None}]}
    with pytest.raises(HttpFailure) as refused:
        client.upload("guarded", "dataset.json", json.dumps(evil).encode())
    assert refused.value.status == 400 and not (workspace / "dataset.json").exists()


def test_damaged_and_oversized_uploads_are_refused_and_leave_nothing(server, client):
    client.post("/workspaces", {"name": "limits"})
    images = server.root / "workspaces" / "limits" / "images"
    data = os.urandom(1000)
    with pytest.raises(HttpFailure) as mismatch:
        client.upload("limits", "images/a.nii.gz", data, digest=hashlib.sha256(data[:-1]).hexdigest())
    assert mismatch.value.status == 400 and "checksum mismatch" in mismatch.value.body["detail"]["message"]

    big = b"\0" * int(UPLOAD_LIMIT_MB * 1024 * 1024 + 1)
    try:  # Content-Length over the limit: refused before reading
        client.upload("limits", "images/b.nii.gz", big)
        status = 200
    except HttpFailure as failure:
        status = failure.status
    except urllib.error.URLError as error:
        # The server answers 413 and closes without reading the body; a client still sending it
        # may see the closed socket (broken pipe / reset) before it can read that answer.
        if not isinstance(error.reason, (BrokenPipeError, ConnectionResetError)):
            raise
        status = 413
    assert status == 413

    # Streamed without a length (chunked): refused once the limit is passed.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    try:
        connection.request("PUT", "/api/v1/workspaces/limits/files/images/c.nii.gz", body=chunks,
                           headers={"Authorization": f"Bearer {server.token}", "Transfer-Encoding": "chunked",
                                    "X-Content-SHA256": hashlib.sha256(big).hexdigest()}, encode_chunked=True)
        status = connection.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        status = 413  # the server may close the connection while the body is still being sent
    finally:
        connection.close()
    assert status == 413
    assert list(images.iterdir()) == []  # no file, no temporary left behind
    assert client.get("/workspaces/limits/files")["files"] == {}

    good = client.upload("limits", "images/a.nii.gz", data)  # the same name works with the right digest
    assert good["size"] == 1000 and (images / "a.nii.gz").read_bytes() == data


def _progress_after_restart(events) -> bool:
    """Whether a progress event follows the (last) "started" event: the resumed worker trains."""
    starts = [i for i, e in enumerate(events) if e["event"] == "started"]
    return bool(starts) and any(e["event"] == "progress" for e in events[starts[-1]:])


def test_killed_server_restarts_and_the_job_resumes_from_its_checkpoint(tmp_path):
    root = tmp_path / "root"
    first = ServerProcess(root)
    try:
        client = Client(first.url, first.token)
        digests = upload_workspace(client, "crash", write_workspace(tmp_path / "local"))
        job = client.call("POST", "/jobs", payload={"workspace": "crash", "run_id": "long", "config": LONG_CONFIG})
        waiting = client.call("POST", "/jobs", payload={"workspace": "crash", "run_id": "next", "config": FAST_CONFIG})
        assert waiting["state"] == "queued" and waiting["queue_position"] == 1  # one CPU slot
        events, offset, _ = client.events_until(
            job["id"], lambda ev: any(e["event"] == "progress" and e["iteration"] >= 3 for e in ev))
        assert client.get(f"/jobs/{waiting['id']}")["queue_position"] == 1
        assert client.post(f"/jobs/{waiting['id']}/stop")["state"] == "cancelled"
        worker_pid = client.get(f"/jobs/{job['id']}")["pid"]
        first.kill()
    finally:
        first.close()
    assert os.path.exists(f"/proc/{worker_pid}")  # the worker outlived its server

    second = ServerProcess(root)
    try:
        client = Client(second.url, second.token)
        state = client.get(f"/jobs/{job['id']}")
        assert state["state"] == "interrupted", state
        assert not os.path.exists(f"/proc/{worker_pid}") or _is_zombie(worker_pid)  # stopped by the new server
        files = client.get("/workspaces/crash/files")["files"]
        assert {path: entry["sha256"] for path, entry in files.items()} == digests  # no upload lost
        checkpoint_iteration = _checkpoint_iteration(root / "workspaces" / "crash" / "runs" / "long")
        assert checkpoint_iteration >= 3

        resumed = client.post(f"/jobs/{job['id']}/resume")
        assert resumed["state"] in ("queued", "running")
        more, _, _ = client.events_until(job["id"], _progress_after_restart, offset=offset)
        kinds = [e["event"] for e in more]
        assert "interrupted" in kinds
        restarted = next(e for e in more if e["event"] == "started")
        assert restarted["start_iteration"] == checkpoint_iteration
        # the killed server's worker may have logged progress after `offset` before it was stopped:
        # the resumed worker's first progress is the first one after its "started"
        first_progress = next(e for e in more[more.index(restarted):] if e["event"] == "progress")
        assert first_progress["iteration"] == checkpoint_iteration + 1
        client.post(f"/jobs/{job['id']}/stop")
        _, _, reply = client.events_until(job["id"], lambda ev: False, offset=offset)
        assert reply["state"] == "cancelled"
    finally:
        second.close()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _checkpoint_iteration(run_dir: Path) -> int:
    import torch

    return int(torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["iteration"])


def test_multi_gpu_jobs_wait_for_their_gpus_and_run_under_torchrun(tmp_path, monkeypatch):
    """Scheduling only (no GPU here): slots are given, launches are recorded instead of started."""
    from semisupseg.server.jobs import FINISHED, JobManager, JobRefused

    manager = JobManager(tmp_path / "root", slots=["cuda:0", "cuda:1", "cuda:2"],
                         environment={"CUDA_VISIBLE_DEVICES": "4,5,6", "PATH": os.environ.get("PATH", "")})
    launched = []

    def record(job, devices):
        launched.append((job["run_id"], devices, manager._command(job, devices), manager._worker_environment(devices)))
        job.update(state="running", device=",".join(devices), pid=None)

    monkeypatch.setattr(manager, "_launch", record)
    wide = manager.submit("ws", {}, run_id="wide", gpus=2)
    second = manager.submit("ws", {}, run_id="second", gpus=2)
    small = manager.submit("ws", {}, run_id="small", gpus=1)
    assert [run for run, *_ in launched] == ["wide"]
    _, devices, command, environment = launched[0]
    assert devices == ["cuda:0", "cuda:1"] and environment["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert command[2:6] == ["torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    assert command[command.index("--device") + 1] == "cuda"
    # One GPU is free, but the next job needs two: it waits, and the later 1-GPU job does not overtake it.
    assert manager.describe(second["id"])["queue_position"] == 1
    assert manager.describe(small["id"])["queue_position"] == 2
    manager._finish(manager._jobs[wide["id"]], FINISHED, None)
    manager._schedule()
    assert [run for run, *_ in launched] == ["wide", "second", "small"]
    assert launched[1][1] == ["cuda:0", "cuda:1"] and launched[2][1] == ["cuda:2"]
    assert "torch.distributed.run" not in launched[2][2] and launched[2][2][launched[2][2].index("--device") + 1] == "cuda:2"
    with pytest.raises(JobRefused):
        manager.submit("ws", {}, run_id="too-wide", gpus=4)


def test_live_loop_through_the_server_takes_new_partial_labels_and_predicts_on_request(server, client, tmp_path):
    """A continuous run: a partial label uploaded while it trains joins at the next reload, and a
    predict request is answered with a prediction of that case."""
    local = write_workspace(tmp_path / "local", partial_case=None)
    upload_workspace(client, "live", local)
    config = {**FAST_CONFIG, "iterations": 0, "reload_every": 1, "predict_cases": "none"}
    job = client.call("POST", "/jobs", payload={"workspace": "live", "run_id": "live", "config": config,
                                               "continuous": True})
    events, offset, _ = client.events_until(job["id"], lambda ev: any(e["event"] == "progress" for e in ev))
    started = next(e for e in events if e["event"] == "started")
    assert started["labelled"] == 1 and started["continuous"] is True

    # The annotator accepts a region of case2: a partial label (255 = not annotated) and dataset.json.
    partial = np.full(SIZE, 255, np.uint8)
    inside = sphere(CENTRES["case2"])
    partial[:, :, :CENTRES["case2"][2]] = inside[:, :, :CENTRES["case2"][2]]
    sitk.WriteImage(xyz_image(partial), str(local / "labels" / "case2.partial.nii.gz"))
    description = json.loads((local / "dataset.json").read_text())
    description["ignore_label"] = 255
    description["cases"][2]["label"] = "labels/case2.partial.nii.gz"
    for relative, data in (("labels/case2.partial.nii.gz", (local / "labels" / "case2.partial.nii.gz").read_bytes()),
                           ("dataset.json", json.dumps(description).encode())):
        client.upload("live", relative, data)
    more, offset, _ = client.events_until(
        job["id"], lambda ev: any(e["event"] == "workspace_reloaded" for e in ev), offset=offset)
    reloaded = next(e for e in more if e["event"] == "workspace_reloaded")
    assert "case2" in reloaded["relabelled"] + reloaded["added"] + reloaded["moved"] and reloaded["labelled"] == 2

    assert client.post("/workspaces/live/runs/live/predict", {"cases": ["case2"]}) == {"requested": ["case2"]}
    more, offset, _ = client.events_until(
        job["id"], lambda ev: any(e["event"] == "prediction" for e in ev), offset=offset)
    prediction = next(e for e in more if e["event"] == "prediction")
    assert prediction["case"] == "case2" and prediction["segmentation"] == "predictions/case2.nii.gz"
    assert client.get("/workspaces/live/runs/live/files/predictions/case2.nii.gz", raw=True)[:2] == b"\x1f\x8b"
    client.post(f"/jobs/{job['id']}/stop")
    _, _, reply = client.events_until(job["id"], lambda ev: False, offset=offset)
    assert reply["state"] == "cancelled"


def test_serve_refuses_bad_settings_with_exit_code_2(tmp_path, capsys):
    from semisupseg.cli import main

    file_root = tmp_path / "file"
    file_root.write_text("not a folder")
    assert main(["serve", "--root", str(file_root)]) == 2
    assert main(["serve", "--root", str(tmp_path / "r0"), "--port", "70000"]) == 2
    root = tmp_path / "root"
    root.mkdir()
    token = root / ".semisupseg-token"
    token.write_text("a" * 43)
    token.chmod(0o644)  # readable by every user of the server: refused
    assert main(["serve", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "not a TCP port" in err and "chmod 600" in err
    assert "Traceback" not in err
