"""Scene builders and comparisons shared by the Slicer-logic tests (imported after slicer-core is known to exist)."""

from __future__ import annotations

import types
from contextlib import contextmanager

import numpy as np
import slicer
import vtk

SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


def _addSliceViews(scene) -> None:
    for name, orientation in SLICE_VIEWS.items():
        sliceNode = slicer.vtkMRMLSliceNode()
        sliceNode.SetName(name)
        sliceNode.SetLayoutName(name)
        sliceNode.SetSingletonTag(name)
        sliceNode.SetOrientation(orientation)
        scene.AddNode(sliceNode)
        compositeNode = slicer.vtkMRMLSliceCompositeNode()
        compositeNode.SetLayoutName(name)
        compositeNode.SetSingletonTag(name)
        scene.AddNode(compositeNode)


@contextmanager
def headlessScene():
    """A fresh headless scene with the module logics registered (see conftest.py); restores ``slicer`` globals on exit."""
    if not hasattr(slicer, "vtkMRMLScene"):
        raise RuntimeError(f"'slicer' at {slicer.__file__} is not slicer-core (is PyPI's 'slicer'/shap installed?)")
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    scene = slicer.vtkMRMLScene()
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    appLogic.GetColorLogic().SetMRMLScene(scene)
    appLogic.GetColorLogic().AddDefaultColorNodes()

    def register(logic, name):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(appLogic)
        appLogic.SetModuleLogic(name, logic)
        return logic

    logics = types.SimpleNamespace(
        colors=register(slicer.vtkMRMLColorLogic(), "Colors"),
        volumes=register(slicer.vtkSlicerVolumesLogic(), "Volumes"),
        segmentations=register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations"),
        subjectHierarchy=register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy"),
    )
    _addSliceViews(scene)
    previous = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: logics.segmentations),
        volumes=types.SimpleNamespace(logic=lambda: logics.volumes),
    )
    try:
        yield types.SimpleNamespace(scene=scene, appLogic=appLogic, logics=logics)
    finally:
        scene.Clear(1)
        for name, value in previous.items():
            setattr(slicer, name, value)


def directionMatrix(angleDegrees: float) -> np.ndarray:
    """A proper rotation about an oblique axis (not a permutation), so axis mix-ups show."""
    angle = np.deg2rad(angleDegrees)
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def makeVolume(scene, name: str, array_kji: np.ndarray, spacing, origin, directions: np.ndarray):
    """A scalar volume from a (k, j, i) array with the given RAS geometry."""
    volumeNode = slicer.util.addVolumeFromArray(array_kji, name=name)
    matrix = vtk.vtkMatrix4x4()
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = directions @ np.diag(spacing)
    ijkToRas[:3, 3] = origin
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, ijkToRas[row, column])
    volumeNode.SetIJKToRASMatrix(matrix)
    return volumeNode


def makeSegmentation(scene, volumeNode, name: str, masks: dict):
    """A segmentation on ``volumeNode``'s grid with one segment per ``{segment name: (k, j, i) mask}``."""
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    for segmentName, mask in masks.items():
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", segmentName)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), segmentationNode, segmentId, volumeNode)
    return segmentationNode


def segmentArrays(segmentationNode, volumeNode) -> dict:
    """``{segment name: (k, j, i) uint8 mask}`` on the volume grid, plus colours, for before/after comparisons."""
    segmentation = segmentationNode.GetSegmentation()
    result = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
        result[segment.GetName()] = (np.array(mask, copy=True), tuple(round(c, 4) for c in segment.GetColor()))
    return result


def assertSameSegments(before: dict, after: dict) -> None:
    assert list(before) == list(after)
    for name in before:
        np.testing.assert_array_equal(before[name][0], after[name][0], err_msg=f"segment {name} changed")
        assert before[name][1] == after[name][1], f"colour of segment {name} changed"


def blob(shape_kji, centre_kji, radii_kji) -> np.ndarray:
    """An axis-aligned ellipsoid mask."""
    grids = np.meshgrid(*[np.arange(n) for n in shape_kji], indexing="ij")
    distance = sum(((grid - centre) / radius) ** 2 for grid, centre, radius in zip(grids, centre_kji, radii_kji))
    return (distance <= 1.0).astype(np.uint8)


# -- a tiny trainable scene: two 32 x 32 x 16 oblique volumes, the first labelled -------------

TINY_SHAPE_KJI = (16, 32, 32)  # (k, j, i): the engine's (x, y, z) patch [32, 32, 16] covers it
FAST_TRAINING = {
    "method": "supervised",
    "iterations": 4,
    "device": "cpu",
    "network_options": {"widths": [4, 8, 16, 32, 64]},
    "patch_size": [32, 32, 16],
    "batch_labelled": 1,
}


def tinyTrainingCases(scene):
    """Deterministic (same voxels every call): ``[(volume, segmentation or None, labelled), ...]``.

    ``vol0`` has the user's segmentation "vol0 seg" (one segment, "organ") and is labelled;
    ``vol1`` has none and is unlabelled.
    """
    rng = np.random.default_rng(0)
    cases = []
    for index in range(2):
        mask = blob(TINY_SHAPE_KJI, (8, 16 + index, 15), (5, 9, 8))
        image = ((rng.normal(0.0, 0.3, TINY_SHAPE_KJI) + 2.0 * mask) * 100).astype(np.float32)
        volume = makeVolume(
            scene, f"vol{index}", image, (1.0, 1.2, 2.0), (5.0 + 40 * index, -3.0, 10.0), directionMatrix(20.0 + 15 * index)
        )
        segmentation = makeSegmentation(scene, volume, "vol0 seg", {"organ": mask}) if index == 0 else None
        cases.append((volume, segmentation, index == 0))
    return cases


def runToEnd(job, timeout: float = 300.0) -> list:
    """Poll a TrainingJob like the GUI timer does until it ends; returns all its events."""
    import time

    events = []
    deadline = time.monotonic() + timeout
    while job.state in ("starting", "running"):
        events += job.pollEvents()
        if time.monotonic() > deadline:
            job.stop(timeout=5)
            raise AssertionError(f"worker still running after {timeout} s; events so far: {events}")
        time.sleep(0.2)
    return events + job.pollEvents()


def writeArray(volumeNode, array, path, labelmap: bool) -> None:
    """Write a (k, j, i) array to ``path`` on ``volumeNode``'s grid, as the engine writes its results."""
    from SemiSupSegLib.mrml_helpers import copyGeometry, writeVolumeFile

    className = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = slicer.mrmlScene.AddNewNodeByClass(className, "test writer")
    copyGeometry(volumeNode, node)
    slicer.util.updateVolumeFromArray(node, array)
    writeVolumeFile(node, path)
    slicer.mrmlScene.RemoveNode(node)


def sliceCentres(scene) -> dict:
    """``{view name: (r, a, s)}`` centre of every slice node."""
    centres = {}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        sliceNode = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
        sliceToRas = sliceNode.GetSliceToRAS()
        centres[sliceNode.GetName()] = np.array([sliceToRas.GetElement(row, 3) for row in range(3)])
    return centres


def ijkToRasArray(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


# -- two oblique cases with two classes (workspace and export tests) ------------------------

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def twoCaseScene(scene):
    """Two oblique volumes with non-unit spacing and off-centre origins, each with liver + tumour segments."""
    rng = np.random.default_rng(7)
    cases = []
    specs = [
        ("Patient A (T1)", (6, 9, 11), (0.8, 1.1, 2.5), (12.5, -40.0, 7.0), 30.0, np.int16),
        ("Patient B", (5, 8, 10), (1.3, 0.9, 1.7), (-3.0, 5.0, 100.0), -50.0, np.float32),
    ]
    for name, shape, spacing, origin, angle, dtype in specs:
        image = rng.integers(0, 1000, size=shape).astype(dtype)
        volume = makeVolume(scene, name, image, spacing, origin, directionMatrix(angle))
        liver = blob(shape, np.array(shape) / 2, np.array(shape) / 3)
        tumor = np.zeros(shape, np.uint8)
        tumor[2:4, 3:5, 4:6] = 1  # inside the liver: the higher class must win
        segmentation = makeSegmentation(scene, volume, f"{name} seg", {"liver": liver, "tumor": tumor})
        expected = liver.copy()
        expected[tumor > 0] = 2
        cases.append((volume, segmentation, image, expected))
    return cases


def assertGeometryEqualsNode(image, volumeNode):
    """SimpleITK geometry (LPS) of a written file against the node's IJK-to-RAS, converted explicitly."""
    matrix = ijkToRasArray(volumeNode)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), LPS_FROM_RAS @ matrix[:3, 3], atol=1e-4)
    directionLPS = LPS_FROM_RAS @ (matrix[:3, :3] / spacing)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), directionLPS, atol=1e-5)
    # An arbitrary voxel lands on the same physical point in both conventions.
    index = (3, 2, 1)  # (i, j, k)
    pointLPS = np.array(image.TransformIndexToPhysicalPoint(index))
    pointRAS = matrix @ np.array([*index, 1.0])
    np.testing.assert_allclose(pointLPS, LPS_FROM_RAS @ pointRAS[:3], atol=1e-3)
