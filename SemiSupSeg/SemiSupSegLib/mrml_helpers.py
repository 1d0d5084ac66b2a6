"""Small MRML utilities: volume geometry as numpy, temporary helper nodes, file read/write with
standalone storage nodes.

Reading and writing go through a storage node that is *not* attached to the node, so the
user's nodes keep their own storage settings (file name, compression): writing a workspace or an
export never changes what "Save" would do in Slicer.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import slicer
import vtk

from .files import atomicWrite

TEMPORARY_NODE_NAME = "SemiSupSeg temporary"

# Largest difference (mm, or unitless for direction cosines) accepted between a volume's
# IJK-to-RAS matrix and one read back from NIfTI, which stores its affine in float32.
GEOMETRY_TOLERANCE = 1e-3


def ijkToRasArray(volumeNode) -> np.ndarray:
    """The volume's 4x4 IJK-to-RAS matrix (spacing, directions and origin in one)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volumeDimensions(volumeNode) -> tuple[int, int, int]:
    """Voxel counts along (i, j, k); (0, 0, 0) for a volume without image data."""
    imageData = volumeNode.GetImageData()
    return tuple(imageData.GetDimensions()) if imageData is not None else (0, 0, 0)


def geometryMatches(volumeA, volumeB, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    """True when both volumes have the same grid: dimensions and IJK-to-RAS (within tolerance)."""
    if volumeDimensions(volumeA) != volumeDimensions(volumeB):
        return False
    return bool(np.allclose(ijkToRasArray(volumeA), ijkToRasArray(volumeB), rtol=0.0, atol=tolerance))


def copyGeometry(source, target) -> None:
    """Give ``target`` the grid of ``source``: spacing, origin and axis directions."""
    directions = vtk.vtkMatrix4x4()
    source.GetIJKToRASDirectionMatrix(directions)
    target.SetIJKToRASDirectionMatrix(directions)
    target.SetSpacing(source.GetSpacing())
    target.SetOrigin(source.GetOrigin())


def nodesByClass(scene, className: str) -> list:
    """All nodes of ``className`` (subclasses included) in scene order."""
    return [scene.GetNthNodeByClass(index, className) for index in range(scene.GetNumberOfNodesByClass(className))]


def _nodeIds(scene) -> set[str]:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def removeNodeWithDependents(scene, node, keepIds: set[str] = frozenset()) -> None:
    """Remove ``node``, its display and storage nodes, and colour nodes made for it (not in ``keepIds``)."""
    dependents = []
    for index in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
        displayNode = node.GetNthDisplayNode(index)
        if displayNode is None:
            continue
        dependents.append(displayNode)
        colorNode = displayNode.GetColorNode() if hasattr(displayNode, "GetColorNode") else None
        if colorNode is not None and colorNode.GetID() not in keepIds:
            dependents.append(colorNode)
    for index in range(node.GetNumberOfStorageNodes() if hasattr(node, "GetNumberOfStorageNodes") else 0):
        if node.GetNthStorageNode(index) is not None:
            dependents.append(node.GetNthStorageNode(index))
    scene.RemoveNode(node)
    for dependent in dependents:
        if dependent.GetScene() is scene:
            scene.RemoveNode(dependent)


@contextmanager
def temporaryNode(scene, className: str) -> Iterator:
    """A hidden node that exists for the duration of the ``with`` block (segmentation export and
    import need their labelmap nodes to be in the scene)."""
    existing = _nodeIds(scene)
    node = scene.AddNewNodeByClass(className, TEMPORARY_NODE_NAME)
    node.SetHideFromEditors(True)
    node.SetSaveWithScene(False)
    try:
        yield node
    finally:
        removeNodeWithDependents(scene, node, existing)


def _checked(ok: int, what: str) -> None:
    if not ok:
        raise OSError(f"{what} failed (see the application log for the reason).")


def writeVolumeFile(volumeNode, path: str | Path) -> Path:
    """Write a scalar or labelmap volume (.nii.gz, .nrrd, .mha ...) atomically; the format follows the extension.

    The volume's own IJK-to-RAS is written (parent transforms are not applied); ITK converts RAS to
    the file's LPS convention.
    """

    def write(temporary: Path) -> None:
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storageNode.SetFileName(str(temporary))
        storageNode.SetUseCompression(1)
        _checked(storageNode.WriteData(volumeNode), f"Writing {path}")

    return atomicWrite(path, write)


def readVolumeFile(path: str | Path, volumeNode) -> None:
    """Read an image file into an existing scalar or labelmap volume node (replacing its voxels and geometry)."""
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    _checked(storageNode.ReadData(volumeNode), f"Reading {path}")


def writeSegmentationFile(segmentationNode, path: str | Path) -> Path:
    """Write a segmentation node as .seg.nrrd atomically, not cropped (keeps the segmentation's full grid)."""

    def write(temporary: Path) -> None:
        storageNode = slicer.vtkMRMLSegmentationStorageNode()
        storageNode.SetFileName(str(temporary))
        storageNode.SetCropToMinimumExtent(False)
        storageNode.SetUseCompression(1)
        _checked(storageNode.WriteData(segmentationNode), f"Writing {path}")

    return atomicWrite(path, write)
