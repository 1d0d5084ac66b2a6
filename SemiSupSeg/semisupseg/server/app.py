"""The HTTP API of ``semisupseg serve`` (FastAPI on uvicorn, as MONAI Label uses).

Everything sits under ``/api/v1/`` and needs ``Authorization: Bearer TOKEN`` (checked by an ASGI
middleware before any route runs, so unknown paths and the OpenAPI page are protected as well).
Workspaces live in ``ROOT/workspaces/<name>/`` with the engine's workspace layout; uploads may only
write ``dataset.json``, ``reviewed_regions.json``, ``images/<file>`` and ``labels/<file>``.

Uploads are streamed (``PUT`` with the raw file as the body): the body goes to a hidden temporary
file in the target folder while its SHA-256 and size are counted; a body larger than the limit is
refused (413) as soon as it is, a digest different from the ``X-Content-SHA256`` header is refused
(400), and only a complete, matching file is renamed over the target (``os.replace``), so a label
is either the old or the new one, never half of one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional

from fastapi import APIRouter, Body, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from .. import __version__
from ..atomic import atomic_output
from .jobs import ACTIVE, JobManager, JobRefused
from .security import PathRefused, check_name, safe_join, token_matches

API = "/api/v1"
UPLOAD_TOP = ("images", "labels")
UPLOAD_FILES = ("dataset.json", "reviewed_regions.json")
FILE_INDEX = ".semisupseg-files.json"
DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024**3
MAX_WAIT_S = 30.0
POLL_INTERVAL_S = 0.1


class WorkspaceCreate(BaseModel):
    name: str = Field(description="workspace name: letters, digits, '.', '_', '-'")


class JobCreate(BaseModel):
    workspace: str
    config: dict = Field(default_factory=dict, description="keys of semisupseg.config.DEFAULTS (not init_from/device)")
    run_id: Optional[str] = Field(None, description="run folder name; default: time + random")
    resume: bool = Field(False, description="continue run_id from its checkpoints/last.pt")
    init_from: Optional[str] = Field(None, description="an earlier run of this workspace to start from (continue training)")
    iterations: Optional[int] = Field(None, ge=0)
    continuous: bool = False
    gpus: int = Field(1, ge=1, description="GPUs for this job; more than 1 trains under torchrun (DDP)")


class ResumeRequest(BaseModel):
    iterations: Optional[int] = Field(None, ge=0, description="a new total (extend the run)")


class PredictRequest(BaseModel):
    cases: List[str]


class TokenMiddleware:
    """Refuses every HTTP request without the right bearer token (401) before routing."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            if not token_matches(authorization, self.token):
                response = JSONResponse(
                    {"detail": {"message": "Missing or wrong access token.",
                                "hint": "Send 'Authorization: Bearer TOKEN' with the token from the server's "
                                        "ROOT/.semisupseg-token."}},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def refused(status: int, message: str, hint: str = "") -> HTTPException:
    return HTTPException(status_code=status, detail={"message": message, "hint": hint})


class Workspaces:
    """The workspace folders under ``ROOT/workspaces`` and their upload index (sha256 and size per file)."""

    def __init__(self, root: Path):
        self.base = Path(root) / "workspaces"
        self.base.mkdir(parents=True, exist_ok=True)
        self._locks: dict = {}
        self._guard = threading.Lock()
        self._remove_partial_uploads()

    def _remove_partial_uploads(self) -> None:
        """Temporary files of uploads cut off by a killed server (never renamed, so never used)."""
        for pattern in ("*/.*.upload-*", "*/images/.*.upload-*", "*/labels/.*.upload-*"):
            for leftover in self.base.glob(pattern):
                if leftover.is_file() and not leftover.is_symlink():
                    leftover.unlink()

    def lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def path(self, name: str, must_exist: bool = True) -> Path:
        folder = safe_join(self.base, check_name(name, "workspace"))
        if must_exist and not folder.is_dir():
            raise refused(404, f"No workspace {name!r} on this server.", "Create it: POST /api/v1/workspaces.")
        return folder

    def index(self, name: str) -> dict:
        path = self.path(name) / FILE_INDEX
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def record(self, name: str, relative: str, digest: str, size: int) -> None:
        with self.lock(name):
            index = self.index(name)
            index[relative] = {"sha256": digest, "size": size, "uploaded_at": round(time.time(), 3)}
            with atomic_output(self.path(name) / FILE_INDEX) as tmp:
                Path(tmp).write_text(json.dumps(index, indent=1), encoding="utf-8")

    def summary(self, name: str) -> dict:
        folder = self.path(name)
        dataset = folder / "dataset.json"
        cases = None
        if dataset.exists():
            try:
                cases = len(json.loads(dataset.read_text(encoding="utf-8")).get("cases", []))
            except ValueError:
                cases = None
        runs = sorted(p.name for p in (folder / "runs").iterdir() if p.is_dir()) if (folder / "runs").is_dir() else []
        return {"name": name, "cases": cases, "runs": runs, "files": len(self.index(name))}


def check_dataset_paths(data: bytes) -> None:
    """An uploaded dataset.json must be a workspace description whose files stay inside the workspace."""
    try:
        description = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise refused(400, f"dataset.json is not valid JSON: {error}", "Upload the file the Slicer module wrote.")
    if not isinstance(description, dict) or not isinstance(description.get("cases"), list):
        raise refused(400, "dataset.json has no 'cases' list.", "The server takes the workspace layout (cases with image/label).")
    for case in description["cases"]:
        if not isinstance(case, dict):
            raise refused(400, "dataset.json: every case must be an object with id, image and label.")
        for key in ("image", "label"):
            value = case.get(key)
            if value is None and key == "label":
                continue
            try:
                safe_join(Path(tempfile.gettempdir()), str(value), allowed_top=UPLOAD_TOP)
            except PathRefused as error:
                raise refused(400, f"dataset.json, case {case.get('id')!r}: {error}",
                              "Case files must be images/<file> and labels/<file> inside the workspace.")


def create_app(root: Path, token: str, manager: Optional[JobManager] = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    """The application; ``manager`` defaults to a JobManager on ``root`` (one slot per GPU, else the CPU)."""
    root = Path(root)
    workspaces = Workspaces(root)
    state = {"manager": manager}

    def jobs() -> JobManager:
        if state["manager"] is None:
            state["manager"] = JobManager(root)
        return state["manager"]

    async def lifespan(app):
        jobs()
        yield
        await asyncio.to_thread(jobs().shutdown)

    app = FastAPI(title="SemiSupSeg server", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan, description="Remote training worker of the SemiSupSeg 3D Slicer extension.")
    router = APIRouter(prefix=API)

    @app.exception_handler(PathRefused)
    async def path_refused(request, error: PathRefused):
        return JSONResponse({"detail": {"message": str(error), "hint": "Paths must stay inside the workspace."}},
                            status_code=400)

    @app.exception_handler(JobRefused)
    async def job_refused(request, error: JobRefused):
        return JSONResponse({"detail": {"message": error.message, "hint": error.hint}}, status_code=error.status)

    @router.get("/server", summary="Server version, device slots and limits")
    def server_info():
        return {"version": __version__, "slots": jobs().slots, "max_upload_bytes": max_upload_bytes,
                "queued": sum(1 for job in jobs().list() if job["state"] == "queued")}

    @router.get("/workspaces", summary="List the workspaces")
    def list_workspaces():
        names = sorted(p.name for p in workspaces.base.iterdir() if p.is_dir() and not p.is_symlink()
                       and not p.name.startswith("."))
        return {"workspaces": [workspaces.summary(name) for name in names]}

    @router.post("/workspaces", status_code=201, summary="Create a workspace (existing: returned as is)")
    def create_workspace(request: WorkspaceCreate):
        folder = workspaces.path(request.name, must_exist=False)
        created = not folder.exists()
        for sub in ("images", "labels", "runs"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {**workspaces.summary(request.name), "created": created}

    @router.get("/workspaces/{workspace}", summary="A workspace: cases, runs, uploaded files")
    def get_workspace(workspace: str):
        return workspaces.summary(workspace)

    @router.get("/workspaces/{workspace}/files", summary="Uploaded files with their SHA-256 and size")
    def list_files(workspace: str):
        folder = workspaces.path(workspace)
        index = workspaces.index(workspace)
        present = {path: entry for path, entry in index.items() if (folder / path).is_file()}
        return {"files": present}

    @router.put("/workspaces/{workspace}/files/{path:path}", summary="Upload a file (raw body, streamed)",
                description="Body: the file's bytes. Header X-Content-SHA256: its hex digest. Allowed paths: "
                            "dataset.json, reviewed_regions.json, images/<file>, labels/<file> (partial labels "
                            "too: dataset.json may declare \"ignore_label\": 255).")
    async def upload(workspace: str, path: str, request: Request,
                     x_content_sha256: str = Header(..., description="hex SHA-256 of the body")):
        folder = workspaces.path(workspace)
        if path in UPLOAD_FILES:
            target = safe_join(folder, path)
        else:
            target = safe_join(folder, path, allowed_top=UPLOAD_TOP)
            if len(path.split("/")) != 2:
                raise refused(400, f"path {path!r}: only images/<file> and labels/<file> (one level) are accepted.")
        expected = x_content_sha256.strip().lower()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise refused(413, f"{path}: {int(declared)} bytes is over this server's limit of {max_upload_bytes}.",
                          "Ask the server's administrator for a larger --max-upload-mb.")
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise refused(400, f"{path} exists on the server and is not a plain file: refused.")
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = await receive_to(target, request, expected, max_upload_bytes, path,
                                        check=check_dataset_paths if path == "dataset.json" else None)
        await asyncio.to_thread(workspaces.record, workspace, path, digest, size)
        return {"path": path, "sha256": digest, "size": size}

    @router.get("/workspaces/{workspace}/runs/{run}", summary="A run's files (predictions, uncertainty, regions.json, ...)")
    def run_files(workspace: str, run: str):
        run_dir = safe_join(workspaces.path(workspace), f"runs/{check_name(run, 'run')}")
        if not run_dir.is_dir():
            raise refused(404, f"No run {run!r} in workspace {workspace!r}.")
        files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")
                       if p.is_file() and not p.is_symlink() and not p.name.startswith("."))
        return {"run": run, "files": files}

    @router.get("/workspaces/{workspace}/runs/{run}/files/{path:path}", summary="Download a file of a run")
    def download(workspace: str, run: str, path: str):
        run_dir = safe_join(workspaces.path(workspace), f"runs/{check_name(run, 'run')}")
        target = safe_join(run_dir, path)
        if not target.is_file():
            raise refused(404, f"Run {run} has no file {path}.", "List them: GET .../runs/{run}.")
        return FileResponse(target, media_type="application/octet-stream", filename=target.name)

    @router.post("/workspaces/{workspace}/runs/{run}/predict", summary="Ask the running worker to predict cases")
    def predict(workspace: str, run: str, request: PredictRequest):
        workspaces.path(workspace)
        for case in request.cases:
            check_name(case, "case id")
        jobs().request_prediction(workspace, check_name(run, "run"), request.cases)
        return {"requested": request.cases}

    @router.get("/jobs", summary="All jobs with state and queue position")
    def list_jobs():
        return {"jobs": jobs().list()}

    @router.post("/jobs", status_code=201, summary="Start (queue) a training")
    def create_job(request: JobCreate):
        workspace_dir = workspaces.path(request.workspace)
        if not (workspace_dir / "dataset.json").is_file():
            raise refused(400, f"Workspace {request.workspace} has no dataset.json yet.", "Upload it first.")
        for key in ("init_from", "device"):
            if key in request.config:
                raise refused(400, f"config key {key!r} is chosen by the server.",
                              "Give init_from as the job's own field; the server picks the device.")
        if request.init_from:
            source = safe_join(workspace_dir, f"runs/{check_name(request.init_from, 'init_from run')}")
            if not (source / "checkpoints" / "last.pt").is_file():
                raise refused(400, f"Run {request.init_from} has no checkpoint to start from.")
        if request.resume and not request.run_id:
            raise refused(400, "resume needs the run_id to continue.")
        return jobs().submit(request.workspace, request.config, request.run_id, request.resume, request.init_from,
                             request.iterations, request.continuous, request.gpus)

    @router.get("/jobs/{job_id}", summary="A job: state, queue position, error")
    def get_job(job_id: str):
        return jobs().describe(check_name(job_id, "job id"))

    @router.post("/jobs/{job_id}/stop", summary="Stop a job (queued: cancelled; running: checkpoint, then exit)")
    def stop_job(job_id: str):
        return jobs().stop(check_name(job_id, "job id"))

    @router.post("/jobs/{job_id}/resume", summary="Queue an interrupted/cancelled/failed job again from its checkpoint")
    def resume_job(job_id: str, request: ResumeRequest = Body(default_factory=ResumeRequest)):
        return jobs().resume(check_name(job_id, "job id"), request.iterations)

    @router.get("/jobs/{job_id}/events", summary="The job's events from an offset (long polling)",
                description="Returns at once when events past `offset` exist, else waits up to `wait` seconds. "
                            "Pass the returned next_offset on the next call.")
    async def job_events(job_id: str, offset: int = Query(0, ge=0), wait: float = Query(0.0, ge=0.0)):
        check_name(job_id, "job id")
        deadline = time.monotonic() + min(wait, MAX_WAIT_S)
        while True:
            events, next_offset = jobs().events_since(job_id, offset)
            job = jobs().describe(job_id)
            if events or job["state"] not in ACTIVE or time.monotonic() >= deadline:
                return {"events": events, "next_offset": next_offset, "state": job["state"],
                        "queue_position": job["queue_position"], "error": job["error"]}
            await asyncio.sleep(POLL_INTERVAL_S)

    app.include_router(router)

    @app.get(f"{API}/openapi.json", include_in_schema=False)
    def openapi():
        return app.openapi()

    @app.get(f"{API}/docs", include_in_schema=False)
    def docs():
        spec = json.dumps(app.openapi()).replace("</", "<\\/")
        return HTMLResponse(SWAGGER_PAGE.replace("SPEC_JSON", spec))

    return TokenMiddleware(app, token)


async def receive_to(target: Path, request: Request, expected: str, limit: int, name: str, check=None):
    """Stream the request body to a temporary file beside ``target``; rename only when complete and matching."""
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.upload-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise refused(413, f"{name}: over this server's upload limit of {limit} bytes.",
                                  "Ask the server's administrator for a larger --max-upload-mb.")
                digest.update(chunk)
                stream.write(chunk)
            # fsync may wait for the disk: off the event loop, so other requests are not held up.
            await asyncio.to_thread(flush_to_disk, stream)
        if digest.hexdigest() != expected:
            raise refused(400, f"{name}: checksum mismatch (received {size} bytes with SHA-256 {digest.hexdigest()}, "
                               f"expected {expected}).", "The upload was damaged or incomplete: send it again.")
        if check is not None:
            check(Path(tmp).read_bytes())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return digest.hexdigest(), size


def flush_to_disk(stream) -> None:
    stream.flush()
    os.fsync(stream.fileno())


SWAGGER_PAGE = """<!doctype html><html><head><title>SemiSupSeg server API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div><script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({spec: SPEC_JSON, dom_id: "#ui"});</script></body></html>"""
