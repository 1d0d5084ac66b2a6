"""Loading run results into the scene from hand-written run outputs (no engine needed): segment
content and names, exact geometry, refusal of results that do not fit, regions in LPS."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")
SimpleITK = pytest.importorskip("SimpleITK")

import slicer  # noqa: E402
from SemiSupSegLib import SemiSupSegLogic  # noqa: E402
from slicer_test_scenes import ijkToRasArray, sliceCentres, twoCaseScene  # noqa: E402

RUN = "run-by-hand"


def writeRunOutputs(workspace, caseId: str, labels_kji: np.ndarray, uncertainty_kji: np.ndarray, grid=None) -> None:
    """Prediction and uncertainty files as the engine writes them: on the image's grid (or ``grid``)."""
    reference = grid or SimpleITK.ReadImage(str(workspace / "images" / f"{caseId}.nii.gz"))
    for folder, array in (("predictions", labels_kji.astype(np.uint8)), ("uncertainty", uncertainty_kji.astype(np.float32))):
        image = SimpleITK.GetImageFromArray(array)
        image.CopyInformation(reference)
        (workspace / "runs" / RUN / folder).mkdir(parents=True, exist_ok=True)
        SimpleITK.WriteImage(image, str(workspace / "runs" / RUN / folder / f"{caseId}.nii.gz"))


@pytest.fixture
def handRun(mrml, tmp_path):
    cases = twoCaseScene(mrml.scene)
    logic = SemiSupSegLogic()
    result = logic.writeWorkspace(tmp_path, [(volume, segmentation, True) for volume, segmentation, _, _ in cases])
    rng = np.random.default_rng(3)
    uncertainties = {}
    for caseId, (_, _, _, labels) in zip(result["caseIds"], cases):
        uncertainties[caseId] = rng.random(labels.shape).astype(np.float32)
        writeRunOutputs(tmp_path, caseId, labels, uncertainties[caseId])
    return logic, cases, result["caseIds"], uncertainties, tmp_path


def test_predictions_become_segments_with_the_class_names_and_user_colours(handRun):
    logic, cases, caseIds, uncertainties, workspace = handRun
    results = logic.loadResults(workspace, RUN)
    assert list(results) == caseIds
    for caseId, (volume, userSegmentation, _, labels) in zip(caseIds, cases):
        prediction = results[caseId]["segmentation"]
        segmentation = prediction.GetSegmentation()
        userColours = {userSegmentation.GetSegmentation().GetNthSegment(i).GetName(): userSegmentation.GetSegmentation().GetNthSegment(i).GetColor() for i in range(2)}
        for index, name in enumerate(["liver", "tumor"], start=1):
            segmentId = segmentation.GetNthSegmentID(index - 1)
            assert segmentation.GetSegment(segmentId).GetName() == name
            assert segmentation.GetSegment(segmentId).GetColor() == pytest.approx(userColours[name])
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(prediction, segmentId, volume)
            np.testing.assert_array_equal(mask, (labels == index).astype(mask.dtype))
        uncertainty = results[caseId]["uncertainty"]
        np.testing.assert_allclose(ijkToRasArray(uncertainty), ijkToRasArray(volume), rtol=0, atol=1e-12)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(uncertainty), uncertainties[caseId])


def test_results_on_another_grid_are_refused(handRun):
    logic, cases, caseIds, uncertainties, workspace = handRun
    labels = cases[1][3]
    shifted = SimpleITK.ReadImage(str(workspace / "images" / f"{caseIds[1]}.nii.gz"))
    shifted.SetOrigin(tuple(np.array(shifted.GetOrigin()) + 5.0))
    writeRunOutputs(workspace, caseIds[1], labels, uncertainties[caseIds[1]], grid=shifted)
    with pytest.raises(ValueError, match=f'case "{caseIds[1]}" is not on the grid of volume "Patient B"'):
        logic.loadResults(workspace, RUN, caseIds=[caseIds[1]])


def test_labels_beyond_the_class_list_are_refused(handRun):
    logic, cases, caseIds, uncertainties, workspace = handRun
    labels = cases[0][3].copy()
    labels[0, 0, 0] = 5
    writeRunOutputs(workspace, caseIds[0], labels, uncertainties[caseIds[0]])
    with pytest.raises(ValueError, match="contains label 5"):
        logic.loadResults(workspace, RUN, caseIds=[caseIds[0]])


def test_a_case_missing_from_the_scene_is_loaded_from_the_workspace(handRun, mrml):
    logic, cases, caseIds, _, workspace = handRun
    for volume, segmentation, _, _ in cases:  # a scene without the volumes (e.g. a workspace made by the CLI)
        mrml.scene.RemoveNode(segmentation)
        mrml.scene.RemoveNode(volume)
    results = logic.loadResults(workspace, RUN, caseIds=[caseIds[0]])
    volume = logic.caseVolumeNode(caseIds[0])
    assert volume is not None and volume.GetName() == caseIds[0]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), cases[0][2])
    np.testing.assert_allclose(ijkToRasArray(results[caseIds[0]]["uncertainty"]), ijkToRasArray(volume), rtol=0, atol=1e-12)


def test_regions_in_lps_are_converted_and_jumped_to(handRun, mrml):
    logic, cases, caseIds, _, workspace = handRun
    logic.loadResults(workspace, RUN)
    regions = {"coordinate_system": "LPS", "units": "mm", "cases": {caseIds[1]: [
        {"rank": 2, "center_lps_mm": [1.0, 2.0, 3.0]},
        {"rank": 1, "center_lps_mm": [-10.0, 20.0, 30.0]},
    ]}}
    (workspace / "runs" / RUN / "regions.json").write_text(json.dumps(regions))
    loaded = logic.regions(workspace, RUN, caseIds[1])
    assert [region["rank"] for region in loaded] == [1, 2] and loaded[0]["case"] == caseIds[1]
    assert logic.regionCenterRAS(loaded[0]) == [10.0, -20.0, 30.0]
    logic.jumpToRegion(loaded[0])
    for centre in sliceCentres(mrml.scene).values():
        np.testing.assert_allclose(centre, [10.0, -20.0, 30.0])
    assert mrml.scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode").GetBackgroundVolumeID() == cases[1][0].GetID()
    assert logic.regions(workspace, RUN, "no-such-case") == []
    assert logic.regions(workspace, "no-such-run", caseIds[1]) == []

