"""``semisupseg serve --root DIR [--host 127.0.0.1] [--port 8765]``: the remote training server."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ..errors import InputError
from ..events import log

SERVER_PACKAGES_HINT = 'Install the server extra: pip install "semisupseg[server]" (FastAPI and uvicorn).'


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve workspaces under a root folder to remote clients (token, HTTP API /api/v1)")
    p.add_argument("--root", required=True, type=Path, help="folder holding the workspaces, jobs.json and the token")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: reach it through an SSH tunnel or a TLS reverse proxy)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    p.add_argument("--max-upload-mb", type=float, default=4096.0, help="largest accepted upload in MiB (default 4096)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as error:
        raise InputError(f"The server needs packages that are not installed ({error.name}).", SERVER_PACKAGES_HINT)
    from .security import TOKEN_FILE, load_or_create_token

    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} is not a TCP port.", "Give a port between 1 and 65535, e.g. 8765.")
    if args.max_upload_mb <= 0:
        raise InputError(f"--max-upload-mb {args.max_upload_mb} must be positive.", "E.g. --max-upload-mb 4096.")
    root = args.root.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise InputError(f"--root {root} is a file, not a folder.", "Give a folder (it is created when missing).")
    root.mkdir(parents=True, exist_ok=True)
    token, created = load_or_create_token(root)
    if created:
        # Printed once, on stdout, for the operator to copy; it stays in the file (mode 0600) only.
        print(f"SemiSupSeg server token (shown only now; kept in {root / TOKEN_FILE}): {token}", flush=True)
    else:
        log(f"Token: {root / TOKEN_FILE}")
    if not is_loopback(args.host):
        log(f"warning: binding {args.host}: the API (plain HTTP) is reachable from the network. "
            "Prefer 127.0.0.1 with an SSH tunnel, or put a TLS reverse proxy in front.")
    app = create_app(root, token, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    log(f"SemiSupSeg server on http://{args.host}:{args.port}/api/v1 (docs: /api/v1/docs), root {root}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
