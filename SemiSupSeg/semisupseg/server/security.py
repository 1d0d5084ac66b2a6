"""The server's guards: the access token and the paths that requests name.

Token: ``ROOT/.semisupseg-token``, created on the first start with mode 0600 (32 random bytes,
URL-safe base64), compared with ``hmac.compare_digest`` so the comparison time does not depend on
where a wrong token first differs. Paths: every name in a request is one plain component
(letters, digits, ``.``, ``_``, ``-``; not starting with a dot), so ``..``, absolute paths and
hidden files cannot be named; the resolved path must still lie inside the workspace, so a
symbolic link placed there by someone else cannot lead out of it.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Iterable, Optional, Tuple

from ..errors import InputError

TOKEN_FILE = ".semisupseg-token"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PathRefused(ValueError):
    """A path from a request that would leave its folder (or names something not allowed)."""


def load_or_create_token(root: Path) -> Tuple[str, bool]:
    """``(token, created)``; creates the token file (mode 0600, exclusive create) when missing.

    An existing file readable by group or others is refused: anyone on the server could use it.
    """
    path = Path(root) / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if os.name != "nt" and mode & 0o077:
            raise InputError(f"{path} can be read by other users (mode {mode:o}).",
                             f"Restrict it: chmod 600 {path} (or delete it to get a new token).")
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise InputError(f"{path} holds no usable token.", f"Delete {path}; the next start creates a new one.")
        return token, False
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(token + "\n")
    return token, True


def token_matches(authorization: Optional[str], token: str) -> bool:
    """True when the ``Authorization`` header is ``Bearer <token>`` (constant-time comparison)."""
    if not authorization or not authorization.startswith("Bearer "):
        return False
    offered = authorization[len("Bearer "):].strip().encode("utf-8")
    return hmac.compare_digest(offered, token.encode("utf-8"))


def check_name(name: str, what: str = "name") -> str:
    """One plain path component (workspace, run, case file name); anything else is refused."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise PathRefused(f"{what} {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                          f"(at most 128, not starting with '.', no '..').")
    return name


def safe_join(base: Path, relative: str, allowed_top: Optional[Iterable[str]] = None) -> Path:
    """``base / relative`` after checking every component and that the result stays inside ``base``.

    ``relative`` uses ``/`` separators; absolute paths, ``..``, empty or hidden components are
    refused, as is a first component outside ``allowed_top`` (when given). Symbolic links on the
    way are resolved, and the result must still be inside ``base`` resolved.
    """
    if not isinstance(relative, str) or not relative or relative.startswith(("/", "\\")) or "\\" in relative \
            or re.match(r"^[A-Za-z]:", relative):
        raise PathRefused(f"path {relative!r} is not allowed: give a relative path inside the workspace.")
    parts = relative.split("/")
    for part in parts:
        check_name(part, "path component")
    if allowed_top is not None and parts[0] not in set(allowed_top):
        raise PathRefused(f"path {relative!r} is not allowed here: it must start with one of {sorted(allowed_top)}.")
    base_resolved = Path(base).resolve()
    candidate = base_resolved.joinpath(*parts)
    resolved = candidate.resolve()
    if resolved != candidate or not resolved.is_relative_to(base_resolved):
        raise PathRefused(f"path {relative!r} leads outside its folder (a symbolic link?): refused.")
    return candidate
