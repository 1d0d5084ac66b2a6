"""``SemiSupSegPresenter``: every decision of the module panel, without Qt.

The widget (``SemiSupSeg.py``) turns Qt signals into calls of this class and copies its view state
(``tableRows``, ``buttons``, ``trainButton``, ``progress``, ``error``, the texts) into widget
properties. Everything else lives here and is tested headless with real MRML and a real worker
(``Testing/slicer_logic/test_presenter.py``): the training state machine, what the case table
shows, which buttons are enabled, region stepping, what happens when worker events arrive, the
input checks and the messages. This file holds the state, the case table and the view state; the
engine check and the training state machine are ``TrainingControl`` (``training_control.py``),
results, regions, Accept and Export are ``ReviewControl`` (``review_control.py``).

``parameters`` is the module's parameter node wrapper in Slicer (``SemiSupSegParameterNode``) or,
headless, a ``PanelParameters``: the presenter only reads and writes these attributes.

User-facing refusals raise ``PanelProblem`` (the widget shows a warning with its title); other
exceptions are failures (the widget shows an error with the traceback). Status-bar notes go to
``statusMessages`` (the widget drains them).
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import case_nodes
from .panel import CaseDisplay, medianSpacing
from .panel_state import IDLE, STOPPING, TRAINING, PanelProblem, ProgressView  # the widget and tests import them from here
from .panel_text import (
    CaseSummary,
    _,
    caseStateText,
    VOLUME_FILE_EXTENSIONS,
    classNamesFromSegments,
    isAlive,
    isPathSet,
    listVolumeFiles,
    regionText,
    segmentNamesOf,
    thinSlabHint,
)
from .review_control import ReviewControl
from .training_control import TrainingControl
from .workspace_files import classNamesOf, readDataset

# Shown until the engine's own list (`semisupseg methods --json`, SemiSupSegLogic.availableMethods) arrives.
DEFAULT_METHODS = ("dycon", "mean_teacher", "uamt", "dual_uncertainty", "bidirectional_region", "supervised")


@dataclass
class PanelParameters:
    """The parameter node's fields (SemiSupSeg.py, SemiSupSegParameterNode) for headless use."""

    workspaceDir: pathlib.Path = pathlib.Path("")
    caseVolumes: list = field(default_factory=list)
    method: str = "dycon"
    iterations: int = 0
    device: str = "auto"
    seed: int = 1337
    batchLabelled: int = 0
    batchUnlabelled: int = -1
    patchX: int = 0
    patchY: int = 0
    patchZ: int = 0
    predictEvery: int = 1000
    timeBudgetMin: int = 0
    largestStructureOnly: bool = False
    averageFlips: bool = False
    sliceBySlice: bool = False
    trainFromScratch: bool = False
    keepTraining: bool = True
    showUncertainty: bool = True
    uncertaintyOpacity: float = 0.4
    currentCase: object = None
    currentRegionIndex: int = -1
    lastRunId: str = ""
    exportFormat: str = "seg.nrrd"
    exportDir: pathlib.Path = pathlib.Path("")
    exportOverwrite: bool = False


@dataclass
class CaseRow:
    """One row of the case table."""

    volume: object
    name: str
    segmentation: object
    labelled: bool
    scoreText: str
    stateText: str


class SemiSupSegPresenter(TrainingControl, ReviewControl):
    """The panel's state and decisions over a ``SemiSupSegLogic`` and a parameter object."""

    def __init__(self, logic, parameters=None, fitViews: Callable[[], None] = lambda: None):
        self.logic = logic
        self.parameters = parameters
        self.display = CaseDisplay(logic, fitViews)
        self.job = None  # TrainingJob while a worker runs
        self.previousRunId = ""  # the run shown before the running job started
        self.finishedEvent: Optional[dict] = None  # the running job's ``finished`` event (stopped_by, budget)
        self.budgetSeconds = 0.0  # the running job's time budget (0: none), for the progress bar
        self.trainingState = IDLE
        self.caseScores: dict = {}  # case id -> uncertainty score of the last run
        self.regionsCache: dict = {}  # (run id, case id) -> regions
        self.reviewedRegionCounts: dict = {}  # case id -> regions accepted (partial labels)
        self.progress = ProgressView()
        self.error: Optional[dict] = None  # {"message", "hint"} shown in the error panel
        self.statusMessages: list = []  # (text, milliseconds) for the status bar
        self.engineStatus: Optional[dict] = None  # logic.engineStatus(), once checked
        self.checkingEngine = False
        self.methods: list = [(name, "") for name in DEFAULT_METHODS]  # [(name, description)], the engine's once known

    @property
    def scene(self):
        return self.logic.scene

    def setParameters(self, parameters) -> None:
        """A new parameter node (None: the scene closes): forget what belonged to the old one."""
        if parameters is not self.parameters:
            self.caseScores.clear()
            self.regionsCache.clear()
            self.display.forget()
        self.parameters = parameters
        self.refreshCases()

    def fillDefaultFolders(self, defaultFolder) -> None:
        """A new parameter node: the workspace in ``<defaultFolder>/SemiSupSeg``, exports in its ``export``."""
        if not isPathSet(self.parameters.workspaceDir):
            self.parameters.workspaceDir = pathlib.Path(defaultFolder) / "SemiSupSeg"
        if not isPathSet(self.parameters.exportDir):
            self.parameters.exportDir = pathlib.Path(self.parameters.workspaceDir) / "export"

    def status(self, text: str, milliseconds: int = 5000) -> None:
        self.statusMessages.append((text, milliseconds))

    # -- cases ----------------------------------------------------------------------------

    def cases(self) -> list:
        """Case volumes still in the scene, in table order."""
        if self.parameters is None:
            return []
        return [volume for volume in self.parameters.caseVolumes if isAlive(volume)]

    def segmentationOf(self, volume):
        return case_nodes.userSegmentationNode(self.scene, volume)

    def caseSummaries(self) -> list:
        summaries = []
        for volume in self.cases():
            segmentation = self.segmentationOf(volume)
            summaries.append(CaseSummary(
                name=volume.GetName(), labelled=case_nodes.isLabelled(volume), hasSegmentation=segmentation is not None,
                segmentNames=segmentNamesOf(segmentation), hasImage=volume.GetImageData() is not None,
                reviewedRegions=self.reviewedRegionCounts.get(case_nodes.caseIdOf(volume), 0),
                spacing=tuple(volume.GetSpacing())))
        return summaries

    def addCases(self, volumes) -> int:
        """Append volumes that are not cases yet (result nodes never); returns how many were added."""
        existing = {volume.GetID() for volume in self.cases()}
        new = [v for v in volumes if isAlive(v) and v.GetID() not in existing and not case_nodes.isResultNode(v)]
        if new:
            self.parameters.caseVolumes = self.cases() + new
        return len(new)

    def addSceneVolumes(self) -> int:
        volumes = [node for node in self._nodesByClass("vtkMRMLScalarVolumeNode")
                   if not node.IsA("vtkMRMLLabelMapVolumeNode") and not case_nodes.isResultNode(node)]
        added = self.addCases(volumes)
        self.status(_("{count} volumes added as cases.").format(count=added), 3000)
        return added

    def addFolder(self, folder, loadVolume: Callable, progress: Callable[[int, int, str], bool] = lambda *args: True) -> int:
        """Load the volume files directly in ``folder`` with ``loadVolume(path)`` and add them as cases.

        ``progress(index, count, fileName)`` returning False cancels. One unreadable file does not stop
        the others; afterwards a PanelProblem lists them. Returns how many cases were added."""
        paths = listVolumeFiles(folder)
        if not paths:
            raise PanelProblem(_("No volume files ({extensions}) in {folder}. For DICOM, load the series with the DICOM "
                                 "module, then click 'Add scene volumes'.").format(
                                     extensions=", ".join(VOLUME_FILE_EXTENSIONS), folder=folder))
        loaded, failures = [], []
        for index, path in enumerate(paths):
            if not progress(index, len(paths), os.path.basename(path)):
                break
            try:
                loaded.append(loadVolume(path))
            except Exception as error:  # reported below, with the file's name
                failures.append(f"{os.path.basename(path)}: {error}")
        added = self.addCases(loaded)
        if failures:
            raise PanelProblem(_("{count} files could not be loaded:\n{files}").format(
                count=len(failures), files="\n".join(failures)))
        return added

    def removeCases(self, volumes) -> None:
        if self.trainingState != IDLE:
            raise PanelProblem(_("Stop training before removing cases."))
        removed = {volume.GetID() for volume in volumes}
        self.parameters.caseVolumes = [v for v in self.cases() if v.GetID() not in removed]

    def setLabelled(self, volumes, labelled: bool) -> None:
        """Mark cases (un)labelled; a case without a segmentation stays unlabelled (PanelProblem names it)."""
        withoutSegmentation = []
        for volume in volumes:
            if labelled and self.segmentationOf(volume) is None:
                withoutSegmentation.append(volume.GetName())
                continue
            case_nodes.setLabelled(volume, labelled)
        self.refreshCases()
        if withoutSegmentation:
            raise PanelProblem(_(
                "These cases have no segmentation yet, so they stay unlabelled: {cases}.\n"
                "Paint the structures in Segment Editor (or accept a prediction), then mark them again.").format(
                    cases=", ".join(withoutSegmentation)))

    def setSegmentation(self, volume, segmentationNode) -> None:
        """The table's segmentation selector: no segmentation makes the case unlabelled."""
        case_nodes.setUserSegmentationNode(volume, segmentationNode)
        if segmentationNode is None:
            case_nodes.setLabelled(volume, False)
        self.refreshCases()

    def selectCase(self, volume) -> bool:
        """Make ``volume`` the current case and show it; False when it already was."""
        if volume is None or volume is self.parameters.currentCase:
            return False
        self.parameters.currentCase = volume
        self.parameters.currentRegionIndex = -1
        self.showCase(volume)
        return True

    def refreshCases(self) -> None:
        """Re-read what the parameter node does not hold: the reviewed-region counts of the workspace."""
        self.reviewedRegionCounts = {}
        if self.parameters is not None and isPathSet(self.parameters.workspaceDir):
            try:
                self.reviewedRegionCounts = self.logic.reviewedRegionCounts(str(self.parameters.workspaceDir))
            except (OSError, ValueError):
                self.reviewedRegionCounts = {}  # an unreadable workspace shows no counts; Train reports it

    # -- view state -----------------------------------------------------------------------

    def tableRows(self) -> list:
        rows = []
        for volume in self.cases():
            caseId = case_nodes.caseIdOf(volume)
            labelled = case_nodes.isLabelled(volume)
            score = self.caseScores.get(caseId)
            hasResult = bool(caseId) and case_nodes.resultNode(self.scene, caseId, case_nodes.PREDICTION) is not None
            waiting = bool(caseId) and self.logic.newerPredictionRun(caseId) is not None
            rows.append(CaseRow(volume, volume.GetName(), self.segmentationOf(volume), labelled,
                                "" if score is None else f"{score:.3f}",
                                caseStateText(labelled, self.reviewedRegionCounts.get(caseId, 0), hasResult, waiting)))
        return rows

    def classNamesText(self) -> str:
        """The classes training will learn, problems with them in red, and the thin-slab hint."""
        summaries = self.caseSummaries()
        labelled = {case.name: case.segmentNames for case in summaries if case.labelled and case.hasSegmentation}
        classNames, problems = classNamesFromSegments(labelled)
        if not labelled:
            text = _("Classes: mark a case that has a segmentation as labelled.")
        else:
            text = _("Classes: background, {names}").format(names=", ".join(classNames) or "-")
        if problems:
            text += "<br><span style='color:#d03030'>" + "<br>".join(problems) + "</span>"
        spacing = medianSpacing([case.spacing for case in summaries if case.hasImage])
        hint = thinSlabHint(spacing, bool(self.parameters is not None and self.parameters.sliceBySlice))
        if hint:
            text += "<br>" + hint
        return text

    def currentCaseId(self) -> Optional[str]:
        volume = self.parameters.currentCase if self.parameters is not None else None
        return case_nodes.caseIdOf(volume) if isAlive(volume) else None

    def buttons(self) -> dict:
        """Which buttons are enabled (keys: the .ui names without "Button")."""
        hasCases = bool(self.cases())
        caseId = self.currentCaseId()
        hasResult = bool(caseId) and case_nodes.resultNode(self.scene, caseId, case_nodes.PREDICTION) is not None
        idle = self.trainingState == IDLE
        return {
            "removeCases": hasCases and idle,
            "markLabelled": hasCases,
            "markUnlabelled": hasCases,
            "previousRegion": hasResult,
            "nextRegion": hasResult,
            "acceptPrediction": hasResult,
            "acceptRegion": hasResult,  # the logic explains a refusal (e.g. a fully labelled case)
            "predictNow": self.job is not None and self.trainingState == TRAINING,
            "loadNewerPrediction": bool(caseId) and self.logic.newerPredictionRun(caseId) is not None,
            "loadResults": idle and bool(self.parameters is not None and self.parameters.lastRunId),
            "export": hasCases and idle,
            "train": self.trainingState != STOPPING,
        }

    def trainButtonText(self) -> str:
        return {TRAINING: _("Stop"), STOPPING: _("Stopping..."), IDLE: _("Train")}[self.trainingState]

    def regionText(self) -> str:
        if self.currentCaseId() is None or not self.parameters.lastRunId:
            return _("Select a case with results to review its uncertain regions.")
        return regionText(self.parameters.currentRegionIndex, self.regionsOfCurrentCase(), self.workspaceClassNames())

    def workspaceClassNames(self) -> list:
        """The class list regions refer to (``about_class``): the one the loaded results used, else
        the workspace's dataset.json ``labels``; [] when neither can be read."""
        names = getattr(self.logic, "classNames", None)
        if names:
            return list(names)
        try:
            return classNamesOf(readDataset(self.parameters.workspaceDir))
        except (OSError, ValueError):
            return []

    # -- helpers --------------------------------------------------------------------------

    def _nodesByClass(self, className: str) -> list:
        return [self.scene.GetNthNodeByClass(i, className) for i in range(self.scene.GetNumberOfNodesByClass(className))]
