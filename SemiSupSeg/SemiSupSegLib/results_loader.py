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

# Display of the uncertainty overlay (values are entropy / ln C in [0, 1]); see docs/display.md.
# The colour window is fixed, so a colour means the same uncertainty in every case.
UNCERTAINTY_WINDOW = (0.0, 1.0)
# Display threshold, per case: the smallest value among the map's top UNCERTAINTY_TINTED_FRACTION
# of voxels, never below UNCERTAINTY_THRESHOLD_FLOOR. Voxels below it are drawn transparent. On LA,
# a fixed 0.1 tinted 28-50 % of the volume (issue 17): a tint everywhere marks nothing. 2 % keeps
# the tint well inside the 5 % of the volume the top regions may cover; the floor (normalised
# entropy of p = 0.97 vs 0.03, two classes) keeps a confident case's faint noise untinted.
UNCERTAINTY_TINTED_FRACTION = 0.02
UNCERTAINTY_THRESHOLD_FLOOR = 0.2
UNCERTAINTY_OPACITY = 0.4
# Heat colours: Slicer's built-in "CoolTint1" (white -> light blue -> cyan). It is bright over its
# whole range (luminance >= 0.7: it lightens tissue, never darkens it) and cool, so it shares no hue
# with the warm segment colours (red, orange, yellow) a prediction is usually drawn in. Built-in
# tables exist in every Slicer and in the slicer-core wheel; the fallback is only a safety net.
HEAT_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeCoolTint1",)
FALLBACK_HEAT_TABLE_NAME = "SemiSupSeg heat"
# Anchor colours of the fallback ramp, sampled from CoolTint1 at 0, 0.25, 0.5, 0.75 and 1 and
# interpolated linearly (tested to stay within 0.02 of CoolTint1).
_HEAT_ANCHORS = np.array(
    [[1.00, 1.00, 1.00], [0.75, 0.81, 1.00], [0.50, 0.75, 1.00], [0.25, 0.81, 1.00], [0.00, 1.00, 1.00]]
)
# The prediction's outline thickness (pixels) while the heat overlay is on: its fill is hidden then,
# so that a tinted voxel is uncertainty and never the prediction.
PREDICTION_OUTLINE_THICKNESS = 2
# Slicer's anatomy colour tables (loaded from file in the application; "left ventricle", "myocardium", ...).
ANATOMY_COLOR_TABLE_NAMES = ("GenericAnatomyColors",)
# Segment colours for classes without a user segment or an anatomy-table colour of the same name.
SEGMENT_PALETTE = (
    (0.90, 0.35, 0.30), (0.35, 0.70, 0.35), (0.30, 0.50, 0.90), (0.95, 0.80, 0.25),
    (0.70, 0.40, 0.80), (0.25, 0.80, 0.80), (0.95, 0.55, 0.20), (0.60, 0.60, 0.60),
)


def heatColorNodeId(scene) -> str:
    """ID of Slicer's CoolTint1 table (built in), else of SemiSupSeg's own look-alike heat table."""
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


def displayThreshold(values, tintedFraction: float = UNCERTAINTY_TINTED_FRACTION,
                     floor: float = UNCERTAINTY_THRESHOLD_FLOOR) -> float:
    """Lowest uncertainty drawn for one case's map ``values`` (any shape, e.g. (k, j, i)).

    With ``n`` finite voxels and ``m = floor(tintedFraction * n)``: ``t = max(floor, v_m)``, ``v_m``
    the m-th largest value. Slicer draws values >= t, so ties at ``t`` could tint more than ``m``
    voxels: then t moves to the next larger value present. Hence the tinted share
    ``mean(values >= t)`` is at most ``tintedFraction`` (less when the floor decides: a confident
    case may show no tint at all). ``t`` is always a value of the map (or the floor, or just above
    the largest value), so Slicer's comparison in the map's float32 agrees with this one.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    allowed = int(np.floor(tintedFraction * values.size))
    if allowed == 0:
        return max(float(floor), _justAbove(values.max())) if values.size else float(floor)
    threshold = max(float(floor), float(np.partition(values, values.size - allowed)[values.size - allowed]))
    if np.count_nonzero(values >= threshold) > allowed:
        above = values[values > threshold]
        threshold = float(above.min()) if above.size else _justAbove(threshold)
    return threshold


def _justAbove(value: float) -> float:
    """The next float32 above ``value``: nothing of a float32 map reaches it."""
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def configureUncertaintyDisplay(volumeNode) -> None:
    """Heat colours, fixed window 0..1, and only the case's most uncertain voxels tinted
    (threshold from ``displayThreshold`` of the node's values; the rest is transparent)."""
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    displayNode = volumeNode.GetDisplayNode()
    values = slicer.util.arrayFromVolume(volumeNode)
    threshold = displayThreshold(values)
    highest = float(np.nanmax(values)) if values.size else UNCERTAINTY_WINDOW[1]
    wasModifying = displayNode.StartModify()
    displayNode.SetAndObserveColorNodeID(heatColorNodeId(volumeNode.GetScene()))
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(*UNCERTAINTY_WINDOW)
    displayNode.AutoThresholdOff()
    displayNode.SetLowerThreshold(threshold)
    displayNode.SetUpperThreshold(max(UNCERTAINTY_WINDOW[1], threshold, highest))  # nothing above is hidden
    displayNode.ApplyThresholdOn()
    displayNode.EndModify(wasModifying)


def configurePredictionDisplay(segmentationNode, heatShown: bool) -> None:
    """The prediction as an outline only while the heat overlay is on (its fill would tint the same
    pixels as the heat); outline and fill, as Slicer draws segments, when it is off."""
    if segmentationNode.GetDisplayNode() is None:
        segmentationNode.CreateDefaultDisplayNodes()
    displayNode = segmentationNode.GetDisplayNode()
    wasModifying = displayNode.StartModify()
    displayNode.SetVisibility2DOutline(True)
    displayNode.SetVisibility2DFill(not heatShown)
    displayNode.SetSliceIntersectionThickness(PREDICTION_OUTLINE_THICKNESS)
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

    def showCase(self, caseId: str, showUncertainty: bool = True, opacity: float = UNCERTAINTY_OPACITY) -> None:
        """Show a case's volume in all slice views, with its uncertainty overlay when ``showUncertainty``
        (prediction stays visible: outline only while the overlay is on, filled when it is off)."""
        volumeNode = case_nodes.volumeNodeForCase(self.scene, caseId)
        uncertaintyNode = case_nodes.resultNode(self.scene, caseId, case_nodes.UNCERTAINTY)
        if volumeNode is None:
            raise ValueError(f'No volume of case "{caseId}" in the scene.')
        shown = uncertaintyNode if showUncertainty else None
        showInSliceViews(self.scene, volumeNode, shown, opacity)
        predictionNode = case_nodes.resultNode(self.scene, caseId, case_nodes.PREDICTION)
        if predictionNode is not None:
            configurePredictionDisplay(predictionNode, heatShown=shown is not None)

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
        """One colour per foreground class, chosen by its name (dataset.json ``labels``).

        In order: the user's colour when their segmentation of this case has a segment of that
        name; else the colour Slicer's anatomy table gives the name (``GenericAnatomyColors``, e.g.
        "left ventricle", when that table is in the scene); else the palette colour of the class
        index. A table colour already taken by another class gives way to an unused palette colour,
        so that every class of the prediction can be told apart.
        """
        userColours = self._userSegmentColours(volumeNode)
        colours: dict = {}
        for index, name in enumerate(classNames):
            if index == 0:
                continue
            colour = userColours.get(name) or anatomyColour(self.scene, name)
            if colour is None or (name not in userColours and _isTaken(colour, colours.values())):
                colour = _unusedPaletteColour(index, colours.values())
            colours[name] = tuple(colour)
        return colours

    def _userSegmentColours(self, volumeNode) -> dict:
        userNode = case_nodes.userSegmentationNode(self.scene, volumeNode)
        if userNode is None:
            return {}
        segmentation = userNode.GetSegmentation()
        segments = (segmentation.GetNthSegment(index) for index in range(segmentation.GetNumberOfSegments()))
        return {segment.GetName(): tuple(segment.GetColor()) for segment in segments}


def anatomyColour(scene, className: str):
    """RGB of ``className`` in an anatomy colour table of the scene (case, spacing and underscores ignored), else None."""
    wanted = " ".join(className.lower().replace("_", " ").split())
    for colorNode in nodesByClass(scene, "vtkMRMLColorTableNode"):
        if colorNode.GetName() not in ANATOMY_COLOR_TABLE_NAMES:
            continue
        for index in range(colorNode.GetNumberOfColors()):
            if " ".join(str(colorNode.GetColorName(index)).lower().replace("_", " ").split()) == wanted:
                rgba = [0.0, 0.0, 0.0, 0.0]
                colorNode.GetColor(index, rgba)
                return tuple(rgba[:3])
    return None


def _isTaken(colour, used, tolerance: float = 0.02) -> bool:
    return any(max(abs(a - b) for a, b in zip(colour, other)) < tolerance for other in used)


def _unusedPaletteColour(classIndex: int, used):
    """The palette colour of ``classIndex``, or the next one no other class has (cycling past 8 classes)."""
    for offset in range(len(SEGMENT_PALETTE)):
        colour = SEGMENT_PALETTE[(classIndex - 1 + offset) % len(SEGMENT_PALETTE)]
        if not _isTaken(colour, used):
            return colour
    return SEGMENT_PALETTE[(classIndex - 1) % len(SEGMENT_PALETTE)]
