"""The engine's Python dependencies: report what the worker's Python has, install what it lacks.

Nothing here runs at import time, and nothing here imports torch into Slicer's process: the status
check runs a tiny script in the *worker's* Python (a child process), and "is torch installed, which
version" is read from the package metadata (``importlib.metadata``). Importing torch in Slicer's
process would lock its DLLs on Windows before pip runs (issue 20, bug 4); the PyTorch extension's
``PyTorchUtilsLogic.torchInstalled()`` does import it, so it is not used.

Installation puts torch in through the PyTorch extension (it picks the CUDA build matching the
driver), asking for a torch the MONAI that will be installed accepts (monai 1.6 needs torch >= 2.8,
1.5.2 >= 2.4.1: without a requirement, pip would later replace the extension's CUDA build with a
CPU one from PyPI). The rest goes through pip with torch pinned by a constraints file, so pip picks
a MONAI that fits the installed torch instead of replacing torch. Packages Slicer itself is built on
(numpy, SimpleITK, vtk) are never installed or upgraded: pip upgrading those breaks Slicer.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

# Packages Slicer ships and depends on: never installed or upgraded from requirements.txt.
PROTECTED_PACKAGES = frozenset({"numpy", "simpleitk", "vtk"})
TORCH = "torch"
# Used when the module's Resources/requirements.txt is missing (same content as shipped).
DEFAULT_REQUIREMENTS = ("torch>=2.1", "monai>=1.3", "SimpleITK>=2.2", "numpy>=1.23", "scipy>=1.9", "tqdm>=4.60")
STATUS_TIMEOUT_S = 120
MONAI = "monai"
# The torch each MONAI release requires (its package metadata, ``Requires-Dist: torch>=...``),
# newest first. monai 1.6.1's metadata says torch>=2.8.0 (read from the installed wheel); 1.5.2's
# >=2.4.1 and 1.3/1.4's >=1.9 as published. A MONAI newer than the table is treated as the newest
# entry; the constraints file then keeps pip from replacing torch whatever MONAI wants.
MONAI_TORCH_MINIMUM = (("1.6.0", "2.8.0"), ("1.5.2", "2.4.1"), ("1.5.0", "2.3.0"), ("1.3.0", "1.9"))
# Windows: a console program started from Slicer (a GUI program) opens a console window that
# flashes for the life of the child unless it is created without one (issue 20, bug 7).
CREATE_NO_WINDOW = 0x08000000  # subprocess.CREATE_NO_WINDOW, which exists only on Windows


def noConsoleWindow(osName: str | None = None) -> dict:
    """``subprocess`` keyword arguments that keep a child from opening a console window:
    ``{"creationflags": CREATE_NO_WINDOW}`` on Windows (``osName == "nt"``), ``{}`` elsewhere."""
    return {"creationflags": CREATE_NO_WINDOW} if (osName or os.name) == "nt" else {}

# The engine's name for an Apple GPU (semisupseg/training/devices.py, MPS_DESCRIPTION): the device line
# says the same as the worker's ``started`` event.
MPS_DESCRIPTION = "Apple GPU (MPS)"

_STATUS_SCRIPT = r"""
import json, sys
MPS_DESCRIPTION = sys.argv[2]
from importlib import metadata
requirements = json.loads(sys.argv[1])
status = {"torch": None, "cuda": False, "mps": False, "device": "cpu", "missing": [], "python": sys.executable}
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
    # The engine's --device auto takes CUDA, then an Apple GPU (MPS), then the CPU (training/devices.py).
    mps = getattr(torch.backends, "mps", None)
    status["mps"] = bool(mps is not None and mps.is_available())
    if status["mps"] and not status["cuda"]:
        status["device"] = "mps " + MPS_DESCRIPTION
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
    """``{"torch": version|None, "cuda": bool, "mps": bool, "device": "cuda:0 <name>"|"mps Apple GPU (MPS)"|"cpu",
    "missing": [names]}`` of the worker's Python; ``device`` is what the engine's ``--device auto`` takes."""
    # torch is checked even when requirements.txt leaves it to the PyTorch extension.
    names = list(dict.fromkeys([TORCH] + [name for name in map(requirementName, requirements) if name]))
    try:
        completed = subprocess.run(
            [str(pythonExecutable), "-c", _STATUS_SCRIPT, json.dumps(names), MPS_DESCRIPTION],
            capture_output=True, text=True, timeout=timeout, env=environment, stdin=subprocess.DEVNULL,
            **noConsoleWindow(),
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


def installedVersion(name: str) -> str | None:
    """Version of the installed distribution ``name`` from its metadata (nothing is imported), else None.

    Caches are invalidated first: pip runs in a child process, and a package it just installed
    must be seen by this one."""
    importlib.invalidate_caches()
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def distributionInstalled(name: str) -> bool:
    return installedVersion(name) is not None


def _specifierSet(text: str):
    """``packaging``'s SpecifierSet (Slicer ships ``packaging``; pip's vendored copy is the fallback)."""
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # pragma: no cover - only where packaging itself is missing
        from pip._vendor.packaging.specifiers import SpecifierSet
    return SpecifierSet(text)


def requirementSpecifier(line: str) -> str:
    """The version part of a requirement line: ``"monai[all]>=1.3 ; python_version>'3'"`` -> ``">=1.3"``."""
    name = requirementName(line) or ""
    rest = line.split(";", 1)[0].strip()[len(name):].strip()
    if rest.startswith("["):
        rest = rest[rest.index("]") + 1:].strip()
    return rest


def satisfies(version: str | None, specifier: str) -> bool:
    """Whether an installed ``version`` (local labels such as ``+cu121`` allowed) meets ``specifier``."""
    if version is None:
        return False
    return _specifierSet(specifier).contains(version, prereleases=True)


def torchMinimumForMonai(monaiSpecifier: str, monaiInstalled: str | None = None) -> str | None:
    """The smallest torch the MONAI that will be in place accepts, from ``MONAI_TORCH_MINIMUM``.

    An installed MONAI that meets ``monaiSpecifier`` stays, so its own entry counts; otherwise pip
    will pick the newest MONAI the specifier admits: the newest table entry it admits (a specifier
    that admits no entry, e.g. ``==1.2.0``, gives None: nothing is known)."""
    if monaiInstalled is not None and satisfies(monaiInstalled, monaiSpecifier):
        release = _releaseTuple(monaiInstalled)
        for monaiVersion, torchMinimum in MONAI_TORCH_MINIMUM:
            if release >= _releaseTuple(monaiVersion):
                return torchMinimum
        return None
    for monaiVersion, torchMinimum in MONAI_TORCH_MINIMUM:
        if _specifierSet(monaiSpecifier).contains(monaiVersion):
            return torchMinimum
    return None


def _releaseTuple(version: str) -> tuple:
    """``"2.5.1+cu121"`` -> ``(2, 5, 1)`` (numbers only; enough to order the table's entries)."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+", 1)[0])[:3])


def torchRequirement(requirements: list[str], monaiInstalled: str | None = None) -> str:
    """The torch version requirement handed to the PyTorch extension's ``installTorch``.

    Both the requirements' own torch line (e.g. ``>=2.1``) and what MONAI needs must hold:
    ``">=2.1,>=2.8.0"`` for ``torch>=2.1`` with ``monai>=1.3`` (pip would install monai 1.6)."""
    parts = []
    for line in requirements:
        name = canonicalName(requirementName(line) or "")
        if name == TORCH and requirementSpecifier(line):
            parts.append(requirementSpecifier(line))
        elif name == MONAI:
            minimum = torchMinimumForMonai(requirementSpecifier(line), monaiInstalled)
            if minimum:
                parts.append(f">={minimum}")
    return ",".join(dict.fromkeys(parts))


def writeTorchConstraint(torchVersion: str, folder=None) -> Path:
    """A pip constraints file pinning torch to the installed version (``torch==2.5.1+cu121``).

    Passed as ``pip install -c FILE ...``: pip may then only choose packages that accept this
    torch, and never downloads another torch over the PyTorch extension's CUDA build."""
    handle, name = tempfile.mkstemp(prefix="SemiSupSeg-constraints-", suffix=".txt", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(f"torch=={torchVersion}\n")
    return Path(name)


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
                        versionOf: Callable[[str], str | None] | None = None) -> bool:
    """Install torch (PyTorch extension) and the missing requirements into Slicer's Python.

    ``confirm(message)`` is asked once, listing everything; nothing is installed when it returns
    False. ``versionOf(name)`` gives an installed distribution's version or None (default: the
    package metadata; never an import). torch is installed only when missing or older than the
    requirements' torch line, with a requirement that also fits MONAI (``torchRequirement``); the
    rest is pip-installed with ``-c <constraints>`` pinning the torch then in place. Returns True
    when something was installed.
    """
    versionOf = versionOf or installedVersion
    installed = lambda name: versionOf(name) is not None  # noqa: E731
    ownTorchLine = next((line for line in requirements if canonicalName(requirementName(line) or "") == TORCH), TORCH)
    torchVersion = versionOf(TORCH)
    needTorch = not satisfies(torchVersion, requirementSpecifier(ownTorchLine))
    packages = installablePackages(requirements, installed)
    if not needTorch and not packages:
        return False
    torchLogic = pyTorchUtilsLogic() if needTorch else None
    wantedTorch = torchRequirement(requirements, versionOf(MONAI)) if needTorch else ""
    wanted = ([f"torch{wantedTorch} (through the PyTorch extension, CUDA build when a GPU is present)"] if needTorch else []) + packages
    message = "SemiSupSeg needs these Python packages, which will be downloaded and installed:\n  " + "\n  ".join(wanted)
    if not confirm(message):
        return False
    if needTorch:
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=wantedTorch or None) is None:
            raise RuntimeError("PyTorch was not installed; see the Python console for the reason.")
        torchVersion = versionOf(TORCH)
    if packages:
        _pipInstallKeepingTorch(packages, torchVersion, pipInstall)
    return True


def _pipInstallKeepingTorch(packages: list[str], torchVersion: str | None, pipInstall) -> None:
    """``pip install [-c constraints] packages``, torch pinned to ``torchVersion`` when there is one.

    A list of command-line arguments works with ``slicer.util.pip_install`` of Slicer 5.8 (it
    passes a list on as pip's arguments) and of 5.10+ (a list of arguments, see slicer.packaging)."""
    if pipInstall is None:
        import slicer

        pipInstall = slicer.util.pip_install
    constraints = writeTorchConstraint(torchVersion) if torchVersion else None
    try:
        arguments = (["-c", str(constraints)] if constraints else []) + list(packages)
        pipInstall(arguments)  # a list: specifiers stay intact (no re-splitting)
    finally:
        if constraints is not None:
            constraints.unlink(missing_ok=True)
