"""``ReviewControl``: the presenter's review and export decisions, without Qt.

A mixin of ``SemiSupSegPresenter`` (``presenter.py``), which holds the state it reads and writes:
loading a run's predictions and uncertainty maps without pulling the annotator away, stepping
through a case's uncertain regions, Accept region / Accept prediction, Predict now, and Export.
Tested through the presenter (``Testing/slicer_logic/test_presenter.py``).
"""

from __future__ import annotations

from typing import Optional

from . import case_nodes
from .panel_state import IDLE, PanelProblem
from .panel_text import _, caseStateText, isAlive, isPathSet


class ReviewControl:
    """Results in the views, uncertain regions, Accept, Export (see the module docstring)."""

    # -- review ---------------------------------------------------------------------------

    def loadResults(self, workspaceDir=None, runId: Optional[str] = None, caseIds=None) -> None:
        """Load predictions and uncertainty maps (replacing earlier result nodes) and put back the case
        that was on screen: predictions arriving while training must not pull the annotator away."""
        parameters = self.parameters
        workspaceDir = workspaceDir or parameters.workspaceDir
        runId = runId or parameters.lastRunId
        if not runId:
            raise PanelProblem(_("No run yet: click Train first."))
        if caseIds is None:  # the Load results button: the run's scores too
            self.caseScores.update(self.logic.caseScores(str(workspaceDir), runId))
        viewed = self._viewedCaseId()
        try:
            self.logic.loadResults(str(workspaceDir), runId, caseIds)
        except (OSError, ValueError) as error:
            self.error = {"message": _("Could not load the results of run {run}: {error}").format(run=runId, error=error),
                          "hint": _("The run folder may be incomplete; see the worker log.")}
            return
        self._forgetRegions(runId)
        self.display.reapply(parameters.showUncertainty, parameters.uncertaintyOpacity, viewed)
        self.refreshCases()

    def showCase(self, volume) -> None:
        """Show ``volume`` with its overlay as the panel says (refitting for another case)."""
        caseId = case_nodes.caseIdOf(volume) if isAlive(volume) else None
        if caseId is None:
            self.display.forget()
            self._showVolumeAlone(volume)
            return
        self.display.show(caseId, self.parameters.showUncertainty, self.parameters.uncertaintyOpacity)

    def followDisplaySettings(self) -> None:
        """Show uncertainty / Opacity changed (or anything else): apply to the case on screen."""
        if self.parameters is not None:
            self.display.follow(self.parameters.showUncertainty, self.parameters.uncertaintyOpacity)

    def regionsOfCurrentCase(self) -> list:
        caseId, runId = self.currentCaseId(), self.parameters.lastRunId
        if not caseId or not runId:
            return []
        key = (runId, caseId)
        if key not in self.regionsCache:
            try:
                self.regionsCache[key] = self.logic.regions(str(self.parameters.workspaceDir), runId, caseId)
            except (OSError, ValueError):
                self.regionsCache[key] = []  # read once, not at every redraw
        return self.regionsCache[key]

    def stepRegion(self, step: int) -> Optional[dict]:
        """Next (+1) / previous (-1) uncertain region of the current case, wrapping around; the first
        step from "none visited" goes to the first (or last) region. Returns the region shown."""
        regions = self.regionsOfCurrentCase()
        if not regions:
            return None
        current = self.parameters.currentRegionIndex
        index = (current + step) % len(regions) if current >= 0 else (0 if step > 0 else len(regions) - 1)
        self.parameters.currentRegionIndex = index
        self.display.jumpToRegion(regions[index], self.parameters.showUncertainty, self.parameters.uncertaintyOpacity)
        return regions[index]

    def currentRegion(self) -> Optional[dict]:
        regions = self.regionsOfCurrentCase()
        index = self.parameters.currentRegionIndex
        return regions[index] if 0 <= index < len(regions) else None

    def _currentVolume(self, why: str):
        volume = self.parameters.currentCase
        if not isAlive(volume):
            raise PanelProblem(why)
        return volume

    def acceptRegion(self) -> dict:
        volume = self._currentVolume(_("Select a case in the table first."))
        result = self.logic.acceptRegion(str(self.parameters.workspaceDir), volume, self.currentRegion())
        self.refreshCases()
        self.status(_("{case}: region accepted ({voxels} voxels), {state}. Training takes it in at its next workspace "
                      "reload.").format(case=volume.GetName(), voxels=result["regionVoxels"],
                                        state=caseStateText(False, result["regionsReviewed"], True, False)))
        return result

    def predictNow(self) -> None:
        if self.job is None:
            raise PanelProblem(_("Select a case while training runs."))
        volume = self._currentVolume(_("Select a case while training runs."))
        self.logic.requestPrediction(self.job.workspaceDir, self.job.runId, [case_nodes.caseIdOf(volume)])
        self.status(_("{case}: the prediction comes at the next iteration.").format(case=volume.GetName()))

    def loadNewerPrediction(self) -> None:
        volume = self._currentVolume(_("Select a case in the table first."))
        self.logic.loadNewerPrediction(str(self.parameters.workspaceDir), volume)
        self.display.reapply(self.parameters.showUncertainty, self.parameters.uncertaintyOpacity, case_nodes.caseIdOf(volume))
        self.refreshCases()

    def acceptPrediction(self):
        volume = self._currentVolume(_("Select a case in the table first."))
        segmentation = self.logic.acceptPrediction(volume)
        self.refreshCases()
        self.status(_("Prediction copied into '{segmentation}'; {case} is now labelled.").format(
            segmentation=segmentation.GetName(), case=volume.GetName()))
        return segmentation

    # -- export ---------------------------------------------------------------------------

    def export(self) -> str:
        """Export every case's segmentation; returns the sentence for the export status label."""
        parameters = self.parameters
        if not isPathSet(parameters.exportDir):
            raise PanelProblem(_("Choose an output folder first."))
        if self.trainingState != IDLE:
            raise PanelProblem(_("Stop training before exporting: predictions are still changing."))
        paths = self.logic.exportSegmentations(str(parameters.exportDir), format=parameters.exportFormat,
                                               overwrite=parameters.exportOverwrite)
        return _("Wrote {count} files to {folder}.").format(count=len(paths), folder=parameters.exportDir)

    # -- helpers --------------------------------------------------------------------------

    def _forgetRegions(self, runId: str) -> None:
        self.regionsCache = {key: value for key, value in self.regionsCache.items() if key[0] != runId}

    def _viewedCaseId(self) -> Optional[str]:
        """The case in the background of the Red view (what the annotator looks at), if it is one."""
        composite = self.scene.GetNodeByID("vtkMRMLSliceCompositeNodeRed")
        volumeId = composite.GetBackgroundVolumeID() if composite is not None else None
        volume = self.scene.GetNodeByID(volumeId) if volumeId else None
        return case_nodes.caseIdOf(volume) if volume is not None else None

    def _showVolumeAlone(self, volume) -> None:
        """A volume without results (not yet in the workspace) in every view, no overlay, views refitted."""
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = self.scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
            composite.SetBackgroundVolumeID(volume.GetID() if isAlive(volume) else None)
            composite.SetForegroundVolumeID(None)
        self.display.fitViews()
