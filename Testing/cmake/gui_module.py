"""SemiSupSeg.py without Slicer, for the tests of Testing/cmake and Testing/slicer_logic: the module's
paths, its module-level constants read from the source, and the file loaded with stand-ins for qt,
vtk and slicer (just enough for its module level to run; its plain helpers then work as in Slicer).

Not a test file: ``test_gui_files.py``, ``test_gui_helpers.py`` and ``test_accept_region.py`` load it.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "SemiSupSeg"
MODULE_FILE = MODULE_DIR / "SemiSupSeg.py"
LIB_DIR = MODULE_DIR / "SemiSupSegLib"


def module_constants(tree: ast.Module) -> dict[str, object]:
    """Module-level NAME = <literal> assignments (lists, tuples, strings, numbers)."""
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return constants


def evaluate(node: ast.expr, constants: dict):
    """Value of a constant expression of our own file (literals, module constants, arithmetic)."""
    return eval(compile(ast.Expression(node), "<annotation>", "eval"), {"__builtins__": {}}, dict(constants))


def stub_modules() -> dict[str, types.ModuleType]:
    """Just enough of qt, vtk and slicer for SemiSupSeg.py's module level to run."""

    def module(name, **attributes):
        stub = types.ModuleType(name)
        stub.__dict__.update(attributes)
        return stub

    class Validator:
        def __init__(self, *args):
            self.args = args

    def base(name):
        return type(name, (), {"__init__": lambda self, *args, **kwargs: None})

    slicer = module("slicer", vtkMRMLScalarVolumeNode=type("vtkMRMLScalarVolumeNode", (), {}))
    return {
        "qt": module("qt"),
        "vtk": module("vtk", vtkCommand=SimpleNamespace(ModifiedEvent=33)),
        "slicer": slicer,
        "slicer.i18n": module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": module("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
                                              Choice=Validator, WithinRange=Validator),
        "slicer.ScriptedLoadableModule": module(
            "slicer.ScriptedLoadableModule", **{name: base(name) for name in (
                "ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                "ScriptedLoadableModuleWidget")}),
        "slicer.util": module("slicer.util", VTKObservationMixin=base("VTKObservationMixin")),
        "SemiSupSegLib": module("SemiSupSegLib", SemiSupSegLogic=base("SemiSupSegLogic"), TrainingJob=base("TrainingJob"),
                                case_nodes=module("case_nodes")),
        "SemiSupSegLib.panel": load_file("SemiSupSegLib.panel", LIB_DIR / "panel.py"),  # imports nothing of Slicer
        "SemiSupSegLib.presenter": module("SemiSupSegLib.presenter", TRAINING="training", PanelProblem=type("PanelProblem", (Exception,), {}),
                                          SemiSupSegPresenter=base("SemiSupSegPresenter")),
        "SemiSupSegLib.in_slicer_checks": module("SemiSupSegLib.in_slicer_checks", AnnotationLoopChecks=base("AnnotationLoopChecks")),
    }


def panel_text_module() -> types.ModuleType:
    """SemiSupSegLib/panel_text.py, loaded as part of a stand-in package (it imports .panel and slicer.i18n)."""
    package = types.ModuleType("SemiSupSegLib")
    package.__path__ = [str(LIB_DIR)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "SemiSupSegLib", package)
        patch.setitem(sys.modules, "slicer.i18n", types.ModuleType("slicer.i18n"))  # no tr: the English fallback
        spec = importlib.util.spec_from_file_location("SemiSupSegLib.panel_text", LIB_DIR / "panel_text.py")
        loaded = importlib.util.module_from_spec(spec)
        patch.setitem(sys.modules, spec.name, loaded)  # dataclasses look their module up while it runs
        spec.loader.exec_module(loaded)
    return loaded


def load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def load_gui(name: str = "SemiSupSeg_under_test") -> types.ModuleType:
    """SemiSupSeg.py imported as ``name`` with the stand-ins; ``sys.modules`` is restored afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for stubName, stub in stub_modules().items():
            patch.setitem(sys.modules, stubName, stub)
        patch.setitem(sys.modules, "SemiSupSegLib.panel_text", panel_text_module())
        spec = importlib.util.spec_from_file_location(name, MODULE_FILE)
        gui_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gui_module)
    return gui_module
