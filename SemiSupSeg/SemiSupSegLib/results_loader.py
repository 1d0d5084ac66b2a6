"""Run results -> scene: each case's prediction as an editable segmentation node and its
uncertainty (normalised entropy) as a heat overlay in the slice views.

Result nodes are tagged (see ``case_nodes``) and reused on reload, so loading a newer run
updates the same nodes instead of piling up copies; the user's own segmentations are never touched.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from . import case_nodes, prediction_edits, workspace_files
from .mrml_helpers import copyGeometry, geometryMatches, nodesByClass, readVolumeFile, temporaryNode

# Display of the uncertainty overlay (values are entropy / ln C in [0, 1]).
UNCERTAINTY_WINDOW = (0.0, 1.0)
UNCERTAINTY_THRESHOLD = 0.1  # voxels below are confident and drawn transparent
UNCERTAINTY_OPACITY = 0.4
# Slicer's file-based heat tables, best first; absent when Slicer's colour files are not installed.
HEAT_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
FALLBACK_HEAT_TABLE_NAME = "SemiSupSeg heat"
# Anchor colours of the fallback heat ramp (black -> purple -> red -> orange -> pale yellow),
# interpolated linearly; chosen by eye to read like Inferno.
_HEAT_ANCHORS = np.array(
    [[0.00, 0.00, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04], [0.99, 1.00, 0.64]]
)
# Segment colours for classes without a user segment of the same name.
SEGMENT_PALETTE = (
    (0.90, 0.35, 0.30), (0.35, 0.70, 0.35), (0.30, 0.50, 0.90), (0.95, 0.80, 0.25),
    (0.70, 0.40, 0.80), (0.25, 0.80, 0.80), (0.95, 0.55, 0.20), (0.60, 0.60, 0.60),
)


def heatColorNodeId(scene) -> str:
    """ID of Inferno or ColdToHotRainbow when Slicer has them, else of SemiSupSeg's own heat table."""
    for nodeId in HEAT_COLOR_NODE_IDS:
        if scene.GetNodeByID(nodeId) is not None:
            return nodeId
    for node in nodesByClass(scene, "vtkMRMLColorTableNode"):
        if node.GetName() == FALLBACK_HEAT_TABLE_NAME:
            return node.GetID()
    return _addFallbackHeatTable(scene).GetID()


def _addFallbackHeatTable(scene, size: int = 256):
    colorNode = scene.AddNewNodeByClass("vtkMRMLColorTableNode", FALLBACK_HEAT_TABLE_NAME)
    colorNode.SetTypeToUser()
    colorNode.SetNumberOfColors(size)
    colorNode.SetAttribute("Category", "SemiSupSeg")
    anchors = np.linspace(0.0, 1.0, len(_HEAT_ANCHORS))
    for index, value in enumerate(np.linspace(0.0, 1.0, size)):
        red, green, blue = (np.interp(value, anchors, _HEAT_ANCHORS[:, channel]) for channel in range(3))
        colorNode.SetColor(index, f"{value:.3f}", red, green, blue, 1.0)
    return colorNode


def configureUncertaintyDisplay(volumeNode) -> None:
    """Heat colours, fixed window 0..1, confident voxels transparent."""
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    displayNode = volumeNode.GetDisplayNode()
    wasModifying = displayNode.StartModify()
    displayNode.SetAndObserveColorNodeID(heatColorNodeId(volumeNode.GetScene()))
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(*UNCERTAINTY_WINDOW)
    displayNode.AutoThresholdOff()
    displayNode.SetLowerThreshold(UNCERTAINTY_THRESHOLD)
    displayNode.SetUpperThreshold(UNCERTAINTY_WINDOW[1])
    displayNode.ApplyThresholdOn()
    displayNode.EndModify(wasModifying)


def showInSliceViews(scene, backgroundNode, foregroundNode, opacity: float = UNCERTAINTY_OPACITY) -> None:
    """Volume as background, uncertainty as semi-transparent foreground, in every slice view."""
    for compositeNode in nodesByClass(scene, "vtkMRMLSliceCompositeNode"):
        compositeNode.SetBackgroundVolumeID(backgroundNode.GetID() if backgroundNode else None)
        compositeNode.SetForegroundVolumeID(foregroundNode.GetID() if foregroundNode else None)
        compositeNode.SetForegroundOpacity(opacity)


class ResultsLoader:
    """Loads the predictions and uncertainty maps of a run into the scene."""

    def __init__(self, scene):
        self.scene = scene

    def load(self, workspaceDir, runId: str, caseIds=None, force: bool = False) -> dict:
        """``{caseId: {"segmentation": node, "uncertainty": node, "newerPredictionWaiting": bool}}`` for
        ``caseIds`` (default: every case the run has predicted so far). The first loaded case is shown
        in the slice views. A case whose loaded prediction the annotator edited and has not accepted
        keeps its nodes unless ``force`` (see prediction_edits)."""
        dataset = workspace_files.readDataset(workspaceDir)
        classNames = workspace_files.classNamesOf(dataset)
        known = workspace_files.caseIdsOf(dataset)
        if caseIds is None:  # both files present: a case being written right now is left for the next load
            caseIds = [
                caseId for caseId in known
                if workspace_files.predictionPath(workspaceDir, runId, caseId).exists()
                and workspace_files.uncertaintyPath(workspaceDir, runId, caseId).exists()
            ]
        else:
            missing = [caseId for caseId in caseIds if caseId not in known]
            if missing:
                raise ValueError(f"Cases {missing} are not in the workspace {workspaceDir}.")
        results = {caseId: self.loadCase(workspaceDir, runId, caseId, classNames, dataset, force) for caseId in caseIds}
        if results:
            self.showCase(next(iter(results)))
        return results

    def loadCase(self, workspaceDir, runId: str, caseId: str, classNames: list[str], dataset: dict, force: bool = False) -> dict:
        predictionPath = workspace_files.predictionPath(workspaceDir, runId, caseId)
        uncertaintyPath = workspace_files.uncertaintyPath(workspaceDir, runId, caseId)
        for path in (predictionPath, uncertaintyPath):
            if not path.exists():
                raise ValueError(f'Run "{runId}" has no result for case "{caseId}" yet ({path} is missing).')
        volumeNode = case_nodes.volumeNodeForCase(self.scene, caseId)
        if volumeNode is None:
            volumeNode = self._loadWorkspaceImage(workspaceDir, dataset, caseId)
        edited = case_nodes.resultNode(self.scene, caseId, case_nodes.PREDICTION)
        if edited is not None and not force and prediction_edits.holdsBackNewerPrediction(
                self.scene, edited, volumeNode, classNames, predictionPath, runId):
            # Unaccepted edits win: the prediction and its uncertainty map stay as a pair; the newer one waits.
            uncertaintyNode = case_nodes.resultNode(self.scene, caseId, case_nodes.UNCERTAINTY)
            waiting = prediction_edits.newerPredictionRun(edited) is not None
            return {"segmentation": edited, "uncertainty": uncertaintyNode, "newerPredictionWaiting": waiting}
        segmentationNode = self._loadPrediction(predictionPath, volumeNode, caseId, runId, classNames)
        uncertaintyNode = self._loadUncertainty(uncertaintyPath, volumeNode, caseId, runId)
        return {"segmentation": segmentationNode, "uncertainty": uncertaintyNode, "newerPredictionWaiting": False}

    def showCase(self, caseId: str) -> None:
        """Show a case's volume with its uncertainty overlay in all slice views (prediction stays visible)."""
        volumeNode = case_nodes.volumeNodeForCase(self.scene, caseId)
        uncertaintyNode = case_nodes.resultNode(self.scene, caseId, case_nodes.UNCERTAINTY)
        if volumeNode is None:
            raise ValueError(f'No volume of case "{caseId}" in the scene.')
        showInSliceViews(self.scene, volumeNode, uncertaintyNode)

    # -- loading ------------------------------------------------------------------------

    def _loadWorkspaceImage(self, workspaceDir, dataset: dict, caseId: str):
        """A case whose volume is not in the scene (workspace made outside Slicer): load its image."""
        volumeNode = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", caseId)
        readVolumeFile(workspace_files.imagePath(workspaceDir, dataset, caseId), volumeNode)
        volumeNode.CreateDefaultDisplayNodes()
        volumeNode.SetAttribute(case_nodes.CASE_ID_ATTRIBUTE, caseId)
        return volumeNode

    def _resultNode(self, className: str, caseId: str, kind: str, runId: str, name: str):
        node = case_nodes.resultNode(self.scene, caseId, kind)
        if node is None:
            node = self.scene.AddNewNodeByClass(className, name)
            node.CreateDefaultDisplayNodes()
        node.SetName(name)
        case_nodes.markResultNode(node, caseId, kind, runId)
        return node

    @staticmethod
    def _adoptVolumeGrid(readNode, volumeNode, path, caseId: str) -> None:
        """Check a result file is on the volume's grid, then give it the volume's exact geometry
        (NIfTI keeps the affine in float32, so the read-back matrix differs in the 7th digit)."""
        if not geometryMatches(readNode, volumeNode):
            raise ValueError(
                f'The result {path} of case "{caseId}" is not on the grid of volume "{volumeNode.GetName()}". '
                "The volume changed since the workspace was written: write the workspace and train again."
            )
        copyGeometry(volumeNode, readNode)

    def _loadUncertainty(self, path, volumeNode, caseId: str, runId: str):
        node = self._resultNode(
            "vtkMRMLScalarVolumeNode", caseId, case_nodes.UNCERTAINTY, runId, f"{volumeNode.GetName()} uncertainty"
        )
        readVolumeFile(path, node)
        self._adoptVolumeGrid(node, volumeNode, path, caseId)
        configureUncertaintyDisplay(node)
        return node

    def _loadPrediction(self, path, volumeNode, caseId: str, runId: str, classNames: list[str]):
        node = self._resultNode(
            "vtkMRMLSegmentationNode", caseId, case_nodes.PREDICTION, runId, f"{volumeNode.GetName()} prediction"
        )
        node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = node.GetSegmentation()
        segmentation.RemoveAllSegments()
        colours = self._segmentColours(volumeNode, classNames)
        segmentIds = vtk.vtkStringArray()
        for className in classNames[1:]:
            segmentIds.InsertNextValue(segmentation.AddEmptySegment("", className, colours[className]))
        with temporaryNode(self.scene, "vtkMRMLLabelMapVolumeNode") as labelmapNode:
            readVolumeFile(path, labelmapNode)
            self._adoptVolumeGrid(labelmapNode, volumeNode, path, caseId)
            labels = slicer.util.arrayFromVolume(labelmapNode)
            largest = int(labels.max(initial=0))
            if largest >= len(classNames):
                raise ValueError(
                    f"The prediction {path} contains label {largest}, but dataset.json lists only "
                    f"{len(classNames)} classes {classNames}; the run belongs to another class list."
                )
            if len(classNames) > 1 and largest > 0:
                # Label value c becomes the c-th pre-made segment (so names, colours and order follow the class list).
                if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmapNode, node, segmentIds):
                    raise RuntimeError(f"Could not import the prediction {path} into a segmentation.")
            prediction_edits.recordLoaded(node, labels, path)
        return node

    def _segmentColours(self, volumeNode, classNames: list[str]) -> dict:
        """The user's colour for a class when their segmentation has it, else a palette colour."""
        colours = {name: SEGMENT_PALETTE[(index - 1) % len(SEGMENT_PALETTE)] for index, name in enumerate(classNames) if index}
        userNode = case_nodes.userSegmentationNode(self.scene, volumeNode)
        if userNode is not None:
            segmentation = userNode.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                segment = segmentation.GetNthSegment(index)
                if segment.GetName() in colours:
                    colours[segment.GetName()] = tuple(segment.GetColor())
        return colours
