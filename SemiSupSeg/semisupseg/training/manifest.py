"""``manifest.json``: what produced a run (code, libraries, device) and exactly which inputs."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from .. import __version__
from .devices import device_description


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> dict:
    """Package version plus the git commit when the engine runs from a checkout."""
    info = {"semisupseg": __version__}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if commit:
            info["git_commit"] = commit
            info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def library_versions() -> dict:
    import monai
    import numpy
    import SimpleITK
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "monai": monai.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def build_manifest(device, input_files: Iterable[Path], argv=None) -> dict:
    return {
        "code": code_version(),
        "libraries": library_versions(),
        "device": device_description(device),
        "command": list(sys.argv if argv is None else argv),
        "inputs": {str(p): sha256_of(Path(p)) for p in sorted(set(map(str, input_files)))},
    }
