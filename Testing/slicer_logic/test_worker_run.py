"""End to end with the real engine: scene -> workspace -> ``python -m semisupseg train`` as a child
process -> results back as nodes, overlay display, regions and jumps, accepting a prediction,
stopping a run, a worker failure. The worker runs a 4-iteration supervised training of a tiny
U-Net on two 32 x 32 x 16 volumes (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")
SimpleITK = pytest.importorskip("SimpleITK")

import slicer  # noqa: E402
import vtk  # noqa: E402
from SemiSupSegLib import SemiSupSegLogic  # noqa: E402
from slicer_test_scenes import (  # noqa: E402
    FAST_TRAINING,
    assertSameSegments,
    headlessScene,
    ijkToRasArray,
    runToEnd,
    segmentArrays,
    sliceCentres,
    tinyTrainingCases,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finishedRun(tmp_path_factory):
    """One finished worker run shared by the tests of this module (the worker dominates the time)."""
    workspace = tmp_path_factory.mktemp("workspace")
    with headlessScene():
        logic = SemiSupSegLogic()
        logic.writeWorkspace(workspace, tinyTrainingCases(slicer.mrmlScene))
        started = time.monotonic()
        job = logic.startTraining(workspace, FAST_TRAINING)
        startSeconds = time.monotonic() - started
        stateRightAfterStart = job.state
        events = runToEnd(job)
    return {"workspace": workspace, "job": job, "events": events, "startSeconds": startSeconds,
            "stateRightAfterStart": stateRightAfterStart}


def sceneWithWorkspace(finishedRun):
    """Rebuild the same scene in the test's fresh MRML scene; writing it again must change nothing."""
    logic = SemiSupSegLogic()
    cases = tinyTrainingCases(slicer.mrmlScene)
    assert logic.writeWorkspace(finishedRun["workspace"], cases)["written"] == []
    return logic, cases


def test_training_runs_in_the_background_and_reports_events(finishedRun):
    job, events = finishedRun["job"], finishedRun["events"]
    assert finishedRun["startSeconds"] < 5.0 and finishedRun["stateRightAfterStart"] in ("starting", "running")
    assert job.state == "finished" and job.returncode == 0 and job.error is None, job.stderrTail()
    kinds = [event["event"] for event in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and "progress" in kinds
    assert job.progress["iteration"] == job.progress["total"] == 4
    predicted = {event["case"] for event in events if event["event"] == "prediction"}
    assert predicted == {"vol0", "vol1"}
    runDir = finishedRun["workspace"] / "runs" / job.runId
    assert (runDir / "worker.log").exists() and (runDir / "checkpoints" / "last.pt").exists()
    pending = json.loads((finishedRun["workspace"] / "runs" / f"pending-{job.runId}.json").read_text())
    assert pending == FAST_TRAINING


def test_results_load_on_the_volume_grid_with_the_overlay_display(mrml, finishedRun):
    logic, cases = sceneWithWorkspace(finishedRun)
    workspace, runId = finishedRun["workspace"], finishedRun["job"].runId
    userColour = cases[0][1].GetSegmentation().GetNthSegment(0).GetColor()

    results = logic.loadResults(workspace, runId)

    assert list(results) == ["vol0", "vol1"]
    for caseId, (volume, _, _) in zip(results, cases):
        segmentation, uncertainty = results[caseId]["segmentation"], results[caseId]["uncertainty"]
        assert segmentation.GetName() == f"{volume.GetName()} prediction"
        assert uncertainty.GetName() == f"{volume.GetName()} uncertainty"
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        assert segmentation.GetNodeReferenceID(role) == volume.GetID()
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        assert names == ["organ"]
        # Geometry: the volume's grid (to rounding; NIfTI's float32 affine would differ by ~1e-7).
        np.testing.assert_allclose(ijkToRasArray(uncertainty), ijkToRasArray(volume), rtol=0, atol=1e-12)
        assert uncertainty.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
        # Content: what the worker wrote, voxel for voxel.
        runDir = workspace / "runs" / runId
        uncertaintyFile = SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(runDir / "uncertainty" / f"{caseId}.nii.gz")))
        np.testing.assert_allclose(slicer.util.arrayFromVolume(uncertainty), uncertaintyFile, atol=1e-6)
        predictionFile = SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(runDir / "predictions" / f"{caseId}.nii.gz")))
        organId = segmentation.GetSegmentation().GetNthSegmentID(0)
        organ = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, organId, volume)
        np.testing.assert_array_equal(organ, (predictionFile == 1).astype(organ.dtype))
        # Display: heat colours, fixed 0..1 window, only the case's top 2 % (and nothing below 0.2) tinted.
        display = uncertainty.GetDisplayNode()
        assert display.GetColorNodeID() == "vtkMRMLColorTableNodeCoolTint1"  # built in: present headless too
        assert not display.GetAutoWindowLevel()
        assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
        values = slicer.util.arrayFromVolume(uncertainty)
        assert display.GetApplyThreshold() and display.GetLowerThreshold() >= 0.2
        assert np.mean(values >= display.GetLowerThreshold()) <= 0.02
    # The first case's prediction keeps the colour the user gave the class.
    assert results["vol0"]["segmentation"].GetSegmentation().GetNthSegment(0).GetColor() == pytest.approx(userColour)
    # All slice views: the case's volume behind its uncertainty at 0.4 opacity.
    composites = [mrml.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)]
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == cases[0][0].GetID()
        assert composite.GetForegroundVolumeID() == results["vol0"]["uncertainty"].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.4)


def test_reloading_replaces_only_the_result_nodes(mrml, finishedRun):
    logic, cases = sceneWithWorkspace(finishedRun)
    workspace, runId = finishedRun["workspace"], finishedRun["job"].runId
    first = logic.loadResults(workspace, runId)
    counts = {name: mrml.scene.GetNumberOfNodesByClass(name) for name in ("vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode")}
    again = logic.loadResults(workspace, runId, caseIds=["vol1"])
    assert again["vol1"]["segmentation"] is first["vol1"]["segmentation"]
    assert again["vol1"]["uncertainty"] is first["vol1"]["uncertainty"]
    assert counts == {name: mrml.scene.GetNumberOfNodesByClass(name) for name in counts}
    assert mrml.scene.GetNodeByID(cases[0][1].GetID()) is cases[0][1]  # the user's segmentation is still there


def test_regions_and_jump_centre_the_slice_views(mrml, finishedRun):
    logic, cases = sceneWithWorkspace(finishedRun)
    workspace, runId = finishedRun["workspace"], finishedRun["job"].runId
    logic.loadResults(workspace, runId)
    for caseId, (volume, _, _) in zip(("vol0", "vol1"), cases):
        regions = logic.regions(workspace, runId, caseId)
        assert regions, f"the engine found no region in {caseId}"
        assert [region["rank"] for region in regions] == sorted(region["rank"] for region in regions)
        region = regions[0]
        centre = np.array(logic.regionCenterRAS(region))
        # The RAS centre is where the region's voxel is in the volume (independent of LPS/RAS bookkeeping).
        voxelCentre = ijkToRasArray(volume) @ np.array([*region["center_voxel"], 1.0])
        spacingDiagonal = np.linalg.norm(np.linalg.norm(ijkToRasArray(volume)[:3, :3], axis=0))
        assert np.linalg.norm(voxelCentre[:3] - centre) <= spacingDiagonal
        logic.jumpToRegion(region)
        for name, sliceCentre in sliceCentres(mrml.scene).items():
            np.testing.assert_allclose(sliceCentre, centre, atol=1e-6, err_msg=name)
        composite = mrml.scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == volume.GetID()  # the view switched to the region's case

    # A volume under a transform: the views go to the transformed (displayed) position.
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)
    transform.SetMatrixTransformToParent(shift)
    cases[1][0].SetAndObserveTransformNodeID(transform.GetID())
    region = logic.regions(workspace, runId, "vol1")[0]
    logic.jumpToRegion(region)
    expected = np.array(logic.regionCenterRAS(region)) + [10.0, 0.0, 0.0]
    for sliceCentre in sliceCentres(mrml.scene).values():
        np.testing.assert_allclose(sliceCentre, expected, atol=1e-6)


def test_case_scores_come_from_the_prediction_events(finishedRun):
    expected = {event["case"]: event["score"] for event in finishedRun["events"] if event["event"] == "prediction"}
    scores = SemiSupSegLogic().caseScores(finishedRun["workspace"], finishedRun["job"].runId)
    assert scores == pytest.approx(expected) and set(scores) == {"vol0", "vol1"}


def test_accept_prediction_is_the_only_change_to_user_segmentations(mrml, finishedRun, tmp_path):
    logic, cases = sceneWithWorkspace(finishedRun)
    workspace, runId = finishedRun["workspace"], finishedRun["job"].runId
    volume0, userSegmentation, _ = cases[0]
    volume1 = cases[1][0]
    before = segmentArrays(userSegmentation, volume0)
    organId = userSegmentation.GetSegmentation().GetNthSegmentID(0)
    segmentationMTime = userSegmentation.GetSegmentation().GetMTime()

    # Everything else the module does leaves the user's segmentation alone.
    results = logic.loadResults(workspace, runId)
    logic.jumpToRegion(logic.regions(workspace, runId, "vol0")[0])
    logic.caseScores(workspace, runId)
    logic.exportSegmentations(tmp_path / "seg", "seg.nrrd")
    logic.exportSegmentations(tmp_path / "nii", "nifti")
    logic.writeWorkspace(workspace, [(volume0, userSegmentation, True), (volume1, None, False)])
    logic.loadResults(workspace, runId)
    assertSameSegments(before, segmentArrays(userSegmentation, volume0))
    assert userSegmentation.GetSegmentation().GetMTime() == segmentationMTime

    # Accepting copies the prediction into the user's node, keeping the segment's id and colour.
    prediction0 = results["vol0"]["segmentation"]
    predicted0 = slicer.util.arrayFromSegmentBinaryLabelmap(prediction0, prediction0.GetSegmentation().GetNthSegmentID(0), volume0)
    assert logic.acceptPrediction("vol0") is userSegmentation
    after = segmentArrays(userSegmentation, volume0)
    assert list(after) == ["organ"] and after["organ"][1] == before["organ"][1]
    assert userSegmentation.GetSegmentation().GetSegmentIdBySegmentName("organ") == organId
    np.testing.assert_array_equal(after["organ"][0], predicted0)

    # A case without a segmentation gets a new one, and becomes labelled.
    assert volume1.GetAttribute("SemiSupSeg.Labelled") == "0"
    created = logic.acceptPrediction(volume1)
    assert created.GetName() == "vol1 segmentation" and created is not results["vol1"]["segmentation"]
    prediction1 = results["vol1"]["segmentation"]
    predicted1 = slicer.util.arrayFromSegmentBinaryLabelmap(prediction1, prediction1.GetSegmentation().GetNthSegmentID(0), volume1)
    np.testing.assert_array_equal(segmentArrays(created, volume1)["organ"][0], predicted1)
    assert volume1.GetAttribute("SemiSupSeg.Labelled") == "1"
    assert [case[1] for case in logic.sceneCases()] == [userSegmentation, created]
    rewritten = logic.writeWorkspace(workspace, logic.sceneCases())
    assert "labels/vol1.nii.gz" in rewritten["written"]


def test_stop_mid_run_cancels_and_keeps_a_checkpoint(finishedRun):
    workspace = finishedRun["workspace"]
    with headlessScene():
        job = SemiSupSegLogic().startTraining(workspace, dict(FAST_TRAINING, iterations=10000))
        deadline = time.monotonic() + 240
        while job.progress is None and job.state in ("starting", "running"):
            assert time.monotonic() < deadline, "no progress event"
            time.sleep(0.1)
        assert job.state == "running", job.error
        job.stop(timeout=120)
        assert job.state == "cancelled"
        assert job.returncode == 0
        with pytest.raises(ProcessLookupError):
            os.kill(job.process.pid, 0)
        assert (workspace / "runs" / job.runId / "checkpoints" / "last.pt").exists()
        assert "cancelled" in [event["event"] for event in job.pollEvents()]


def test_worker_failure_surfaces_the_message(finishedRun, tmp_path):
    workspace = tmp_path / "broken"
    workspace.mkdir()
    for name in ("dataset.json", "images", "labels"):
        source = finishedRun["workspace"] / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, workspace / name)
    label = SimpleITK.Image(30, 32, 16, SimpleITK.sitkUInt8)  # one column short of the image grid
    SimpleITK.WriteImage(label, str(workspace / "labels" / "vol0.nii.gz"))
    with headlessScene():
        job = SemiSupSegLogic().startTraining(workspace, FAST_TRAINING)
        runToEnd(job, timeout=120)
    assert job.state == "failed" and job.returncode == 2
    assert "vol0" in job.error["message"], job.error
    assert job.error["hint"]
