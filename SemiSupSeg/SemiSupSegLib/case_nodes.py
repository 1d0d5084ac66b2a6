"""Where SemiSupSeg keeps its per-case state in the scene, and how it finds it again.

Everything is stored on MRML nodes (attributes and node references), so it is saved with the
scene and survives reloading it:

- volume node attribute ``SemiSupSeg.CaseId``: the case id used in the workspace;
- volume node attribute ``SemiSupSeg.Labelled``: ``"1"`` when the annotator marked the case labelled;
- volume node reference ``SemiSupSeg.userSegmentation``: the user's own segmentation of the case;
- result nodes (prediction segmentation, uncertainty volume) carry ``SemiSupSeg.ResultCase``,
  ``SemiSupSeg.ResultKind`` (``"prediction"`` / ``"uncertainty"``) and ``SemiSupSeg.ResultRun``.
  Only nodes carrying these attributes are ever replaced by a reload of results.
"""

from __future__ import annotations

import re

import slicer

from .mrml_helpers import nodesByClass

CASE_ID_ATTRIBUTE = "SemiSupSeg.CaseId"
LABELLED_ATTRIBUTE = "SemiSupSeg.Labelled"
USER_SEGMENTATION_ROLE = "SemiSupSeg.userSegmentation"
RESULT_CASE_ATTRIBUTE = "SemiSupSeg.ResultCase"
RESULT_KIND_ATTRIBUTE = "SemiSupSeg.ResultKind"
RESULT_RUN_ATTRIBUTE = "SemiSupSeg.ResultRun"
PREDICTION = "prediction"
UNCERTAINTY = "uncertainty"
DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def sanitizeCaseId(name: str) -> str:
    """A file-name-safe id from a node name: letters, digits, ``_``, ``-`` and ``.`` only.

    ``"MR Head (1)" -> "MR_Head_1"``; never empty, never starting with a dot.
    """
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or "").strip("_.-")
    return text or "case"


def caseIdOf(volumeNode) -> str | None:
    """The case id stored on a volume node, or None if it never was written to a workspace."""
    return volumeNode.GetAttribute(CASE_ID_ATTRIBUTE) or None


def volumeNodeForCase(scene, caseId: str):
    """The scalar volume node of a case (None if the scene has none)."""
    for node in nodesByClass(scene, "vtkMRMLScalarVolumeNode"):
        if caseIdOf(node) == caseId and not isResultNode(node):
            return node
    return None


def registeredVolumeNodes(scene) -> list:
    """Every volume node that has a case id, in scene order."""
    return [node for node in nodesByClass(scene, "vtkMRMLScalarVolumeNode") if caseIdOf(node) and not isResultNode(node)]


def isLabelled(volumeNode) -> bool:
    return volumeNode.GetAttribute(LABELLED_ATTRIBUTE) == "1"


def setLabelled(volumeNode, labelled: bool) -> None:
    volumeNode.SetAttribute(LABELLED_ATTRIBUTE, "1" if labelled else "0")


def isResultNode(node) -> bool:
    """True for the prediction / uncertainty nodes SemiSupSeg created (never a user's node)."""
    return bool(node.GetAttribute(RESULT_KIND_ATTRIBUTE))


def resultNode(scene, caseId: str, kind: str):
    """The prediction segmentation or uncertainty volume of a case, or None if not loaded."""
    className = "vtkMRMLSegmentationNode" if kind == PREDICTION else "vtkMRMLScalarVolumeNode"
    for node in nodesByClass(scene, className):
        if node.GetAttribute(RESULT_KIND_ATTRIBUTE) == kind and node.GetAttribute(RESULT_CASE_ATTRIBUTE) == caseId:
            return node
    return None


def markResultNode(node, caseId: str, kind: str, runId: str) -> None:
    node.SetAttribute(RESULT_CASE_ATTRIBUTE, caseId)
    node.SetAttribute(RESULT_KIND_ATTRIBUTE, kind)
    node.SetAttribute(RESULT_RUN_ATTRIBUTE, runId)


def userSegmentationNode(scene, volumeNode):
    """The user's own segmentation of a volume.

    The explicit reference stored by writeWorkspace / acceptPrediction wins; otherwise the first
    segmentation whose reference geometry is this volume and that is not a SemiSupSeg result.
    """
    referenced = volumeNode.GetNodeReference(USER_SEGMENTATION_ROLE)
    if referenced is not None and not isResultNode(referenced):
        return referenced
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    for node in nodesByClass(scene, "vtkMRMLSegmentationNode"):
        if not isResultNode(node) and node.GetNodeReferenceID(role) == volumeNode.GetID():
            return node
    return None


def setUserSegmentationNode(volumeNode, segmentationNode) -> None:
    volumeNode.SetNodeReferenceID(USER_SEGMENTATION_ROLE, segmentationNode.GetID() if segmentationNode else None)


def volumeSource(volumeNode) -> str:
    """``"dicom"`` (loaded by the DICOM module), ``"file"`` (loaded from a file) or ``"scene"`` (made in Slicer)."""
    if volumeNode.GetAttribute(DICOM_UIDS_ATTRIBUTE):
        return "dicom"
    storageNode = volumeNode.GetStorageNode()
    if storageNode is not None and storageNode.GetFileName():
        return "file"
    return "scene"
