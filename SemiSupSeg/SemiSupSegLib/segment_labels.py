"""Segment names <-> class indices, and segmentations as class-indexed label arrays.

Class 0 is always ``"background"``; class ``c >= 1`` is the c-th foreground class name. A
segment named "background" (any case) stands for class 0 and is never exported as foreground.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from .mrml_helpers import temporaryNode, volumeDimensions

BACKGROUND = "background"


def segmentNames(segmentationNode) -> list[str]:
    """Names of all segments in segment order."""
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(index).GetName() for index in range(segmentation.GetNumberOfSegments())]


def isBackgroundName(name: str) -> bool:
    return name.strip().lower() == BACKGROUND


def normalizedClassList(classNames) -> list[str]:
    """``["liver", "tumor"]`` or ``["background", "liver", "tumor"]`` -> ``["background", "liver", "tumor"]``."""
    names = [str(name) for name in classNames]
    if names and isBackgroundName(names[0]):
        names = names[1:]
    if len(set(names)) != len(names):
        raise ValueError(f"The class list {names} contains a name twice; class names must be unique.")
    if any(isBackgroundName(name) for name in names):
        raise ValueError('"background" is class 0 and can only be the first class name.')
    return [BACKGROUND] + names


def _foldedName(name: str) -> str:
    return " ".join(name.lower().split())


def unionClassList(segmentationNodes, preferredOrder=()) -> list[str]:
    """The class list of a set of labelled segmentations: every foreground segment name.

    Order: names from ``preferredOrder`` (the workspace's existing class list, so class indices
    stay stable between writes) first, then new names in order of first appearance. Two names
    that differ only in letter case or spacing ("Liver" / "liver ") are almost certainly a typo
    and are refused rather than becoming two classes.
    """
    present: dict[str, object] = {}
    for node in segmentationNodes:
        for name in segmentNames(node):
            if not isBackgroundName(name):
                present.setdefault(name, node)
    folded: dict[str, str] = {}
    for name, node in present.items():
        other = folded.setdefault(_foldedName(name), name)
        if other != name:
            raise ValueError(
                f'Segment "{name}" in "{node.GetName()}" and segment "{other}" in "{present[other].GetName()}" '
                "differ only in letter case or spacing. Rename one of them in the Segment Editor so that the "
                "same structure has the same name in every segmentation."
            )
    ordered = [name for name in preferredOrder if name in present and not isBackgroundName(name)]
    ordered += [name for name in present if name not in ordered]
    return [BACKGROUND] + ordered


def checkSegmentNames(segmentationNode, classNames: list[str]) -> None:
    """Raise ValueError naming the node, the unknown segments and the fix when a segment name is not a class."""
    unknown = [name for name in segmentNames(segmentationNode) if name not in classNames and not isBackgroundName(name)]
    if not unknown:
        return
    foreground = classNames[1:]
    hints = []
    for name in unknown:
        close = [known for known in foreground if _foldedName(known) == _foldedName(name)]
        if close:
            hints.append(f'"{name}" looks like "{close[0]}"')
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise ValueError(
        f'Segmentation "{segmentationNode.GetName()}" has segment(s) {unknown} that are not in the class list '
        f"{foreground}{hint}. Rename the segment(s) in the Segment Editor to one of the class names, "
        "or add the name to the class list."
    )


def labelArrayFromSegmentation(scene, segmentationNode, volumeNode, classNames: list[str]) -> np.ndarray:
    """Class-indexed label map of a segmentation on the volume's own grid, uint8, shape (k, j, i).

    Segments are exported with the volume as reference geometry (Slicer resamples them if they
    were drawn on another grid). Where segments overlap, the one with the higher class index wins.
    """
    checkSegmentNames(segmentationNode, classNames)
    if len(classNames) > 256:
        raise ValueError(f"{len(classNames)} classes do not fit a uint8 label map (at most 256).")
    segmentation = segmentationNode.GetSegmentation()
    foreground = []  # (class index, segment id)
    for index in range(segmentation.GetNumberOfSegments()):
        name = segmentation.GetNthSegment(index).GetName()
        if not isBackgroundName(name):
            foreground.append((classNames.index(name), segmentation.GetNthSegmentID(index)))
    dimensions = volumeDimensions(volumeNode)
    if not foreground:
        return np.zeros(tuple(reversed(dimensions)), dtype=np.uint8)
    foreground.sort()  # export order: later segments overwrite earlier ones
    segmentIds = vtk.vtkStringArray()
    for _, segmentId in foreground:
        segmentIds.InsertNextValue(segmentId)
    with temporaryNode(scene, "vtkMRMLLabelMapVolumeNode") as labelmapNode:
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentationNode, segmentIds, labelmapNode, volumeNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        if not exported or volumeDimensions(labelmapNode) != dimensions:
            raise RuntimeError(
                f'Could not export segmentation "{segmentationNode.GetName()}" on the grid of "{volumeNode.GetName()}".'
            )
        positions = slicer.util.arrayFromVolume(labelmapNode)
        # The export numbers segments 1..n in the order given; map those numbers to class indices.
        lookup = np.zeros(len(foreground) + 1, dtype=np.uint8)
        for position, (classIndex, _) in enumerate(foreground, start=1):
            lookup[position] = classIndex
        return lookup[positions.astype(np.int64)]
