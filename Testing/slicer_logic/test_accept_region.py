"""Accept region on real MRML: the corrected prediction inside an uncertain region becomes annotated
voxels of the case's partial label (255 elsewhere), on exactly the image grid, incrementally; the
user's segmentations are never touched; refusals; newer predictions wait for unaccepted edits.
"Train again" and a worker taking in an accepted region: test_warm_start.py.

The run's results (prediction, uncertainty, regions.json) are written by the test on the volume's
grid, so every expected voxel is known; the expected region voxels are computed independently of
the logic, from a Euclidean distance transform in millimetres."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")
SimpleITK = pytest.importorskip("SimpleITK")
ndimage = pytest.importorskip("scipy.ndimage")

import slicer  # noqa: E402
from SemiSupSegLib import SemiSupSegLogic  # noqa: E402
from slicer_test_scenes import (  # noqa: E402
    assertGeometryEqualsNode,
    assertSameSegments,
    blob,
    directionMatrix,
    ijkToRasArray,
    makeSegmentation,
    makeVolume,
    segmentArrays,
    writeArray,
)

SHAPE_KJI = (10, 18, 22)
SPACING_IJK = (0.7, 1.1, 2.5)  # anisotropic: the 3 mm margin is 4, 2 and 1 voxels along i, j, k
RUN = "run-a"
CLASSES = ["background", "organ", "tumor"]
IGNORE = 255
# Regions as the engine writes them: inclusive (i, j, k) boxes, each with its own threshold.
REGION_BOXES = [((4, 2, 2), (13, 9, 7)), ((14, 10, 2), (21, 17, 8))]


def predictedClasses() -> np.ndarray:
    """The run's prediction (k, j, i): an organ with a tumour inside."""
    classes = blob(SHAPE_KJI, (5, 9, 11), (3, 6, 7)).astype(np.uint8)
    classes[4:6, 7:9, 9:12] = 2
    return classes


def uncertaintyMap() -> np.ndarray:
    """Hot (0.8) on a shell around the organ's surface, cold (0.05) elsewhere."""
    grids = np.meshgrid(*[np.arange(n) for n in SHAPE_KJI], indexing="ij")
    distance = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, (5, 9, 11), (3, 6, 7))))
    return np.where(np.abs(distance - 1.0) < 0.35, 0.8, 0.05).astype(np.float32)


def writeRun(workspace: Path, volumeNode, caseId: str, classes: np.ndarray, runId: str = RUN) -> None:
    """A finished run's files for one case: prediction, uncertainty and regions.json."""
    runDir = workspace / "runs" / runId
    writeArray(volumeNode, classes, runDir / "predictions" / f"{caseId}.nii.gz", labelmap=True)
    writeArray(volumeNode, uncertaintyMap(), runDir / "uncertainty" / f"{caseId}.nii.gz", labelmap=False)
    regions = []
    for rank, (low, high) in enumerate(REGION_BOXES, start=1):
        centre = [(a + b) // 2 for a, b in zip(low, high)]
        ras = (ijkToRasArray(volumeNode) @ np.array([*centre, 1.0]))[:3]
        regions.append({"rank": rank, "threshold": 0.5, "center_voxel": centre, "center_ras_mm": ras.tolist(),
                        "center_lps_mm": [-ras[0], -ras[1], ras[2]], "bbox_voxels": {"min": list(low), "max": list(high)}})
    path = runDir / "regions.json"
    content = json.loads(path.read_text()) if path.exists() else {"format": 1, "coordinate_system": "LPS", "cases": {}}
    content["cases"][caseId] = regions
    path.write_text(json.dumps(content))


def expectedRegionMask(box, uncertainty, marginMm: float = 3.0) -> np.ndarray:
    """Independent of the logic: uncertain voxels of the box, then every voxel within marginMm of one (EDT in mm)."""
    (i0, j0, k0), (i1, j1, k1) = box
    seeds = np.zeros(SHAPE_KJI, dtype=bool)
    seeds[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = uncertainty[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] > 0.5
    assert seeds.any()
    distance = ndimage.distance_transform_edt(~seeds, sampling=tuple(reversed(SPACING_IJK)))
    return distance <= marginMm + 1e-6


def predictionArray(segmentationNode, volumeNode) -> np.ndarray:
    """Class-indexed (k, j, i) array of a prediction segmentation (tumour over organ)."""
    classes = np.zeros(SHAPE_KJI, dtype=np.uint8)
    for value, name in enumerate(CLASSES[1:], start=1):
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)
        classes[slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0] = value
    return classes


def paint(segmentationNode, volumeNode, classes: np.ndarray) -> None:
    """Edit the prediction like Segment Editor would: set each segment from a class array."""
    for value, name in enumerate(CLASSES[1:], start=1):
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)
        slicer.util.updateSegmentBinaryLabelmapFromArray((classes == value).astype(np.uint8), segmentationNode, segmentId, volumeNode)


def readLabel(path) -> tuple:
    image = SimpleITK.ReadImage(str(path))
    return image, SimpleITK.GetArrayFromImage(image)


@pytest.fixture
def reviewScene(mrml, tmp_path):
    """vol0: labelled (user segmentation organ + tumor); vol1: unlabelled, with a draft segmentation of the
    user's own. Workspace written, run results of both cases loaded."""
    rng = np.random.default_rng(3)
    volumes = []
    for index in range(2):
        image = (rng.normal(0, 1, SHAPE_KJI) * 50 + 100).astype(np.float32)
        volumes.append(makeVolume(mrml.scene, f"vol{index}", image, SPACING_IJK, (4.0 + 30 * index, -7.0, 12.5),
                                  directionMatrix(25.0 + 10 * index)))
    organ = blob(SHAPE_KJI, (5, 9, 11), (3, 6, 7))
    tumor = np.zeros(SHAPE_KJI, np.uint8)
    tumor[4:6, 7:9, 9:12] = 1
    userSeg0 = makeSegmentation(mrml.scene, volumes[0], "vol0 seg", {"organ": organ, "tumor": tumor})
    draft1 = makeSegmentation(mrml.scene, volumes[1], "vol1 draft", {"organ": blob(SHAPE_KJI, (5, 8, 8), (2, 3, 3))})
    logic = SemiSupSegLogic()
    cases = [(volumes[0], userSeg0, True), (volumes[1], draft1, False)]
    logic.writeWorkspace(tmp_path, cases)
    for volume in volumes:
        writeRun(tmp_path, volume, volume.GetName(), predictedClasses())
    results = logic.loadResults(tmp_path, RUN)
    return dict(logic=logic, workspace=tmp_path, volumes=volumes, userSegs=[userSeg0, draft1], results=results, cases=cases)


def test_accept_region_writes_the_edited_classes_on_the_image_grid_and_a_second_region_adds(reviewScene):
    logic, workspace, (vol0, vol1) = reviewScene["logic"], reviewScene["workspace"], reviewScene["volumes"]
    prediction = reviewScene["results"]["vol1"]["segmentation"]
    before = [segmentArrays(seg, volume) for seg, volume in zip(reviewScene["userSegs"], (vol0, vol1))]
    regions = logic.regions(workspace, RUN, "vol1")
    assert [region["rank"] for region in regions] == [1, 2]

    # The annotator adds organ at the first region (where the network was unsure) and accepts it.
    edited1 = predictedClasses()
    edited1[2:5, 2:6, 5:10] = 1
    paint(prediction, vol1, edited1)
    np.testing.assert_array_equal(predictionArray(prediction, vol1), edited1)
    result = logic.acceptRegion(workspace, vol1, regions[0])

    mask1 = expectedRegionMask(REGION_BOXES[0], uncertaintyMap())
    labelPath = workspace / "labels" / "vol1.partial.nii.gz"
    assert Path(result["label"]) == labelPath and result["source"] == "uncertain voxels"
    assert result["regionVoxels"] == int(mask1.sum()) == result["annotatedVoxels"] and result["regionsReviewed"] == 1
    image, labels = readLabel(labelPath)
    workspaceImage = SimpleITK.ReadImage(str(workspace / "images" / "vol1.nii.gz"))
    assert image.GetSize() == workspaceImage.GetSize() == tuple(reversed(SHAPE_KJI))
    np.testing.assert_allclose(image.GetSpacing(), workspaceImage.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), workspaceImage.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), workspaceImage.GetDirection(), atol=1e-6)
    assertGeometryEqualsNode(image, vol1)
    assert image.GetPixelID() == SimpleITK.sitkUInt8
    expected = np.full(SHAPE_KJI, IGNORE, np.uint8)
    expected[mask1] = edited1[mask1]
    np.testing.assert_array_equal(labels, expected)
    assert {1, 2} <= set(np.unique(labels[mask1]))  # both classes were inside the region: a real test of the mapping
    assert (edited1 != predictedClasses())[mask1].any()  # the edit is what was written, not the prediction

    dataset = json.loads((workspace / "dataset.json").read_text())
    assert dataset["ignore_label"] == IGNORE
    assert {case["id"]: case["label"] for case in dataset["cases"]} == {
        "vol0": "labels/vol0.nii.gz", "vol1": "labels/vol1.partial.nii.gz"}

    # Further edits at region 1 (not accepted) and a removal at region 2; accepting region 2 adds its voxels
    # and leaves region 1's accepted voxels as they were accepted.
    edited2 = edited1.copy()
    edited2[2:5, 2:6, 5:10] = 0
    edited2[3:7, 12:16, 15:19] = 0
    paint(prediction, vol1, edited2)
    result = logic.acceptRegion(workspace, "vol1", regions[1])
    mask2 = expectedRegionMask(REGION_BOXES[1], uncertaintyMap())
    expected[mask2] = edited2[mask2]
    _, labels = readLabel(labelPath)
    np.testing.assert_array_equal(labels, expected)
    assert (mask1 & ~mask2).any() and (edited2 != edited1)[mask1 & ~mask2].any()
    assert result["regionsReviewed"] == 2 and result["annotatedVoxels"] == int((mask1 | mask2).sum())
    assert logic.reviewedRegionCounts(workspace) == {"vol1": 2}
    # Accepting the same region again replaces its entry: still two regions reviewed.
    assert logic.acceptRegion(workspace, "vol1", regions[1])["regionsReviewed"] == 2

    # The user's segmentations were never touched; vol1 stays unlabelled, vol0 labelled.
    for segmentation, volume, old in zip(reviewScene["userSegs"], (vol0, vol1), before):
        assertSameSegments(old, segmentArrays(segmentation, volume))
    assert vol1.GetAttribute("SemiSupSeg.Labelled") == "0" and vol0.GetAttribute("SemiSupSeg.Labelled") == "1"

    # Train again rewrites the workspace: the partial label stays the case's label, and ignore_label stays.
    rewritten = logic.writeWorkspace(workspace, reviewScene["cases"])
    assert rewritten["partial"] == 1 and "labels/vol1.partial.nii.gz" not in rewritten["written"]
    dataset = json.loads((workspace / "dataset.json").read_text())
    assert dataset["ignore_label"] == IGNORE and dataset["cases"][1]["label"] == "labels/vol1.partial.nii.gz"
    np.testing.assert_array_equal(readLabel(labelPath)[1], expected)


def test_class_names_are_checked_for_partial_cases_and_a_new_order_reindexes(reviewScene):
    logic, workspace, (_, vol1) = reviewScene["logic"], reviewScene["workspace"], reviewScene["volumes"]
    regions = logic.regions(workspace, RUN, "vol1")
    logic.acceptRegion(workspace, vol1, regions[0])
    _, labels = readLabel(workspace / "labels" / "vol1.partial.nii.gz")
    assert (labels == 2).any()  # the partial label holds tumour voxels

    # The labelled segmentation's "tumor" renamed: the partial case still uses "tumor" -> refused, nothing written.
    userSeg0 = reviewScene["userSegs"][0]
    tumorSegment = userSeg0.GetSegmentation().GetSegment(userSeg0.GetSegmentation().GetSegmentIdBySegmentName("tumor"))
    tumorSegment.SetName("Tumor")
    datasetBefore = (workspace / "dataset.json").read_text()
    with pytest.raises(ValueError, match=r'Case "vol1" has 1 reviewed regions labelled \[\'tumor\'\].*"tumor" looks like "Tumor"'):
        logic.writeWorkspace(workspace, reviewScene["cases"])
    assert (workspace / "dataset.json").read_text() == datasetBefore
    tumorSegment.SetName("tumor")

    # An explicit class order: the partial label's values follow the names.
    logic.writeWorkspace(workspace, reviewScene["cases"], classNames=["tumor", "organ"])
    _, remapped = readLabel(workspace / "labels" / "vol1.partial.nii.gz")
    swap = np.array([0, 2, 1] + [IGNORE] * 253, dtype=np.uint8)
    np.testing.assert_array_equal(remapped, swap[labels])
    reviews = json.loads((workspace / "reviewed_regions.json").read_text())
    assert reviews["cases"]["vol1"]["classes"] == ["background", "tumor", "organ"]


def test_refusals_name_the_case_and_the_fix(reviewScene, mrml):
    logic, workspace, (vol0, vol1) = reviewScene["logic"], reviewScene["workspace"], reviewScene["volumes"]
    region = logic.regions(workspace, RUN, "vol1")[0]
    with pytest.raises(ValueError, match=r'No region is selected for "vol1".*Next uncertain region'):
        logic.acceptRegion(workspace, vol1, None)
    with pytest.raises(ValueError, match=r'belongs to case "vol1", not to "vol0"'):
        logic.acceptRegion(workspace, vol0, region)
    with pytest.raises(ValueError, match=r'"vol0" is fully labelled from your segmentation "vol0 seg".*Accept prediction'):
        logic.acceptRegion(workspace, vol0, logic.regions(workspace, RUN, "vol0")[0])
    prediction = reviewScene["results"]["vol1"]["segmentation"]
    segment = prediction.GetSegmentation().GetSegment(prediction.GetSegmentation().GetSegmentIdBySegmentName("organ"))
    segment.SetName("Organ")
    with pytest.raises(ValueError, match=r'"Organ" looks like "organ"'):
        logic.acceptRegion(workspace, vol1, region)
    segment.SetName("organ")
    mrml.scene.RemoveNode(prediction)
    with pytest.raises(ValueError, match=r'No prediction is loaded for "vol1".*Load results'):
        logic.acceptRegion(workspace, vol1, region)
    # Nothing was written by any refusal.
    assert not (workspace / "labels" / "vol1.partial.nii.gz").exists() and not (workspace / "reviewed_regions.json").exists()
    assert "ignore_label" not in json.loads((workspace / "dataset.json").read_text())


def test_a_newer_prediction_waits_for_unaccepted_edits(reviewScene):
    logic, workspace, (vol0, vol1) = reviewScene["logic"], reviewScene["workspace"], reviewScene["volumes"]
    prediction0 = reviewScene["results"]["vol0"]["segmentation"]
    prediction1 = reviewScene["results"]["vol1"]["segmentation"]

    # Loading the same files again changes nothing and flags nothing.
    again = logic.loadResults(workspace, RUN)
    assert not any(result["newerPredictionWaiting"] for result in again.values())
    assert logic.newerPredictionRun("vol1") is None

    # Touched without a change (painted with the same classes): not an edit, a newer file replaces it.
    paint(prediction0, vol0, predictedClasses())
    touched = predictedClasses()
    touched[0, 0:3, 0:3] = 1
    writeArray(vol0, touched, workspace / "runs" / RUN / "predictions" / "vol0.nii.gz", labelmap=True)
    assert not logic.loadResults(workspace, RUN, ["vol0"])["vol0"]["newerPredictionWaiting"]
    np.testing.assert_array_equal(predictionArray(prediction0, vol0), touched)

    edited = predictedClasses()
    edited[2:5, 2:6, 5:10] = 1
    paint(prediction1, vol1, edited)
    again = logic.loadResults(workspace, RUN)  # same files: the edits stay, but nothing newer waits
    assert again["vol1"]["segmentation"] is prediction1 and not again["vol1"]["newerPredictionWaiting"]
    np.testing.assert_array_equal(predictionArray(prediction1, vol1), edited)

    # The worker writes a newer prediction for both cases (organ grown by one slice).
    newer = predictedClasses()
    newer[8, 5:13, 6:16] = 1
    for volume in (vol0, vol1):
        writeArray(volume, newer, workspace / "runs" / RUN / "predictions" / f"{volume.GetName()}.nii.gz", labelmap=True)
    arrived = logic.loadResults(workspace, RUN)
    np.testing.assert_array_equal(predictionArray(prediction0, vol0), newer)  # unedited: replaced
    assert not arrived["vol0"]["newerPredictionWaiting"]
    assert arrived["vol1"]["newerPredictionWaiting"] and logic.newerPredictionRun(vol1) == RUN
    np.testing.assert_array_equal(predictionArray(prediction1, vol1), edited)  # edited: kept
    assert arrived["vol1"]["uncertainty"] is reviewScene["results"]["vol1"]["uncertainty"]

    # Loading it is the annotator's choice.
    loaded = logic.loadNewerPrediction(workspace, "vol1")
    assert loaded["segmentation"] is prediction1 and logic.newerPredictionRun("vol1") is None
    np.testing.assert_array_equal(predictionArray(prediction1, vol1), newer)
    with pytest.raises(ValueError, match="No newer prediction is waiting"):
        logic.loadNewerPrediction(workspace, "vol1")

    # Accepted edits are no longer unsaved: the next prediction replaces them.
    paint(prediction1, vol1, edited)
    logic.acceptRegion(workspace, vol1, logic.regions(workspace, RUN, "vol1")[0])
    writeArray(vol1, predictedClasses(), workspace / "runs" / RUN / "predictions" / "vol1.nii.gz", labelmap=True)
    assert not logic.loadResults(workspace, RUN, ["vol1"])["vol1"]["newerPredictionWaiting"]
    np.testing.assert_array_equal(predictionArray(prediction1, vol1), predictedClasses())


def test_case_table_text_and_train_checks_know_partial_cases():
    """The widget's plain helpers (SemiSupSeg.py loaded with the stand-ins of Testing/cmake/gui_module.py)."""
    import importlib.util

    helperPath = Path(__file__).resolve().parents[1] / "cmake" / "gui_module.py"
    spec = importlib.util.spec_from_file_location("semisupseg_gui_module", helperPath)
    guiModule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guiModule)
    gui = guiModule.load_gui("SemiSupSeg_widget_helpers")
    assert gui.caseStateText(False, 3, True, False) == "3 regions reviewed"
    assert gui.caseStateText(False, 1, True, True) == "1 region reviewed · newer prediction waiting"
    assert gui.caseStateText(True, 2, True, False) == "labelled"
    assert gui.caseStateText(False, 0, True, False) == "predicted" and gui.caseStateText(False, 0, False, False) == "unlabelled"
    Case = gui.CaseSummary
    assert any("Mark at least one case" in p for p in gui.validateTrainingInputs(Path("/w"), [Case("a", False, False)]))
    assert gui.validateTrainingInputs(Path("/w"), [Case("a", False, False, reviewedRegions=2)]) == []
