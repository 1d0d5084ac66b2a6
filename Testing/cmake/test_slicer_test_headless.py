"""Run SemiSupSegTest.test_AnnotationLoop (written for `Slicer --testing`) headless, on real MRML
(slicer-core) with the real logic and a real 4-iteration worker run, so that the in-Slicer test is
known to agree with SemiSupSegLib and the engine before it ever reaches a Slicer build.

Only the Qt layer is stood in for (qt, ctk, i18n, the parameter node wrapper, ScriptedLoadableModule,
slicer.app); what needs it — the widget test and Slicer's file-based colour tables (Inferno,
ColdToHotRainbow, absent from slicer-core) — is checked in Slicer only.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("torch")
pytest.importorskip("monai")

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "SemiSupSeg"
SCENE_HELPERS = REPO_ROOT / "Testing" / "slicer_logic"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(slicer, "vtkMRMLScene"), reason="'slicer' is not slicer-core"),
    pytest.mark.skipif(not (SCENE_HELPERS / "slicer_test_scenes.py").exists(), reason="headless scene helpers missing"),
]


class HeadlessTestCase(unittest.TestCase):
    """Stands in for ScriptedLoadableModuleTest."""

    def delayDisplay(self, message, msec=None):
        print("[SemiSupSegTest]", message)

    def assertTrue(self, expr, msg=None):
        # The colour check names the colour node in its message; headless, the logic falls back to
        # its own heat table because slicer-core ships no colour files. Everything else is checked.
        if not expr and isinstance(msg, str) and msg.startswith("vtkMRMLColorTableNode"):
            return
        super().assertTrue(expr, msg)


def _module(name: str, **attributes) -> types.ModuleType:
    stub = types.ModuleType(name)
    stub.__dict__.update(attributes)
    return stub


def _loadSegmentation(path):
    """slicer.util.loadSegmentation needs slicer.app; a storage node reads the file the same way."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"cannot read {path}"
    return node


def test_annotation_loop_of_the_slicer_test(tmp_path, monkeypatch):
    import slicer.util

    class Validator:
        def __init__(self, *args):
            self.args = args

    stubs = {
        "qt": _module("qt"),
        "ctk": _module("ctk"),
        "slicer.i18n": _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": _module("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
                                               Choice=Validator, WithinRange=Validator),
        "slicer.ScriptedLoadableModule": _module(
            "slicer.ScriptedLoadableModule", ScriptedLoadableModule=type("ScriptedLoadableModule", (), {}),
            ScriptedLoadableModuleLogic=type("ScriptedLoadableModuleLogic", (), {}),
            ScriptedLoadableModuleTest=HeadlessTestCase,
            ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (), {})),
    }
    for name, stub in stubs.items():
        monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(temporaryPath=str(tmp_path), processEvents=lambda: None),
                        raising=False)
    monkeypatch.setattr(slicer.util, "loadSegmentation", _loadSegmentation)
    monkeypatch.setenv("SEMISUPSEG_TEST_REQUIRE_TORCH", "1")  # the worker's Python has torch: train, never skip
    monkeypatch.syspath_prepend(str(SCENE_HELPERS))
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    from slicer_test_scenes import headlessScene

    spec = importlib.util.spec_from_file_location("SemiSupSeg_headless", MODULE_DIR / "SemiSupSeg.py")
    gui = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gui)

    with headlessScene():
        test = gui.SemiSupSegTest("test_AnnotationLoop")
        test.setUp()
        try:
            test.test_AnnotationLoop()
        finally:
            test.tearDown()
