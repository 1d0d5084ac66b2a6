"""Several classes in thin-slab scans on the Slicer side (issue 19), headless on real MRML.

- The panel's patch check follows the engine's per-axis rule for the cases' spacing: a 1.5 x 1.5 x
  5 mm cine-MRI-like case accepts 144 x 144 x 8 (refused before: a fixed 16 per axis), and the
  panel and the engine agree on every patch for several spacings.
- The loaded prediction's segments carry the class names of dataset.json ``labels`` in class
  order, each class with its own colour (Slicer's anatomy table when it names the class).
- Region stepping says which class a region is about (``about_class``; 0: possibly missed).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")
pytest.importorskip("SimpleITK")

from SemiSupSegLib import SemiSupSegLogic, case_nodes  # noqa: E402
from SemiSupSegLib.panel import medianSpacing, patchAxisRule, patchSizeProblem  # noqa: E402
from SemiSupSegLib.panel_text import thinSlabHint  # noqa: E402
from SemiSupSegLib.presenter import PanelParameters, SemiSupSegPresenter  # noqa: E402
from SemiSupSegLib.results_loader import SEGMENT_PALETTE  # noqa: E402
from slicer_test_scenes import directionMatrix, makeSegmentation, makeVolume  # noqa: E402
from test_results_loader import RUN, writeRunOutputs  # noqa: E402

CARDIAC = ["right ventricle", "myocardium", "left ventricle"]
THIN_SLAB = (1.5, 1.5, 5.0)  # ACDC-like (x, y, z) mm


def cardiacCase(scene, name="cine 01", spacing=THIN_SLAB):
    """A thin slab (4 slices of 12 x 12) with RV, myocardium ring and LV; returns (volume, segmentation, labels)."""
    shape = (4, 12, 12)  # (k, j, i)
    k, j, i = np.indices(shape)
    radius = np.hypot(j - 6, i - 7)
    lv = radius < 2.5
    myocardium = (radius >= 2.5) & (radius < 4)
    rv = (np.abs(j - 6) < 3) & (i < 3) & ~myocardium & ~lv
    image = (100 * lv + 60 * myocardium + 80 * rv + np.random.default_rng(1).integers(0, 10, shape)).astype(np.int16)
    volume = makeVolume(scene, name, image, spacing, (0.0, 0.0, 0.0), directionMatrix(0.0))
    masks = {"right ventricle": rv.astype(np.uint8), "myocardium": myocardium.astype(np.uint8),
             "left ventricle": lv.astype(np.uint8)}
    segmentation = makeSegmentation(scene, volume, f"{name} seg", masks)
    labels = np.zeros(shape, np.uint8)
    for index, mask in enumerate(masks.values(), start=1):
        labels[mask > 0] = index
    return volume, segmentation, labels


# -- 1. the patch check ----------------------------------------------------------------------


def test_the_panel_accepts_a_thin_slab_patch_the_engine_accepts(mrml, tmp_path):
    volume, segmentation, _ = cardiacCase(mrml.scene)
    presenter = SemiSupSegPresenter(SemiSupSegLogic(), PanelParameters(workspaceDir=tmp_path / "ws"))
    presenter.addSceneVolumes()
    presenter.setSegmentation(volume, segmentation)
    presenter.setLabelled([volume], True)
    assert presenter.caseSummaries()[0].spacing == pytest.approx(THIN_SLAB)

    for patch in ((144, 144, 8), (96, 96, 16), (0, 0, 0)):
        presenter.parameters.patchX, presenter.parameters.patchY, presenter.parameters.patchZ = patch
        assert presenter.trainingProblems() == [], patch
    presenter.parameters.patchX, presenter.parameters.patchY, presenter.parameters.patchZ = (144, 144, 12)
    problems = presenter.trainingProblems()
    assert len(problems) == 1 and "multiples of 16, 16, 8" in problems[0]
    # An isotropic case keeps the old rule: 144 x 144 x 8 is refused (z must be a multiple of 16).
    assert patchSizeProblem((144, 144, 8), spacing=(1.0, 1.0, 1.0)) is not None
    assert patchSizeProblem((144, 144, 8)) is not None
    # Slice by slice the panel checks the 2D network it then sends: 16 x 16 x 64 passes the 3D rule
    # for these slabs (2 bottleneck voxels along z) but not the 2D one (one voxel per slice).
    presenter.parameters.patchX, presenter.parameters.patchY, presenter.parameters.patchZ = (16, 16, 64)
    assert presenter.trainingProblems() == []
    presenter.parameters.sliceBySlice = True
    problems = presenter.trainingProblems()
    assert len(problems) == 1 and "slice-by-slice" in problems[0] and "32 x 16 x 8" in problems[0], problems
    presenter.parameters.patchX, presenter.parameters.patchY, presenter.parameters.patchZ = (32, 16, 8)
    assert presenter.trainingProblems() == []


def test_thin_slabs_get_the_slice_by_slice_hint_until_it_is_on(mrml, tmp_path):
    cardiacCase(mrml.scene)
    presenter = SemiSupSegPresenter(SemiSupSegLogic(), PanelParameters(workspaceDir=tmp_path / "ws"))
    presenter.addSceneVolumes()
    assert "thin slabs (1.5 x 1.5 x 5.0 mm voxels)" in presenter.classNamesText()
    presenter.parameters.sliceBySlice = True
    assert "thin slabs" not in presenter.classNamesText()
    assert thinSlabHint((1.0, 1.0, 2.9), False) is None and thinSlabHint((1.0, 1.0, 3.0), False) is not None
    assert thinSlabHint(None, False) is None and thinSlabHint((0.0, 1.0, 5.0), False) is None


def test_the_panel_and_the_engine_agree_on_the_patch_for_each_spacing():
    pytest.importorskip("torch")
    from semisupseg.networks import patch_rule, spacing_options
    from SemiSupSegLib import panel

    sizes = (8, 16, 24, 32, 48, 64, 144)
    for spacing in ((1.0, 1.0, 1.0), THIN_SLAB, (0.7, 0.7, 2.5), (0.8, 0.8, 1.5), (5.0, 1.0, 1.0), (1.0, 1.0, 10.0)):
        options = spacing_options(panel.PANEL_NETWORK, {}, spacing)
        rule = patch_rule(panel.PANEL_NETWORK, options)
        assert patchAxisRule(spacing) == (rule.axis_divisors, rule.axis_strides), spacing
        for patch in [(x, y, z) for x in sizes for y in sizes for z in sizes]:
            assert (patchSizeProblem(patch, spacing=spacing) is None) == (rule.problem(patch) is None), (spacing, patch)
    assert patchAxisRule(THIN_SLAB) == ((16, 16, 8), (16, 16, 8))


def test_the_panel_and_the_engine_agree_on_the_slice_by_slice_patch():
    pytest.importorskip("torch")
    from semisupseg.networks import patch_rule
    from SemiSupSegLib import panel

    rule = patch_rule(panel.PANEL_SLICE_NETWORK)
    assert patchAxisRule(THIN_SLAB, sliceBySlice=True) == (rule.axis_divisors, rule.axis_strides)
    sizes = (8, 16, 24, 32, 48, 64, 144)
    for spacing in (None, (1.0, 1.0, 1.0), THIN_SLAB):
        for patch in [(x, y, z) for x in sizes for y in sizes for z in sizes]:
            panelSays = patchSizeProblem(patch, spacing=spacing, sliceBySlice=True)
            assert (panelSays is None) == (rule.problem(patch) is None), (spacing, patch, panelSays)


def test_the_median_spacing_is_taken_per_axis():
    assert medianSpacing([(1.5, 1.5, 5.0), (1.0, 1.0, 10.0), (2.0, 2.0, 6.0)]) == (1.5, 1.5, 6.0)
    assert medianSpacing([(1.0, 2.0, 4.0), (3.0, 4.0, 6.0)]) == (2.0, 3.0, 5.0)
    assert medianSpacing([]) is None and medianSpacing([()]) is None


# -- 2. names and colours of the loaded prediction ---------------------------------------------


@pytest.fixture
def cardiacRun(mrml, tmp_path):
    volume, segmentation, labels = cardiacCase(mrml.scene)
    logic = SemiSupSegLogic()
    written = logic.writeWorkspace(tmp_path, [(volume, segmentation, True)], classNames=CARDIAC)
    caseId = written["caseIds"][0]
    writeRunOutputs(tmp_path, caseId, labels, np.random.default_rng(2).random(labels.shape).astype(np.float32))
    return logic, volume, segmentation, labels, caseId, tmp_path


def anatomyTable(scene, colours: dict):
    """A stand-in for Slicer's file-based GenericAnatomyColors table (not loaded headless)."""
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "GenericAnatomyColors")
    table.SetTypeToUser()
    table.SetNumberOfColors(len(colours) + 1)
    table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for index, (name, rgb) in enumerate(colours.items(), start=1):
        table.SetColor(index, name, *rgb, 1.0)
    return table


def predictionSegments(scene, caseId):
    segmentation = case_nodes.resultNode(scene, caseId, case_nodes.PREDICTION).GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    return [(s.GetName(), tuple(round(c, 3) for c in s.GetColor())) for s in segments]


def test_prediction_segments_follow_the_dataset_class_names_with_distinct_colours(cardiacRun, mrml):
    logic, volume, segmentation, labels, caseId, workspace = cardiacRun
    dataset = json.loads((workspace / "dataset.json").read_text())
    assert dataset["labels"] == {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"}
    mrml.scene.RemoveNode(segmentation)  # no user colours: the names choose them
    # The anatomy table names the LV, and gives the myocardium the RV's palette colour (it must give way).
    anatomyTable(mrml.scene, {"left_ventricle": (0.1, 0.2, 0.3), "Myocardium": SEGMENT_PALETTE[0]})
    logic.loadResults(workspace, RUN)

    segments = predictionSegments(mrml.scene, caseId)
    assert [name for name, _ in segments] == CARDIAC
    colours = dict(segments)
    assert colours["left ventricle"] == pytest.approx((0.1, 0.2, 0.3), abs=0.01)  # the table keeps 8-bit colours
    assert colours["right ventricle"] == pytest.approx(SEGMENT_PALETTE[0], abs=0.001)
    assert colours["myocardium"] == pytest.approx(SEGMENT_PALETTE[1], abs=0.001)  # its own palette colour, not the RV's
    assert len(set(colours.values())) == 3, colours
    # Each segment holds its class's voxels (label value c -> the c-th class name).
    node = case_nodes.resultNode(mrml.scene, caseId, case_nodes.PREDICTION)
    import slicer

    for index, name in enumerate(CARDIAC, start=1):
        segmentId = node.GetSegmentation().GetSegmentIdBySegmentName(name)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, logic.caseVolumeNode(caseId))
        np.testing.assert_array_equal(mask > 0, labels == index)


def test_the_users_segment_colours_still_win(cardiacRun, mrml):
    logic, volume, segmentation, labels, caseId, workspace = cardiacRun
    user = segmentation.GetSegmentation()
    mine = {"right ventricle": (0.2, 0.4, 0.6), "myocardium": (0.5, 0.5, 0.1), "left ventricle": (0.9, 0.1, 0.9)}
    for name, rgb in mine.items():
        user.GetSegment(user.GetSegmentIdBySegmentName(name)).SetColor(*rgb)
    anatomyTable(mrml.scene, {"left ventricle": (0.1, 0.2, 0.3)})
    logic.loadResults(workspace, RUN)
    assert predictionSegments(mrml.scene, caseId) == [(name, rgb) for name, rgb in mine.items()]


# -- 3. regions say which class they are about ------------------------------------------------


def test_region_stepping_names_the_class_of_each_region(cardiacRun, mrml):
    logic, volume, segmentation, labels, caseId, workspace = cardiacRun
    logic.loadResults(workspace, RUN)
    regions = [{"rank": 1, "center_lps_mm": [-9.0, -9.0, 5.0], "volume_ml": 0.02, "mean_uncertainty": 0.61, "about_class": 2},
               {"rank": 2, "center_lps_mm": [-3.0, -9.0, 5.0], "about_class": 0},
               {"rank": 3, "center_lps_mm": [-6.0, -6.0, 10.0]}]  # a run from before about_class
    (workspace / "runs" / RUN / "regions.json").write_text(json.dumps({"coordinate_system": "LPS", "cases": {caseId: regions}}))
    presenter = SemiSupSegPresenter(SemiSupSegLogic(), PanelParameters(workspaceDir=workspace, lastRunId=RUN))
    presenter.addSceneVolumes()
    presenter.selectCase(logic.caseVolumeNode(caseId))
    texts = []
    for _ in regions:
        presenter.stepRegion(+1)
        texts.append(presenter.regionText())
    assert texts == ["Region 1 of 3 (myocardium): 0.02 ml, mean uncertainty 0.61",
                     "Region 2 of 3 (possibly missed structure)",
                     "Region 3 of 3"]
