"""Engine status from the worker's Python (a child process) and dependency installation rules
(PyTorch extension for torch, one confirmation, Slicer's own packages never replaced)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")

import slicer  # noqa: E402
from SemiSupSegLib import SemiSupSegLogic, dependencies  # noqa: E402


def test_requirement_names():
    assert dependencies.requirementName("monai[nibabel]>=1.3 ; python_version > '3'") == "monai"
    assert dependencies.requirementName("  # a comment") is None
    assert dependencies.requirementName("--extra-index-url https://x") is None
    assert dependencies.readRequirements(None) == list(dependencies.DEFAULT_REQUIREMENTS)


def test_engine_status_runs_in_the_worker_python_without_importing_torch_here(monkeypatch):
    torchImportedBefore = "torch" in sys.modules
    logic = SemiSupSegLogic(pythonExecutable=sys.executable)
    moduleRequirements = logic.requirements()
    monkeypatch.setattr(logic, "requirements", lambda: moduleRequirements + ["surely-not-a-package-xyz>=1.0"])
    status = logic.engineStatus()
    assert status["torch"] and status["torch"].split(".")[0].isdigit()
    assert isinstance(status["cuda"], bool)
    assert status["device"] == "cpu" if not status["cuda"] else status["device"].startswith("cuda:0 ")
    assert status["missing"] == ["surely-not-a-package-xyz"]  # everything the module needs is installed here
    if not torchImportedBefore:
        assert "torch" not in sys.modules


def test_engine_status_of_a_missing_python_says_so():
    status = dependencies.engineStatus("/nonexistent/python", ["monai"])
    assert status["torch"] is None and "Could not run" in status["error"] and "monai" in status["missing"]


class FakePyTorchUtilsLogic:
    """Stands in for the PyTorch extension's PyTorchUtilsLogic (only importable inside Slicer).

    Its ``torchInstalled`` imports torch (SlicerPyTorch, PyTorchUtils.py), so SemiSupSeg must not call it."""

    calls: list = []
    versions: dict = {}

    @staticmethod
    def torchInstalled():
        pytest.fail("torchInstalled() imports torch into Slicer's process; use the package metadata")

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        FakePyTorchUtilsLogic.calls.append({"askConfirmation": askConfirmation, "torchVersionRequirement": torchVersionRequirement})
        FakePyTorchUtilsLogic.versions["torch"] = "2.9.1+cu128"
        return types.SimpleNamespace(__version__="2.9.1+cu128")


@pytest.fixture
def fakePyTorchExtension(monkeypatch):
    FakePyTorchUtilsLogic.calls = []
    FakePyTorchUtilsLogic.versions = {}
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakePyTorchUtilsLogic))
    return FakePyTorchUtilsLogic


REQUIREMENTS = ["torch>=2.1", "numpy>=1.23", "SimpleITK>=2.2", "vtk", "monai>=1.3", "scipy>=1.9", "never-installed-xyz>=1.0"]


class RecordingPip:
    """Records pip's arguments and the content of the constraints file while it still exists."""

    def __init__(self):
        self.calls, self.constraints = [], []

    def __call__(self, arguments):
        self.calls.append(list(arguments))
        if "-c" in arguments:
            self.constraints.append(Path(arguments[arguments.index("-c") + 1]).read_text(encoding="utf-8").strip())


def test_install_asks_once_and_never_touches_slicers_own_packages(fakePyTorchExtension):
    questions, pip = [], RecordingPip()
    versions = fakePyTorchExtension.versions
    versions["scipy"] = "1.14.0"

    did = dependencies.installDependencies(lambda message: questions.append(message) or True, REQUIREMENTS,
                                           pipInstall=pip, versionOf=versions.get)

    assert did is True and len(questions) == 1
    assert "monai>=1.3" in questions[0] and "never-installed-xyz>=1.0" in questions[0]
    # pip would install monai 1.6, which needs torch >= 2.8: the extension is asked for a torch that fits it.
    assert "torch>=2.1,>=2.8.0" in questions[0]
    assert fakePyTorchExtension.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.1,>=2.8.0"}]
    assert len(pip.calls) == 1
    arguments = pip.calls[0]
    assert arguments[2:] == ["monai>=1.3", "never-installed-xyz>=1.0"]  # no numpy, SimpleITK, vtk, torch, installed scipy
    assert arguments[0] == "-c" and pip.constraints == ["torch==2.9.1+cu128"]  # the extension's build stays
    assert not Path(arguments[1]).exists(), "the constraints file is removed afterwards"
    for protected in ("numpy", "SimpleITK", "vtk"):
        assert protected not in questions[0]


def test_an_installed_torch_is_kept_and_pins_what_pip_may_choose(fakePyTorchExtension):
    """torch 2.5 (a CUDA build from the PyTorch extension) is older than monai 1.6 wants: it is not
    reinstalled; the constraint makes pip take a MONAI that accepts it (1.5.x) instead of replacing torch."""
    pip = RecordingPip()
    versions = {"torch": "2.5.1+cu121"}
    did = dependencies.installDependencies(lambda message: "torch" not in message or pytest.fail(message),
                                           ["torch>=2.1", "monai>=1.3"], pipInstall=pip, versionOf=versions.get)
    assert did is True and fakePyTorchExtension.calls == []
    assert pip.calls[0][2:] == ["monai>=1.3"] and pip.constraints == ["torch==2.5.1+cu121"]


def test_a_torch_older_than_the_requirement_is_installed_again(fakePyTorchExtension):
    versions = {"torch": "2.0.1", "monai": "1.6.1"}
    did = dependencies.installDependencies(lambda message: True, ["torch>=2.1", "monai>=1.3"], pipInstall=pytest.fail,
                                           versionOf=versions.get)
    assert did is True
    assert fakePyTorchExtension.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.1,>=2.8.0"}]


@pytest.mark.parametrize("monaiLine, installedMonai, expected", [
    ("monai>=1.3", None, ">=2.8.0"),           # pip picks the newest: 1.6 needs torch >= 2.8
    ("monai>=1.3,<1.6", None, ">=2.4.1"),      # newest admitted: 1.5.2
    ("monai==1.5.0", None, ">=2.3.0"),
    ("monai>=1.3", "1.5.2", ">=2.4.1"),        # an installed MONAI that fits stays
    ("monai>=1.6", "1.5.2", ">=2.8.0"),        # ... one that does not will be replaced
    ("monai==1.2.0", None, ""),                # not in the table: no bound is invented
])
def test_torch_requirement_fits_the_monai_that_will_be_there(monaiLine, installedMonai, expected):
    assert dependencies.torchRequirement([monaiLine], installedMonai) == expected


def test_the_monai_table_agrees_with_the_installed_monai():
    """The newest table entry must be what the installed MONAI's own metadata asks for (when that is the newest)."""
    from importlib import metadata

    monai = dependencies.installedVersion("monai")
    if monai is None:
        pytest.skip("monai is not installed here")
    required = [line for line in metadata.requires("monai") or [] if line.startswith("torch") and "extra" not in line]
    minimum = dependencies.torchMinimumForMonai(">=0", monai)
    assert required and minimum and dependencies.requirementSpecifier(required[0]).lstrip(">=") == minimum


def test_versions_come_from_the_metadata_without_importing():
    torchImportedBefore = "torch" in sys.modules
    assert dependencies.installedVersion("surely-not-a-package-xyz") is None
    version = dependencies.installedVersion("torch")
    if version is None:
        pytest.skip("torch is not installed here")
    assert dependencies.satisfies(version, ">=1.0") and not dependencies.satisfies(version, "<1.0")
    assert dependencies.satisfies("2.5.1+cu121", ">=2.4.1") and not dependencies.satisfies("2.5.1+cu121", ">=2.8")
    if not torchImportedBefore:
        assert "torch" not in sys.modules


def test_nothing_is_installed_when_the_user_declines(fakePyTorchExtension):
    did = dependencies.installDependencies(lambda message: False, REQUIREMENTS, pipInstall=pytest.fail, versionOf=lambda name: None)
    assert did is False and fakePyTorchExtension.calls == []


def test_nothing_to_do_asks_nothing(fakePyTorchExtension):
    did = dependencies.installDependencies(lambda message: pytest.fail("asked"), ["torch", "monai"], pipInstall=pytest.fail,
                                           versionOf=lambda name: "2.9.0")
    assert did is False


def test_logic_installs_through_slicer_pip_install(fakePyTorchExtension, monkeypatch):
    pip = RecordingPip()
    monkeypatch.setattr(slicer.util, "pip_install", pip)
    monkeypatch.setattr(dependencies, "installedVersion", lambda name: "2.9.0" if name == "torch" else None)
    logic = SemiSupSegLogic()
    expected = [
        line for line in logic.requirements()
        if dependencies.canonicalName(dependencies.requirementName(line)) not in {"torch", "numpy", "simpleitk", "vtk"}
    ]
    assert expected, "SemiSupSeg/Resources/requirements.txt lists nothing to install"
    logic.installDependencies(lambda message: True)
    assert [call[2:] for call in pip.calls] == [expected] and pip.constraints == ["torch==2.9.0"]


def test_without_the_pytorch_extension_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # makes `import PyTorchUtils` fail
    with pytest.raises(RuntimeError, match="Extensions Manager"):
        dependencies.installDependencies(lambda message: True, REQUIREMENTS, versionOf=lambda name: None)


def test_console_windows_are_hidden_on_windows(monkeypatch):
    assert dependencies.noConsoleWindow("nt") == {"creationflags": 0x08000000}
    assert dependencies.noConsoleWindow("posix") == {}
    seen = {}

    def fakeRun(command, **options):
        seen.update(options)
        return types.SimpleNamespace(stdout='{"torch": null, "missing": []}', stderr="")

    monkeypatch.setattr(dependencies, "noConsoleWindow", lambda osName=None: {"creationflags": 0x08000000})
    monkeypatch.setattr(dependencies.subprocess, "run", fakeRun)
    dependencies.engineStatus("python", ["monai"])
    assert seen["creationflags"] == 0x08000000


def fakeTorch(folder: Path, cuda: bool, mps) -> dict:
    """An environment whose PYTHONPATH puts a stand-in ``torch`` first: the worker's Python on a Mac
    (``mps=True``), a PC without GPU (False), or a build without the MPS backend (``mps=None``).

    This machine has no Apple GPU, so the availability is simulated; the status script itself runs
    unchanged in a real child Python."""
    package = folder / "torch"
    package.mkdir(parents=True)
    backends = "types.SimpleNamespace()" if mps is None else f"types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: {mps}))"
    (package / "__init__.py").write_text(
        "import types\n__version__ = '2.9.0'\n"
        f"cuda = types.SimpleNamespace(is_available=lambda: {cuda}, get_device_name=lambda index: 'NVIDIA Fake')\n"
        f"backends = {backends}\n", encoding="utf-8")
    return {**os.environ, "PYTHONPATH": str(folder)}


@pytest.mark.parametrize("cuda, mps, device, line", [
    (False, True, "mps Apple GPU (MPS)", "PyTorch 2.9.0 · GPU: Apple GPU (MPS)"),
    (True, True, "cuda:0 NVIDIA Fake", "PyTorch 2.9.0 · GPU: cuda:0 NVIDIA Fake"),  # auto takes CUDA first
    (False, False, "cpu", "PyTorch 2.9.0 · CPU only (no CUDA GPU): training works but is slow"),
    (False, None, "cpu", "PyTorch 2.9.0 · CPU only (no CUDA GPU): training works but is slow"),
])
def test_an_apple_gpu_is_reported_by_the_worker_python_and_named_on_the_device_line(tmp_path, cuda, mps, device, line):
    from SemiSupSegLib.panel_text import engineStatusText

    status = dependencies.engineStatus(sys.executable, [], fakeTorch(tmp_path, cuda, mps))
    assert status["torch"] == "2.9.0", status
    assert (status["mps"], status["device"]) == (bool(mps), device)
    assert engineStatusText(status) == line
