"""The engine's Python dependencies: report what the worker's Python has, install what it lacks.

Nothing here runs at import time. The status check runs a tiny script in the *worker's* Python
(a child process), so torch is never imported into Slicer's GUI process just to show a version.
Installation puts torch in through the PyTorch extension (it picks the CUDA build matching the
driver) and the rest through pip, after one confirmation, and never replaces the packages Slicer
itself is built on (numpy, SimpleITK, vtk): pip upgrading those is the classic way to break Slicer.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Callable

# Packages Slicer ships and depends on: never installed or upgraded from requirements.txt.
PROTECTED_PACKAGES = frozenset({"numpy", "simpleitk", "vtk"})
TORCH = "torch"
# Used when the module's Resources/requirements.txt is missing (same content as shipped).
DEFAULT_REQUIREMENTS = ("torch>=2.1", "monai>=1.3", "SimpleITK>=2.2", "numpy>=1.23", "scipy>=1.9", "tqdm>=4.60")
STATUS_TIMEOUT_S = 120

_STATUS_SCRIPT = r"""
import json, sys
from importlib import metadata
requirements = json.loads(sys.argv[1])
status = {"torch": None, "cuda": False, "device": "cpu", "missing": [], "python": sys.executable}
for name in requirements:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        status["missing"].append(name)
try:
    import torch
    status["torch"] = torch.__version__
    status["cuda"] = bool(torch.cuda.is_available())
    if status["cuda"]:
        status["device"] = "cuda:0 " + torch.cuda.get_device_name(0)
except Exception as error:
    status["torchError"] = repr(error)
print(json.dumps(status))
"""


def requirementName(line: str) -> str | None:
    """Distribution name of a requirements.txt line (``"monai[nibabel]>=1.3 ; python_version>'3'" -> "monai"``)."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    return match.group(0) if match else None


def canonicalName(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def readRequirements(path) -> list[str]:
    """Requirement lines of ``path`` (comments and options dropped); the defaults when it does not exist."""
    path = Path(path) if path else None
    if path is None or not path.exists():
        return list(DEFAULT_REQUIREMENTS)
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if requirementName(line):
            lines.append(line)
    return lines


def engineStatus(pythonExecutable: str, requirements: list[str], environment: dict | None = None,
                 timeout: float = STATUS_TIMEOUT_S) -> dict:
    """``{"torch": version|None, "cuda": bool, "device": "cuda:0 <name>"|"cpu", "missing": [names]}`` of the worker's Python."""
    # torch is checked even when requirements.txt leaves it to the PyTorch extension.
    names = list(dict.fromkeys([TORCH] + [name for name in map(requirementName, requirements) if name]))
    try:
        completed = subprocess.run(
            [str(pythonExecutable), "-c", _STATUS_SCRIPT, json.dumps(names)],
            capture_output=True, text=True, timeout=timeout, env=environment, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"torch": None, "cuda": False, "device": "cpu", "missing": names,
                "error": f"Could not run {pythonExecutable}: {error}"}
    lastLine = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
    try:
        return json.loads(lastLine)
    except ValueError:
        return {"torch": None, "cuda": False, "device": "cpu", "missing": names,
                "error": f"{pythonExecutable} failed: {completed.stderr.strip()[-2000:]}"}


def installablePackages(requirements: list[str], installed: Callable[[str], bool]) -> list[str]:
    """Requirement lines to pip-install: not torch (PyTorch extension), not Slicer's own packages, not installed yet."""
    lines = []
    for line in requirements:
        name = canonicalName(requirementName(line) or "")
        if not name or name == TORCH or name in PROTECTED_PACKAGES or installed(name):
            continue
        lines.append(line)
    return lines


def distributionInstalled(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def pyTorchUtilsLogic():
    """The PyTorch extension's logic; RuntimeError saying how to get it when the extension is missing."""
    try:
        import PyTorchUtils  # scripted module of the PyTorch extension, importable only inside Slicer
    except ImportError:
        raise RuntimeError(
            "PyTorch is installed through the 'PyTorch' extension, which is not installed. Install 'PyTorch' from the "
            "Extensions Manager, restart Slicer, and try again."
        ) from None
    return PyTorchUtils.PyTorchUtilsLogic()


def installDependencies(confirm: Callable[[str], bool], requirements: list[str],
                        pipInstall: Callable[[list], object] | None = None,
                        installed: Callable[[str], bool] | None = None) -> bool:
    """Install torch (PyTorch extension) and the missing requirements into Slicer's Python.

    ``confirm(message)`` is asked once, listing everything; nothing is installed when it returns
    False. Returns True when something was installed.
    """
    torchLogic = pyTorchUtilsLogic()
    installed = installed or distributionInstalled
    needTorch = not torchLogic.torchInstalled()
    packages = installablePackages(requirements, installed)
    if not needTorch and not packages:
        return False
    torchRequirement = next((line for line in requirements if canonicalName(requirementName(line) or "") == TORCH), TORCH)
    wanted = ([f"{torchRequirement} (through the PyTorch extension, CUDA build when a GPU is present)"] if needTorch else []) + packages
    message = "SemiSupSeg needs these Python packages, which will be downloaded and installed:\n  " + "\n  ".join(wanted)
    if not confirm(message):
        return False
    if needTorch:
        versionRequirement = torchRequirement[len(TORCH):].strip() or None
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=versionRequirement) is None:
            raise RuntimeError("PyTorch was not installed; see the Python console for the reason.")
    if packages:
        if pipInstall is None:
            import slicer

            pipInstall = slicer.util.pip_install
        pipInstall(list(packages))  # a list: pip_install does not re-split it, so specifiers stay intact
    return True
