"""Scene -> workspace on real MRML nodes: voxels and geometry of the written files, dataset.json,
write-only-what-changed, refusal of inconsistent segment names, user nodes untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")
SimpleITK = pytest.importorskip("SimpleITK")

import slicer  # noqa: E402
from SemiSupSegLib import SemiSupSegLogic  # noqa: E402
from slicer_test_scenes import assertGeometryEqualsNode, assertSameSegments, segmentArrays, twoCaseScene  # noqa: E402


def test_workspace_files_align_with_nodes_and_are_written_once(mrml, tmp_path):
    cases = twoCaseScene(mrml.scene)
    before = [segmentArrays(segmentation, volume) for volume, segmentation, _, _ in cases]
    logic = SemiSupSegLogic()

    result = logic.writeWorkspace(tmp_path, [(volume, segmentation, True) for volume, segmentation, _, _ in cases])

    ids = ["Patient_A_T1", "Patient_B"]
    expectedFiles = [f"images/{i}.nii.gz" for i in ids[:1]] + [f"labels/{ids[0]}.nii.gz"]
    expectedFiles += [f"images/{ids[1]}.nii.gz", f"labels/{ids[1]}.nii.gz", "dataset.json"]
    assert result["written"] == expectedFiles
    assert result["unchanged"] == [] and result["cases"] == 2 and result["labelled"] == 2
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["labels"] == {"0": "background", "1": "liver", "2": "tumor"}
    assert dataset["modality"] == {"0": "MR"}
    assert dataset["cases"] == [
        {"id": caseId, "image": f"images/{caseId}.nii.gz", "label": f"labels/{caseId}.nii.gz", "source": "scene"}
        for caseId in ids
    ]
    for caseId, (volume, segmentation, image, expectedLabels) in zip(ids, cases):
        assert volume.GetAttribute("SemiSupSeg.CaseId") == caseId
        written = SimpleITK.ReadImage(str(tmp_path / "images" / f"{caseId}.nii.gz"))
        np.testing.assert_array_equal(SimpleITK.GetArrayFromImage(written), image)  # both (k, j, i)
        assertGeometryEqualsNode(written, volume)
        labels = SimpleITK.ReadImage(str(tmp_path / "labels" / f"{caseId}.nii.gz"))
        assert labels.GetPixelID() == SimpleITK.sitkUInt8
        np.testing.assert_array_equal(SimpleITK.GetArrayFromImage(labels), expectedLabels)
        assertGeometryEqualsNode(labels, volume)

    again = logic.writeWorkspace(tmp_path, [(volume, segmentation, True) for volume, segmentation, _, _ in cases])
    assert again["written"] == []
    assert sorted(again["unchanged"]) == sorted(expectedFiles)

    # Paint one more voxel into patient B's liver: only B's label file is rewritten.
    volumeB, segmentationB, _, labelsB = cases[1]
    liverId = segmentationB.GetSegmentation().GetSegmentIdBySegmentName("liver")
    liver = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationB, liverId, volumeB)
    assert liver[0, 0, 0] == 0
    liver[0, 0, 0] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(liver, segmentationB, liverId, volumeB)
    before[1] = segmentArrays(segmentationB, volumeB)
    changed = logic.writeWorkspace(tmp_path, [(volume, segmentation, True) for volume, segmentation, _, _ in cases])
    assert changed["written"] == ["labels/Patient_B.nii.gz"]
    rewritten = SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(tmp_path / "labels" / "Patient_B.nii.gz")))
    assert rewritten[0, 0, 0] == 1 and (rewritten != labelsB).sum() == 1

    for (volume, segmentation, _, _), snapshot in zip(cases, before):
        assertSameSegments(snapshot, segmentArrays(segmentation, volume))


def test_case_ids_are_stable_and_unique(mrml, tmp_path):
    (volumeA, segmentationA, _, _), (volumeB, _, _, _) = twoCaseScene(mrml.scene)
    volumeB.SetName(volumeA.GetName())  # two volumes with one name get two ids
    logic = SemiSupSegLogic()
    first = logic.writeWorkspace(tmp_path, [(volumeA, segmentationA, True), (volumeB, None, False)])
    assert first["caseIds"] == ["Patient_A_T1", "Patient_A_T1_2"]
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["cases"][1]["label"] is None
    volumeA.SetName("renamed")  # the stored id wins over the new name
    second = logic.writeWorkspace(tmp_path, [(volumeA, segmentationA, True), (volumeB, None, False)])
    assert second["caseIds"] == first["caseIds"] and second["written"] == []


def test_mismatching_segment_names_are_refused_and_nothing_is_written(mrml, tmp_path):
    (volumeA, segmentationA, _, _), (volumeB, segmentationB, _, _) = twoCaseScene(mrml.scene)
    logic = SemiSupSegLogic()
    logic.writeWorkspace(tmp_path, [(volumeA, segmentationA, True), (volumeB, segmentationB, True)])
    datasetBefore = (tmp_path / "dataset.json").read_text()
    snapshotB = segmentArrays(segmentationB, volumeB)

    tumorId = segmentationB.GetSegmentation().GetSegmentIdBySegmentName("tumor")
    segmentationB.GetSegmentation().GetSegment(tumorId).SetName("lesion")
    with pytest.raises(ValueError) as refused:
        logic.writeWorkspace(tmp_path, [(volumeA, segmentationA, True), (volumeB, segmentationB, True)], classNames=["liver", "tumor"])
    message = str(refused.value)
    assert "Patient B seg" in message and "lesion" in message and "Rename" in message

    segmentationB.GetSegmentation().GetSegment(tumorId).SetName("Tumor")  # case typo, no explicit class list
    with pytest.raises(ValueError, match='"Tumor".*"tumor"|"tumor".*"Tumor"'):
        logic.writeWorkspace(tmp_path, [(volumeA, segmentationA, True), (volumeB, segmentationB, True)])

    assert (tmp_path / "dataset.json").read_text() == datasetBefore
    segmentationB.GetSegmentation().GetSegment(tumorId).SetName("tumor")
    assertSameSegments(snapshotB, segmentArrays(segmentationB, volumeB))


def test_labelled_case_needs_a_segmentation(mrml, tmp_path):
    (volumeA, _, _, _), _ = twoCaseScene(mrml.scene)
    with pytest.raises(ValueError, match="marked labelled but has no segmentation"):
        SemiSupSegLogic().writeWorkspace(tmp_path, [(volumeA, None, True)])
    assert not (tmp_path / "dataset.json").exists()
