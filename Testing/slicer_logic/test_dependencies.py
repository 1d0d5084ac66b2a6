"""Engine status from the worker's Python (a child process) and dependency installation rules
(PyTorch extension for torch, one confirmation, Slicer's own packages never replaced)."""

from __future__ import annotations

import sys
import types

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
    """Stands in for the PyTorch extension's PyTorchUtilsLogic (only importable inside Slicer)."""

    installed = False
    calls: list = []

    @staticmethod
    def torchInstalled():
        return FakePyTorchUtilsLogic.installed

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        FakePyTorchUtilsLogic.calls.append({"askConfirmation": askConfirmation, "torchVersionRequirement": torchVersionRequirement})
        return types.SimpleNamespace(__version__="2.13.0")


@pytest.fixture
def fakePyTorchExtension(monkeypatch):
    FakePyTorchUtilsLogic.installed = False
    FakePyTorchUtilsLogic.calls = []
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakePyTorchUtilsLogic))
    return FakePyTorchUtilsLogic


REQUIREMENTS = ["torch>=2.1", "numpy>=1.23", "SimpleITK>=2.2", "vtk", "monai>=1.3", "scipy>=1.9", "never-installed-xyz>=1.0"]


def test_install_asks_once_and_never_touches_slicers_own_packages(fakePyTorchExtension):
    questions, pipCalls = [], []
    installedHere = {"scipy"}

    did = dependencies.installDependencies(
        lambda message: questions.append(message) or True, REQUIREMENTS,
        pipInstall=pipCalls.append, installed=lambda name: name in installedHere,
    )

    assert did is True and len(questions) == 1
    assert "torch>=2.1" in questions[0] and "monai>=1.3" in questions[0] and "never-installed-xyz>=1.0" in questions[0]
    assert fakePyTorchExtension.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.1"}]
    assert pipCalls == [["monai>=1.3", "never-installed-xyz>=1.0"]]  # no numpy, SimpleITK, vtk, torch, installed scipy
    for protected in ("numpy", "SimpleITK", "vtk"):
        assert protected not in questions[0]


def test_nothing_is_installed_when_the_user_declines(fakePyTorchExtension):
    pipCalls = []
    did = dependencies.installDependencies(lambda message: False, REQUIREMENTS, pipInstall=pipCalls.append, installed=lambda name: False)
    assert did is False and pipCalls == [] and fakePyTorchExtension.calls == []


def test_nothing_to_do_asks_nothing(fakePyTorchExtension):
    fakePyTorchExtension.installed = True
    did = dependencies.installDependencies(lambda message: pytest.fail("asked"), ["torch", "monai"], pipInstall=pytest.fail, installed=lambda name: True)
    assert did is False


def test_logic_installs_through_slicer_pip_install(fakePyTorchExtension, monkeypatch):
    fakePyTorchExtension.installed = True
    pipCalls = []
    monkeypatch.setattr(slicer.util, "pip_install", pipCalls.append)
    monkeypatch.setattr(dependencies, "distributionInstalled", lambda name: False)
    logic = SemiSupSegLogic()
    expected = [
        line for line in logic.requirements()
        if dependencies.canonicalName(dependencies.requirementName(line)) not in {"torch", "numpy", "simpleitk", "vtk"}
    ]
    assert expected, "SemiSupSeg/Resources/requirements.txt lists nothing to install"
    logic.installDependencies(lambda message: True)
    assert pipCalls == [expected]


def test_without_the_pytorch_extension_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # makes `import PyTorchUtils` fail
    with pytest.raises(RuntimeError, match="Extensions Manager"):
        dependencies.installDependencies(lambda message: True, REQUIREMENTS)
