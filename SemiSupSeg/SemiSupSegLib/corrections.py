"""Accepting a prediction: the one place where SemiSupSeg writes into a user's segmentation.

Every other operation (writing the workspace, loading results, exporting) only reads the user's
nodes. Accepting is explicit, per case, and copies segment by segment so that the user's segment
ids, colours and any extra segments of their own survive.
"""

from __future__ import annotations

import slicer
import vtk

from . import case_nodes, prediction_edits
from .mrml_helpers import temporaryNode
from .segment_labels import labelArrayFromSegmentation


def acceptPrediction(scene, volumeNode, classNames=None):
    """Copy the loaded prediction of ``volumeNode``'s case into the user's segmentation; mark the case labelled.

    Segments are matched by name: the user's segment of a class gets the predicted voxels
    (keeping its id and colour), classes the user has no segment for are added, other user
    segments stay as they are. A user segmentation (``"<volume> segmentation"``) is created
    when the case has none. Returns the user's segmentation node. With the workspace's
    ``classNames`` the prediction's edits count as accepted (newer predictions may replace it again).
    """
    caseId = case_nodes.caseIdOf(volumeNode)
    prediction = case_nodes.resultNode(scene, caseId, case_nodes.PREDICTION) if caseId else None
    if prediction is None:
        raise ValueError(f'No prediction is loaded for "{volumeNode.GetName()}"; load a run\'s results first.')
    userNode = case_nodes.userSegmentationNode(scene, volumeNode)
    if userNode is None:
        userNode = _newUserSegmentation(scene, volumeNode)
    source, target = prediction.GetSegmentation(), userNode.GetSegmentation()
    sourceIds, targetIds = vtk.vtkStringArray(), vtk.vtkStringArray()
    for index in range(source.GetNumberOfSegments()):
        segment = source.GetNthSegment(index)
        targetId = target.GetSegmentIdBySegmentName(segment.GetName()) or target.AddEmptySegment(
            "", segment.GetName(), segment.GetColor()
        )
        sourceIds.InsertNextValue(source.GetNthSegmentID(index))
        targetIds.InsertNextValue(targetId)
    if sourceIds.GetNumberOfValues():
        _copySegments(scene, prediction, sourceIds, userNode, targetIds, volumeNode)
    case_nodes.setUserSegmentationNode(volumeNode, userNode)
    case_nodes.setLabelled(volumeNode, True)
    if classNames:
        _markAccepted(scene, prediction, volumeNode, classNames)
    return userNode


def _markAccepted(scene, prediction, volumeNode, classNames) -> None:
    try:
        prediction_edits.recordAccepted(prediction, labelArrayFromSegmentation(scene, prediction, volumeNode, classNames))
    except ValueError:  # a segment that is no class: the prediction stays "edited" (its newer one waits)
        pass


def _newUserSegmentation(scene, volumeNode):
    userNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volumeNode.GetName()} segmentation")
    userNode.CreateDefaultDisplayNodes()
    userNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    return userNode


def _copySegments(scene, sourceNode, sourceIds, targetNode, targetIds, volumeNode) -> None:
    """Source segments -> one labelmap on the volume grid (value n = n-th id) -> target segments.

    Importing with explicit target ids replaces each target segment's voxels, including with
    nothing when the predicted segment is empty.
    """
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    with temporaryNode(scene, "vtkMRMLLabelMapVolumeNode") as labelmapNode:
        exported = logic.ExportSegmentsToLabelmapNode(
            sourceNode, sourceIds, labelmapNode, volumeNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        if not exported or not logic.ImportLabelmapToSegmentationNode(labelmapNode, targetNode, targetIds):
            raise RuntimeError(f'Copying the prediction of "{volumeNode.GetName()}" into "{targetNode.GetName()}" failed.')
