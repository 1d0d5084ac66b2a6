"""Export on real MRML nodes, read back by independent readers: .seg.nrrd through slicerio,
NIfTI label maps through SimpleITK; refusal to overwrite; DICOM SEG errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")
SimpleITK = pytest.importorskip("SimpleITK")
slicerio = pytest.importorskip("slicerio")

from SemiSupSegLib import SemiSupSegLogic  # noqa: E402
from slicer_test_scenes import assertGeometryEqualsNode, ijkToRasArray, twoCaseScene  # noqa: E402

CASE_IDS = ["Patient_A_T1", "Patient_B"]


def registeredScene(scene, workspace):
    """The two-case scene, written once to a workspace so that its volumes are cases."""
    cases = twoCaseScene(scene)
    logic = SemiSupSegLogic()
    logic.writeWorkspace(workspace, [(volume, segmentation, True) for volume, segmentation, _, _ in cases])
    return logic, cases


def test_seg_nrrd_round_trip_through_slicerio(mrml, tmp_path):
    logic, cases = registeredScene(mrml.scene, tmp_path / "workspace")
    paths = logic.exportSegmentations(tmp_path / "out", "seg.nrrd")
    assert paths == [str(tmp_path / "out" / f"{caseId}.seg.nrrd") for caseId in CASE_IDS]
    for path, (volume, segmentation, _, expectedLabels) in zip(paths, cases):
        read = slicerio.read_segmentation(path)
        assert slicerio.segment_names(read) == ["liver", "tumor"]
        # Written on the volume's full grid: same voxel-to-LPS mapping, no extent offset.
        np.testing.assert_allclose(read["ijkToLPS"], np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijkToRasArray(volume), atol=1e-6)
        assert list(read.get("referenceImageExtentOffset", [0, 0, 0])) == [0, 0, 0]
        liver = slicerio.segment_mask(read, "liver").transpose(2, 1, 0)  # (i, j, k) -> (k, j, i)
        tumor = slicerio.segment_mask(read, "tumor").transpose(2, 1, 0)
        np.testing.assert_array_equal(liver, expectedLabels >= 1)  # the tumour lies inside the liver
        np.testing.assert_array_equal(tumor, expectedLabels == 2)


def test_nifti_label_maps_on_the_volume_grid(mrml, tmp_path):
    logic, cases = registeredScene(mrml.scene, tmp_path / "workspace")
    paths = logic.exportSegmentations(tmp_path / "out", "nifti")
    assert paths == [str(tmp_path / "out" / f"{caseId}.nii.gz") for caseId in CASE_IDS] + [str(tmp_path / "out" / "labels.json")]
    for path, (volume, _, _, expectedLabels) in zip(paths, cases):
        image = SimpleITK.ReadImage(path)
        np.testing.assert_array_equal(SimpleITK.GetArrayFromImage(image), expectedLabels)
        assertGeometryEqualsNode(image, volume)
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == {"0": "background", "1": "liver", "2": "tumor"}


def test_export_refuses_to_overwrite_unless_asked(mrml, tmp_path):
    logic, _ = registeredScene(mrml.scene, tmp_path / "workspace")
    first = logic.exportSegmentations(tmp_path / "out", "seg.nrrd")
    stamps = {path: (tmp_path / "out" / path).stat().st_mtime_ns for path in first}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        logic.exportSegmentations(tmp_path / "out", "seg.nrrd")
    assert stamps == {path: (tmp_path / "out" / path).stat().st_mtime_ns for path in first}
    assert logic.exportSegmentations(tmp_path / "out", "seg.nrrd", overwrite=True) == first
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{caseId}.seg.nrrd" for caseId in CASE_IDS)


def test_dicom_seg_needs_a_dicom_volume_and_the_exporter(mrml, tmp_path):
    logic, cases = registeredScene(mrml.scene, tmp_path / "workspace")
    with pytest.raises(ValueError) as notDicom:
        logic.exportSegmentations(tmp_path / "out", "dicomseg")
    message = str(notDicom.value)
    assert "Patient A (T1)" in message and "DICOM" in message and "seg.nrrd or NIfTI" in message
    assert not (tmp_path / "out").exists()
    for volume, _, _, _ in cases:  # pretend they came from DICOM: headless there is no DICOM SEG exporter
        volume.SetAttribute("DICOM.instanceUIDs", "1.2.3.4 1.2.3.5")
    with pytest.raises(RuntimeError, match="QuantitativeReporting"):
        logic.exportSegmentations(tmp_path / "out", "dicomseg")
    assert not (tmp_path / "out").exists()


def test_export_of_unknown_cases_and_formats_is_refused(mrml, tmp_path):
    logic, _ = registeredScene(mrml.scene, tmp_path / "workspace")
    with pytest.raises(ValueError, match="nifti"):
        logic.exportSegmentations(tmp_path / "out", "stl")
    with pytest.raises(ValueError, match="no prediction segmentation"):
        logic.exportSegmentations(tmp_path / "out", "nifti", caseIds=["Patient_B"], source="prediction")
