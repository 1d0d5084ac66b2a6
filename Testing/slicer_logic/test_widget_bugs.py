"""The panel decisions behind issue 20's Slicer bugs, tested headless (the widget itself needs Qt).

Bug 1 (Device / Export format reset at every module enter), bug 5 (region stepping ignores Show
uncertainty and Opacity), bug 6 (folder fields), the patch rule the engine applies, the engine's
method list reaching the panel, and refitting the views when another case comes on screen.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")

from SemiSupSegLib import SemiSupSegLogic, case_nodes  # noqa: E402
from SemiSupSegLib.panel import CaseDisplay, ParameterNodeGuiBinding, PathField, patchSizeProblem  # noqa: E402
from slicer_test_scenes import sliceCentres, twoCaseScene  # noqa: E402
from test_results_loader import RUN, writeRunOutputs  # noqa: E402

DEVICES = ["auto", "cuda", "cpu"]


# -- bug 1: one wrapper and one connectGui per parameter node ------------------------------


class FakeComboBox:
    """A QComboBox as far as the parameter connectors see it: ``clear()`` emits currentIndexChanged(-1)."""

    def __init__(self):
        self.listeners = []

    def clear(self):
        for listener in list(self.listeners):
            listener(-1)


class FakeWrapper:
    """Slicer's parameterNodeWrapper as of 5.8 (``returnsTag=False``) or 5.10: ``connectGui`` builds a
    combo box connector whose constructor clears the combo box, and records it under a tag."""

    def __init__(self, node: dict, gui, returnsTag: bool):
        self.node, self.returnsTag = node, returnsTag
        self._parameterGUIs, self._nextParameterGUIsTag = {}, 0
        self.connectCalls = 0

    def connectGui(self, gui):
        self.connectCalls += 1
        gui.clear()  # QComboBoxToStringableConnector.__init__: self._widget.clear()

        def changed(index):  # the connector writes choices[currentIndex]
            if listener in self._parameterGUIs.get(tag, []):
                self.node["device"] = DEVICES[index]

        listener = changed
        tag = self._nextParameterGUIsTag
        self._nextParameterGUIsTag += 1
        self._parameterGUIs[tag] = [listener]
        gui.listeners.append(listener)
        return tag if self.returnsTag else None

    def disconnectGui(self, tag):
        if tag in self._parameterGUIs:
            del self._parameterGUIs[tag]


def test_a_second_wrapper_without_the_tag_resets_the_device_the_bug_as_in_slicer_5_8():
    node, combo = {"device": "cuda"}, FakeComboBox()
    first = FakeWrapper(node, combo, returnsTag=False)
    first.disconnectGui(first.connectGui(combo))  # enter, exit: disconnectGui(None) does nothing
    FakeWrapper(node, combo, returnsTag=False).connectGui(combo)  # the next enter
    assert node["device"] == "cpu"  # choices[-1]: what users saw


@pytest.mark.parametrize("returnsTag", [False, True], ids=["slicer-5.8", "slicer-5.10"])
def test_the_binding_connects_each_parameter_node_once(returnsTag):
    combo = FakeComboBox()
    made = []

    def wrap(node):
        made.append(FakeWrapper(node, combo, returnsTag))
        return made[-1]

    binding = ParameterNodeGuiBinding(wrap, combo)
    nodeA, nodeB = {"device": "cuda"}, {"device": "auto"}
    for _ in range(3):  # three module enters
        assert binding.bind(nodeA) is made[0]
    assert len(made) == 1 and made[0].connectCalls == 1 and binding.tag == 0
    assert nodeA["device"] == "cuda"

    binding.bind(nodeB)  # a new scene: the old connection is really gone (tag recovered on 5.8)
    assert made[0]._parameterGUIs == {} and binding.newlyBound
    assert nodeA["device"] == "cuda" and nodeB["device"] == "auto"
    binding.bind(nodeB)
    assert not binding.newlyBound
    binding.release()
    assert made[1]._parameterGUIs == {}


# -- bug 6: folder fields ----------------------------------------------------------------------


def test_a_folder_field_writes_only_real_changes_both_ways():
    stored = {"value": pathlib.PureWindowsPath(r"C:\data\workspace")}
    writes = []

    def write(path):
        writes.append(path)
        stored["value"] = path

    field = PathField(lambda: stored["value"], write, pathClass=pathlib.PureWindowsPath)
    # Typing the same folder with / (Windows) or a trailing separator writes nothing and sets no text.
    assert not field.onTextChanged("C:/data/workspace") and not field.onTextChanged("C:/data/workspace/")
    assert field.textToShow("C:/data/workspace") is None  # the cursor stays where the user types
    assert writes == []
    # Each real change is written once; the text the user typed is left as it is.
    assert field.onTextChanged("C:/data/work")
    assert writes == [pathlib.PureWindowsPath("C:/data/work")] and field.textToShow("C:/data/work") is None
    # Clearing the field clears the parameter (it used to come back).
    assert field.onTextChanged("")
    assert str(stored["value"]) in ("", ".") and field.textToShow("") is None
    # A change from elsewhere (a loaded scene) is shown.
    stored["value"] = pathlib.PureWindowsPath(r"D:\other")
    assert field.textToShow("") == r"D:\other"


# -- the patch rule --------------------------------------------------------------------------


def test_the_panel_refuses_the_patches_the_engine_refuses():
    pytest.importorskip("torch")
    from semisupseg.config import DEFAULTS
    from semisupseg.networks import patch_rule
    from SemiSupSegLib import panel

    assert DEFAULTS["network"] == panel.PANEL_NETWORK and not DEFAULTS["network_options"]
    rule = patch_rule(panel.PANEL_NETWORK)
    assert patchSizeProblem((16, 16, 16)) is not None  # the panel used to accept it
    sizes = (16, 24, 32, 48, 64, 96)
    for patch in [(x, y, z) for x in sizes for y in sizes for z in sizes]:
        assert (patchSizeProblem(patch) is None) == (rule.problem(patch) is None), patch
    assert patchSizeProblem((0, 0, 0)) is None and patchSizeProblem((32, 0, 16)) is not None


# -- bug 5 and refitting: what the views show -------------------------------------------------


@pytest.fixture
def loadedRun(mrml, tmp_path):
    cases = twoCaseScene(mrml.scene)
    logic = SemiSupSegLogic()
    written = logic.writeWorkspace(tmp_path, [(volume, segmentation, True) for volume, segmentation, _, _ in cases])
    rng = np.random.default_rng(5)
    for caseId, (_, _, _, labels) in zip(written["caseIds"], cases):
        writeRunOutputs(tmp_path, caseId, labels, rng.random(labels.shape).astype(np.float32))
    logic.loadResults(tmp_path, RUN)
    regions = {"coordinate_system": "LPS", "cases": {written["caseIds"][1]: [{"rank": 1, "center_lps_mm": [-10.0, 20.0, 30.0]}]}}
    (tmp_path / "runs" / RUN / "regions.json").write_text(json.dumps(regions))
    return logic, written["caseIds"], tmp_path


def views(scene):
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    assert composites
    return {(c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), round(c.GetForegroundOpacity(), 3)) for c in composites}


def test_stepping_regions_keeps_show_uncertainty_and_opacity(loadedRun, mrml):
    logic, caseIds, workspace = loadedRun
    region = logic.regions(workspace, RUN, caseIds[1])[0]
    volume = logic.caseVolumeNode(caseIds[1])
    uncertainty = case_nodes.resultNode(mrml.scene, caseIds[1], case_nodes.UNCERTAINTY)

    logic.jumpToRegion(region, showUncertainty=False, opacity=0.7)  # Show uncertainty off
    assert views(mrml.scene) == {(volume.GetID(), None, 0.7)}
    prediction = case_nodes.resultNode(mrml.scene, caseIds[1], case_nodes.PREDICTION)
    assert prediction.GetDisplayNode().GetVisibility2DFill()  # filled when the heat is off
    logic.jumpToRegion(region, showUncertainty=True, opacity=0.25)
    assert views(mrml.scene) == {(volume.GetID(), uncertainty.GetID(), 0.25)}
    assert not prediction.GetDisplayNode().GetVisibility2DFill()
    for centre in sliceCentres(mrml.scene).values():
        np.testing.assert_allclose(centre, [10.0, -20.0, 30.0])


def test_case_display_follows_the_panel_and_refits_only_for_another_case(loadedRun, mrml):
    logic, caseIds, workspace = loadedRun
    fits = []
    display = CaseDisplay(logic, fitViews=lambda: fits.append(sliceCentres(mrml.scene)))
    first, second = (logic.caseVolumeNode(caseId) for caseId in caseIds)
    heat = {caseId: case_nodes.resultNode(mrml.scene, caseId, case_nodes.UNCERTAINTY) for caseId in caseIds}

    assert display.show(caseIds[0], True, 0.6)
    assert views(mrml.scene) == {(first.GetID(), heat[caseIds[0]].GetID(), 0.6)} and len(fits) == 1
    assert display.follow(False, 0.6)  # Show uncertainty unticked: same case, no refit
    assert views(mrml.scene) == {(first.GetID(), None, 0.6)} and len(fits) == 1
    assert not display.follow(False, 0.6)  # nothing changed: nothing done

    display.jumpToRegion(logic.regions(workspace, RUN, caseIds[1])[0], False, 0.6)
    assert views(mrml.scene) == {(second.GetID(), None, 0.6)} and len(fits) == 2  # refitted before the jump
    for centre in sliceCentres(mrml.scene).values():
        np.testing.assert_allclose(centre, [10.0, -20.0, 30.0])
    assert display.follow(True, 0.3)
    assert views(mrml.scene) == {(second.GetID(), heat[caseIds[1]].GetID(), 0.3)} and len(fits) == 2


# -- the engine's method list ------------------------------------------------------------------


def test_the_engines_method_list_reaches_the_panel():
    pytest.importorskip("torch")
    listing = SemiSupSegLogic(pythonExecutable=sys.executable).availableMethods()
    assert {"dycon", "mean_teacher", "supervised"} <= set(listing)
    assert all(isinstance(info.get("description"), str) and info["description"] for info in listing.values())


def test_a_failing_method_list_says_why(tmp_path):
    with pytest.raises((RuntimeError, OSError)):
        SemiSupSegLogic(pythonExecutable=str(tmp_path / "no-python")).availableMethods()
