"""Training on a remote ``semisupseg serve``: the same interface as ``TrainingJob``, standard library only.

``RemoteTrainingJob`` does all its network work in one daemon thread (never in the caller's, so
the GUI never freezes): it checks the server and the token, creates the workspace there, uploads
the files whose SHA-256 differs from the server's copy (``upload`` events with progress;
``dataset.json`` last, so the server never sees a case whose files are missing), queues the
training, then long-polls the job's events. Prediction, uncertainty and ``regions.json`` files are
downloaded into the local ``runs/<id>/`` before their event is queued, and the event's paths are
rewritten to the local copies, so the widget loads results exactly as for a local run.

Failures become one ``error`` event with a message and a hint (and state ``failed``): server not
reachable, token refused, a server that restarted during training (its ``interrupted`` event:
resume with ``resume=True`` and the same ``runId``), or the connection lost for longer than
``reconnectSeconds``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import queue
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .training_job import CANCELLED, FAILED, FINISHED, RUNNING, STARTING, drainEvents

SERVER_ACTIVE = ("queued", "running")
SERVER_TERMINAL = {"finished": FINISHED, "cancelled": CANCELLED, "failed": FAILED, "interrupted": FAILED}
DOWNLOADED_FIELDS = ("segmentation", "uncertainty", "mutual_information")
HASH_CHUNK = 1 << 20
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class RemoteError(Exception):
    """A failure worth one clear message in the error panel."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


class _Cancelled(Exception):
    """The user stopped the job before it reached the server's queue."""


def fileSha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


HASH_CACHE = ".semisupseg-remote-hashes.json"


def cachedSha256(workspaceDir, relativePaths) -> dict:
    """``{relative path: sha256}``, rehashing only files whose size or modification time changed since
    the last call (``<workspace>/.semisupseg-remote-hashes.json``, written atomically), so a Train on a
    large workspace does not read every volume again."""
    workspaceDir = Path(workspaceDir)
    cachePath = workspaceDir / HASH_CACHE
    try:
        cache = json.loads(cachePath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    digests, fresh = {}, {}
    for relative in relativePaths:
        info = (workspaceDir / relative).stat()
        stamp = [info.st_size, info.st_mtime_ns]
        entry = cache.get(relative)
        if not (isinstance(entry, list) and entry[:2] == stamp):
            entry = stamp + [fileSha256(workspaceDir / relative)]
        digests[relative], fresh[relative] = entry[2], entry
    if fresh != cache:
        fd, tmp = tempfile.mkstemp(prefix=f"{HASH_CACHE}.tmp-", dir=workspaceDir)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(fresh, stream)
        os.replace(tmp, cachePath)
    return digests


def remoteWorkspaceName(workspaceDir) -> str:
    """``<folder name>-<8 hex of the absolute path>``: two local workspaces never share a server workspace."""
    path = Path(workspaceDir).resolve()
    stem = SAFE_NAME.sub("-", path.name).strip(".-_")[:60] or "workspace"
    return f"{stem}-{hashlib.sha256(str(path).encode('utf-8')).hexdigest()[:8]}"


def workspaceUploads(workspaceDir) -> list[str]:
    """Relative paths to send: every case's image and label named in dataset.json, reviewed_regions.json, dataset.json last."""
    workspaceDir = Path(workspaceDir)
    try:
        description = json.loads((workspaceDir / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RemoteError(f"Cannot read {workspaceDir / 'dataset.json'}: {error}.",
                          "Write the workspace from the scene first (Train does it).") from None
    paths = []
    for case in description.get("cases", []):
        for key in ("image", "label"):
            value = case.get(key)
            if value:
                relative = Path(value).as_posix().removeprefix("./")
                if relative.split("/")[0] not in ("images", "labels") or ".." in relative.split("/"):
                    raise RemoteError(f"Case {case.get('id')}: {value} is outside images/ and labels/.",
                                      "Write the workspace again from the scene (the module keeps files there).")
                if not (workspaceDir / relative).is_file():
                    raise RemoteError(f"Case {case.get('id')}: {workspaceDir / relative} does not exist.",
                                      "Write the workspace again from the scene (Train does it).")
                paths.append(relative)
    if (workspaceDir / "reviewed_regions.json").exists():
        paths.append("reviewed_regions.json")
    return list(dict.fromkeys(paths)) + ["dataset.json"]


class RemoteTrainingJob:
    """A training run on a ``semisupseg serve`` server, seen like a local ``TrainingJob``.

    Attributes: ``runId``, ``workspaceDir`` and ``runDir`` (local; results are downloaded there),
    ``serverUrl``, ``remoteWorkspace``, ``jobId`` (once queued), ``logLines``, ``uploaded`` and
    ``skipped`` (relative paths of this start's upload).
    """

    def __init__(self, serverUrl: str, token: str, workspaceDir, config: dict, runId: str, resume: bool = False,
                 initFrom: str | None = None, iterations: int | None = None, continuous: bool = False,
                 remoteWorkspace: str | None = None, pollWait: float = 10.0, reconnectSeconds: float = 60.0,
                 requestTimeout: float = 30.0, gpus: int = 1):
        self.serverUrl = serverUrl.rstrip("/")
        self._token = token.strip()
        self.workspaceDir = Path(workspaceDir)
        self.runId = runId
        self.runDir = self.workspaceDir / "runs" / runId
        self.createdRunDir = not self.runDir.exists()  # only then may a refused run's folder go
        self.runDir.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        self.resume, self.initFrom, self.iterations, self.continuous = resume, initFrom, iterations, continuous
        self.gpus = int(gpus)  # > 1: the server trains on that many GPUs under torchrun (DDP)
        self.remoteWorkspace = remoteWorkspace or remoteWorkspaceName(workspaceDir)
        self.pollWait, self.reconnectSeconds, self.requestTimeout = pollWait, reconnectSeconds, requestTimeout
        self.jobId: str | None = None
        self.uploaded: list[str] = []
        self.skipped: list[str] = []
        self.logLines: collections.deque[str] = collections.deque(maxlen=1000)
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._started = False
        self._progress: dict | None = None
        self._errorEvent: dict | None = None
        self._finalState: str | None = None
        self._stopRequested = threading.Event()
        self._noticed = False  # one "connection lost" notice per outage
        self._thread = threading.Thread(target=self._run, name=f"SemiSupSeg remote {runId}", daemon=True)
        self._thread.start()

    # -- public (the TrainingJob interface) ----------------------------------------------------

    def pollEvents(self) -> list[dict]:
        """Events received since the previous call, oldest first."""
        return drainEvents(self._events)

    @property
    def state(self) -> str:
        """``starting`` (checking, uploading, queued) -> ``running`` -> ``finished`` | ``cancelled`` | ``failed``."""
        with self._lock:
            if self._finalState is not None and not self._thread.is_alive():
                return self._finalState
            return RUNNING if self._started else STARTING

    @property
    def returncode(self) -> int | None:
        """None while the job is going on; 0 finished or cancelled; 1 failed (as the local worker's exit code)."""
        state = self.state
        if state in (STARTING, RUNNING):
            return None
        return 1 if state == FAILED else 0

    @property
    def progress(self) -> dict | None:
        with self._lock:
            return self._progress

    @property
    def error(self) -> dict | None:
        with self._lock:
            if self._errorEvent is None:
                return None
            return {"message": self._errorEvent.get("message", ""), "hint": self._errorEvent.get("hint", "")}

    def stderrTail(self, lines: int = 20) -> str:
        return "\n".join(list(self.logLines)[-lines:])

    @property
    def refused(self) -> bool:
        """Failed before the server queued the run (server or token refused, configuration refused,
        upload refused): nothing was trained, the local run folder holds only this job's events."""
        return self.state == FAILED and self.jobId is None

    def discardIfRefused(self) -> bool:
        """Remove the local run folder of a refused run this job created; ``error`` keeps the reason."""
        if not (self.createdRunDir and self.runDir.exists() and self.refused):
            return False
        shutil.rmtree(self.runDir, ignore_errors=True)
        return not self.runDir.exists()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the job has ended on the server (TimeoutError after ``timeout`` s)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"Remote run {self.runId} still going after {timeout} s")
        return self.returncode

    def requestStop(self) -> None:
        """Ask for a stop; the network thread sends it (returns at once)."""
        self._stopRequested.set()

    def stop(self, timeout: float = 60) -> None:
        """Ask the server to stop the run (checkpoint, then exit) and wait up to ``timeout`` s for it."""
        self.requestStop()
        self._thread.join(timeout)

    # -- the network thread -------------------------------------------------------------------

    def _run(self) -> None:
        final = FAILED
        try:
            self._request("GET", "/server")
            self._request("POST", "/workspaces", {"name": self.remoteWorkspace})
            self._upload()
            if self._stopRequested.is_set():
                raise _Cancelled()
            job = self._request("POST", "/jobs", self._jobRequest())
            self.jobId = job["id"]
            self._log(f"queued as job {self.jobId} on {self.serverUrl}")
            final = self._follow()
        except _Cancelled:
            self._emit({"event": "cancelled", "message": "Stopped before the training was queued on the server."})
            final = CANCELLED
        except RemoteError as error:
            self._fail(error.message, error.hint)
        except Exception as error:  # noqa: BLE001 - any surprise must still end in an error event, not a silent thread
            self._fail(f"Remote training failed: {type(error).__name__}: {error}",
                       "This is a bug in SemiSupSeg; please report it with the Python console's output.")
        with self._lock:
            self._finalState = final if self._errorEvent is None else FAILED

    def _jobRequest(self) -> dict:
        request = {"workspace": self.remoteWorkspace, "run_id": self.runId, "resume": self.resume,
                   "config": {k: v for k, v in self.config.items() if k not in ("device", "init_from")},
                   "continuous": self.continuous}
        if self.initFrom:
            request["init_from"] = Path(str(self.initFrom)).name  # a local run folder -> its run id
        if self.iterations is not None:
            request["iterations"] = self.iterations
        if self.gpus > 1:
            request["gpus"] = self.gpus
        return request

    def _upload(self) -> None:
        """Send the files whose SHA-256 differs from the server's copy, one ``upload`` event per file."""
        paths = workspaceUploads(self.workspaceDir)
        remote = self._request("GET", f"/workspaces/{self.remoteWorkspace}/files")["files"]
        digests = cachedSha256(self.workspaceDir, paths)
        changed = [path for path in paths if remote.get(path, {}).get("sha256") != digests[path]]
        self.skipped = [path for path in paths if path not in changed]
        totalBytes = sum((self.workspaceDir / path).stat().st_size for path in changed)
        sentBytes = 0
        for index, path in enumerate(changed, start=1):
            if self._stopRequested.is_set():
                raise _Cancelled()
            size = (self.workspaceDir / path).stat().st_size
            with open(self.workspaceDir / path, "rb") as body:
                self._request("PUT", f"/workspaces/{self.remoteWorkspace}/files/{path}", body=body,
                              headers={"X-Content-SHA256": digests[path], "Content-Length": str(size),
                                       "Content-Type": "application/octet-stream"})
            sentBytes += size
            self.uploaded.append(path)
            self._emit({"event": "upload", "file": path, "done": index, "count": len(changed),
                        "bytes": sentBytes, "total_bytes": totalBytes, "unchanged": len(self.skipped)})
        if not changed:
            self._emit({"event": "upload", "file": None, "done": 0, "count": 0, "bytes": 0, "total_bytes": 0,
                        "unchanged": len(self.skipped)})

    def _follow(self) -> str:
        """Long-poll the job's events until it ends; returns the final state."""
        offset, stopSent, lostSince = 0, False, None
        while True:
            if self._stopRequested.is_set() and not stopSent:
                try:
                    self._request("POST", f"/jobs/{self.jobId}/stop")
                    stopSent = True
                except RemoteError as error:
                    self._log(f"stop request failed: {error.message}")
            try:
                reply = self._request("GET", f"/jobs/{self.jobId}/events?offset={offset}&wait={self.pollWait}",
                                      timeout=self.pollWait + self.requestTimeout)
            except _ConnectionLost as lost:
                lostSince = lostSince or time.monotonic()
                if time.monotonic() - lostSince > self.reconnectSeconds:
                    raise RemoteError(f"Lost the connection to the SemiSupSeg server at {self.serverUrl} for more than "
                                      f"{self.reconnectSeconds:.0f} s ({lost}).",
                                      "Check the server (or the SSH tunnel). When it is back, train again with "
                                      f"'resume' for run {self.runId}: it continues from its last checkpoint.")
                if not self._noticed:
                    self._noticed = True
                    self._emit({"event": "notice", "message": f"Lost the connection to {self.serverUrl}; retrying."})
                time.sleep(min(2.0, self.pollWait))
                continue
            if lostSince is not None:
                self._emit({"event": "notice", "message": f"Reconnected to {self.serverUrl}."})
                lostSince, self._noticed = None, False
            for event in reply["events"]:
                self._deliver(event)
            offset = reply["next_offset"]
            if reply["state"] not in SERVER_ACTIVE and not reply["events"]:
                return self._ended(reply)

    def _ended(self, reply: dict) -> str:
        state = reply["state"]
        self._download("regions.json", optional=True)
        if state == "interrupted" and self._errorEvent is None:
            self._fail(f"The SemiSupSeg server restarted while run {self.runId} was training; its last checkpoint is kept.",
                       f"Train again with 'resume' for run {self.runId} to continue from the checkpoint.")
        elif state == "failed" and self._errorEvent is None:
            error = reply.get("error") or {}
            self._fail(error.get("message") or "The remote training failed.", error.get("hint", ""))
        return SERVER_TERMINAL.get(state, FAILED)

    def _deliver(self, event: dict) -> None:
        """Download what the event names, point its paths at the local copies, queue it."""
        kind = event.get("event")
        event = dict(event)
        if kind == "prediction":
            for key in DOWNLOADED_FIELDS:
                if isinstance(event.get(key), str):
                    event[key] = str(self._download(event[key]))
        elif kind == "regions":
            event["path"] = str(self._download("regions.json", optional=True) or "")
        elif kind == "started":
            event["run_dir"] = str(self.runDir)
            self._download("config.json", optional=True)
        elif kind == "checkpoint":
            event["path"] = f"{self.serverUrl} (server): {event.get('path')}"
        if kind == "interrupted":
            self._fail(event.get("message", "The server stopped during training."), event.get("hint", ""),
                       source=event)
            return
        if kind == "error" and event.get("source") == "server" and self._errorEvent is not None:
            return
        self._emit(event)

    def _download(self, relative: str, optional: bool = False) -> Path | None:
        """``runs/<id>/<relative>`` from the server into the local run folder (atomically)."""
        parts = [part for part in relative.split("/") if part]
        if not parts or any(part in ("..", ".") or part.startswith(".") for part in parts):
            raise RemoteError(f"The server named an unexpected file {relative!r}.", "Check the server's version.")
        target = self.runDir.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        url = f"/workspaces/{self.remoteWorkspace}/runs/{self.runId}/files/{'/'.join(parts)}"
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.download-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as stream:
                self._request("GET", url, streamTo=stream)
            os.replace(tmp, target)
        except RemoteError as error:
            os.remove(tmp)
            if optional and getattr(error, "status", None) == 404:
                return None
            raise
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return target

    # -- events -------------------------------------------------------------------------------

    def _emit(self, event: dict) -> None:
        kind = event.get("event")
        with self._lock:
            if kind in ("started", "progress"):
                self._started = True
            if kind == "progress":
                self._progress = event
            if kind == "error":
                self._errorEvent = event
        self._appendLocalEvent(event)
        self._events.put(event)

    def _fail(self, message: str, hint: str, source: dict | None = None) -> None:
        event = {"event": "error", "message": message, "hint": hint, "time": round(time.time(), 3)}
        if source is not None:
            event["server_event"] = source.get("event")
        self._log(f"error: {message}")
        self._emit(event)

    def _appendLocalEvent(self, event: dict) -> None:
        """The local ``runs/<id>/events.jsonl`` gets the same events (tools that read it keep working)."""
        try:
            with open(self.runDir / "events.jsonl", "a", encoding="utf-8") as stream:
                stream.write(json.dumps(event) + "\n")
        except OSError:
            pass

    def _log(self, line: str) -> None:
        self.logLines.append(line)

    # -- HTTP ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, payload: dict | None = None, body=None, headers: dict | None = None,
                 timeout: float | None = None, streamTo=None):
        """One API call; JSON in and out (``streamTo``: the body copied into that binary file in chunks,
        None returned). Failures -> RemoteError / _ConnectionLost."""
        url = f"{self.serverUrl}/api/v1{path if path.startswith('/') else '/' + path}"
        allHeaders = {"Authorization": f"Bearer {self._token}", **(headers or {})}
        if payload is not None:
            body = json.dumps(payload).encode("utf-8")
            allHeaders["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=body, method=method, headers=allHeaders)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.requestTimeout) as response:
                if streamTo is not None:
                    for chunk in iter(lambda: response.read(HASH_CHUNK), b""):
                        streamTo.write(chunk)
                    return None
                data = response.read()
        except urllib.error.HTTPError as error:
            raise self._httpError(error, method, path) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            if self.jobId is not None and method == "GET":
                raise _ConnectionLost(str(reason)) from None
            raise RemoteError(f"Cannot reach the SemiSupSeg server at {self.serverUrl}: {reason}.",
                              "Check the URL and that `semisupseg serve` runs there; through an SSH tunnel "
                              "(ssh -L 8765:127.0.0.1:8765 host) the URL is http://127.0.0.1:8765.") from None
        return json.loads(data.decode("utf-8") or "null")

    def _httpError(self, error: urllib.error.HTTPError, method: str, path: str) -> RemoteError:
        try:
            detail = json.loads(error.read().decode("utf-8")).get("detail")
        except (ValueError, AttributeError, OSError):
            detail = None
        if error.code == 401:
            result = RemoteError(f"The SemiSupSeg server at {self.serverUrl} refused the access token.",
                                 "Copy the token from the server's ROOT/.semisupseg-token (printed at its first start) "
                                 "into the module's remote-server settings.")
        elif isinstance(detail, dict):
            result = RemoteError(f"Server: {detail.get('message', error.reason)}", detail.get("hint", ""))
        else:
            result = RemoteError(f"Server answered {error.code} {error.reason} to {method} {path}: {detail}",
                                 "Check that the server runs the same SemiSupSeg version.")
        result.status = error.code
        return result


class _ConnectionLost(Exception):
    """The server did not answer while a job was being followed (it may be restarting)."""
