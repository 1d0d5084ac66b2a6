"""``SemiSupSegPresenter``: every decision of the module panel, without Qt.

The widget (``SemiSupSeg.py``) turns Qt signals into calls of this class and copies its view state
(``tableRows``, ``buttons``, ``trainButton``, ``progress``, ``error``, the texts) into widget
properties. Everything else lives here and is tested headless with real MRML and a real worker
(``Testing/slicer_logic/test_presenter.py``): the training state machine, what the case table
shows, which buttons are enabled, region stepping, what happens when worker events arrive, the
input checks and the messages.

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
from .panel import CaseDisplay
from .workspace_files import classNamesOf, readDataset
from .panel_text import (
    CaseSummary,
    _,
    caseStateText,
    VOLUME_FILE_EXTENSIONS,
    classNamesFromSegments,
    engineStatusText,
    finishedText,
    formatDuration,
    isAlive,
    isPathSet,
    listVolumeFiles,
    methodEntries,
    progressText,
    regionText,
    segmentNamesOf,
    trainingConfig,
    validateTrainingInputs,
)

TRAINING, STOPPING, IDLE = "training", "stopping", "idle"
# Shown until the engine's own list (`semisupseg methods --json`, SemiSupSegLogic.availableMethods) arrives.
DEFAULT_METHODS = ("dycon", "mean_teacher", "uamt", "dual_uncertainty", "bidirectional_region", "supervised")
ENDED_STATES = ("finished", "cancelled", "failed")


class PanelProblem(Exception):
    """A refusal the user can fix: ``str(problem)`` says how; ``title`` heads the dialog."""

    def __init__(self, message: str, title: str = ""):
        super().__init__(message)
        self.title = title


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


@dataclass
class ProgressView:
    text: str = ""
    maximum: int = 100  # 0: a busy indicator (a run without an end)
    value: int = 0
    visible: bool = False


class SemiSupSegPresenter:
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
        labelled = {case.name: case.segmentNames for case in self.caseSummaries() if case.labelled and case.hasSegmentation}
        classNames, problems = classNamesFromSegments(labelled)
        if not labelled:
            text = _("Classes: mark a case that has a segmentation as labelled.")
        else:
            text = _("Classes: background, {names}").format(names=", ".join(classNames) or "-")
        if problems:
            text += "<br><span style='color:#d03030'>" + "<br>".join(problems) + "</span>"
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

    # -- the engine: torch, device, methods, installation ----------------------------------

    def checkEngine(self) -> dict:
        """``{"status", "methods"}``: the worker Python's torch/device and the engine's method list as
        ``[(name, description)]`` ([] when unavailable, e.g. before torch is installed). Both run a short
        child process: the widget calls this in a thread and hands the result to ``engineChecked``."""
        result = {"methods": []}
        try:
            result["status"] = self.logic.engineStatus()
        except Exception as error:  # shown on the status line
            result["status"] = {"error": str(error)}
        try:
            result["methods"] = methodEntries(self.logic.availableMethods())
        except Exception:  # the default list stays
            pass
        return result

    def engineChecked(self, result: dict) -> None:
        self.checkingEngine = False
        self.engineStatus = result.get("status")
        self.methods = list(result.get("methods") or self.methods)

    def methodItems(self) -> list:
        """The method combo box's ``[(name, description)]``: the engine's list, plus the parameter's method
        when a saved scene names one the list lacks (it stays selectable rather than being replaced)."""
        items = list(self.methods)
        if self.parameters is not None and self.parameters.method not in [name for name, _unused in items]:
            items.append((self.parameters.method, ""))
        return items

    def engineStatusLine(self) -> str:
        return _("Checking PyTorch and the GPU...") if self.checkingEngine else engineStatusText(self.engineStatus)

    def ensureDependencies(self, confirm: Callable[[str], bool], inform: Callable[[str, str], None]) -> bool:
        """True when the worker's Python has torch and every requirement; otherwise offers to install
        them. ``confirm(message)`` is asked once (False: nothing is installed, Train does not start);
        ``inform(message, title)`` tells that training will be CPU-only. A Python still lacking packages
        after the install is a PanelProblem."""
        status = self.engineStatus
        if not status or not status.get("torch") or status.get("missing") or status.get("error"):
            status = self.engineStatus = self.logic.engineStatus()
        if status.get("torch") and not status.get("missing"):
            return True
        answers = []
        question = _("Install them now? This can take several minutes. Slicer's own numpy, SimpleITK and VTK are "
                     "not touched.")
        self.logic.installDependencies(lambda message: answers.append(confirm(message + "\n\n" + question)) or answers[-1])
        if answers == [False]:
            return False
        status = self.engineStatus = self.logic.engineStatus()
        if not status.get("torch") or status.get("missing"):
            raise PanelProblem(_("The training worker's Python still lacks packages ({status}). Restart Slicer and try "
                                 "again; the Python console shows what failed.").format(status=engineStatusText(status)))
        if not status.get("cuda") and not status.get("mps"):
            inform(_("PyTorch is installed without GPU (CUDA) support, so training will run on the CPU only. It works "
                     "but is slow. With an NVIDIA GPU, reinstall PyTorch from the PyTorch module choosing a CUDA build."),
                   _("CPU only"))
        return True

    # -- training -------------------------------------------------------------------------

    def trainingProblems(self) -> list:
        parameters = self.parameters
        patch = (parameters.patchX, parameters.patchY, parameters.patchZ)
        return validateTrainingInputs(parameters.workspaceDir, self.caseSummaries(), patch)

    def onTrainButton(self, ensureDependencies: Callable[[], bool] = lambda: True,
                      stopInBackground: Optional[Callable] = None) -> str:
        """Train, or Stop while training (see ``requestStop``). Returns the new training state.

        Refusals (inputs) raise PanelProblem before anything is written; ``ensureDependencies()``
        (the widget's install dialog) may decline. Starting writes the workspace (only changes),
        chooses the warm start and starts the worker, which never blocks."""
        if self.trainingState == TRAINING:
            self.requestStop(stopInBackground)
            return self.trainingState
        if self.trainingState == STOPPING:
            return self.trainingState
        problems = self.trainingProblems()
        if problems:
            raise PanelProblem("\n\n".join(problems), _("Cannot train yet"))
        if not ensureDependencies():
            return self.trainingState
        self.startTraining()
        return self.trainingState

    def startTraining(self) -> None:
        parameters = self.parameters
        self.error = None
        workspace = str(parameters.workspaceDir)
        cases = [(volume, self.segmentationOf(volume), case_nodes.isLabelled(volume)) for volume in self.cases()]
        summary = self.logic.writeWorkspace(workspace, cases)
        config = trainingConfig(parameters)
        initFrom, warmStartNote = self.logic.warmStartRun(workspace, parameters.lastRunId, config, parameters.trainFromScratch)
        self.job = self.logic.startTraining(workspace, config, initFrom=initFrom)
        self.previousRunId = parameters.lastRunId  # shown again if the engine refuses this run
        self.finishedEvent, self.budgetSeconds = None, 60.0 * config.get("time_budget_min", 0)
        parameters.lastRunId = self.job.runId
        self.regionsCache.clear()
        self.trainingState = TRAINING
        self.progress = ProgressView(visible=True, text=_(
            "Starting: {cases} cases ({labelled} labelled, {partial} partly labelled), run {run}.").format(
                cases=summary.get("cases"), labelled=summary.get("labelled"), partial=summary.get("partial", 0),
                run=self.job.runId) + "\n" + (warmStartNote or _("Starting from the weights of run {run}.").format(run=initFrom.name)))
        self.refreshCases()  # writeWorkspace assigned case ids

    def requestStop(self, stopInBackground: Optional[Callable] = None) -> None:
        """Stop the worker: ``stopInBackground(job.stop)`` (the widget runs it in a thread, since stop
        waits for the checkpoint), or at once when None (application exit). ``poll`` notices the end."""
        if self.job is None or self.trainingState != TRAINING:
            return
        self.trainingState = STOPPING
        (stopInBackground or (lambda stop: stop()))(self.job.stop)

    def poll(self) -> bool:
        """Take the worker's events: progress, predictions (loaded into the scene), the end. Returns
        True while a worker is being followed (the widget keeps its timer running)."""
        job = self.job
        if job is None:
            return False
        predicted = []
        for event in job.pollEvents():
            self._onEvent(event, predicted)
        if predicted and self.parameters is not None:
            self.loadResults(job.workspaceDir, job.runId, list(dict.fromkeys(predicted)))
        if job.state in ENDED_STATES:
            self._onTrainingEnded(job)
            return False
        return True

    def _onEvent(self, event: dict, predicted: list) -> None:
        kind = event.get("event")
        if kind == "progress":
            self.progress = self._progressView(event)
        elif kind == "started":
            self.progress.text = _("Training on {device}...").format(device=event.get("device", "?"))
            if event.get("time_budget_min"):
                self.progress.text += " " + _("Time budget: {budget}, prediction included.").format(
                    budget=formatDuration(60.0 * float(event["time_budget_min"])))
        elif kind == "budget_reached":
            self.progress.text = _("Time budget reached at iteration {iteration}: saving the weights and predicting "
                                   "(about {prediction}).").format(iteration=event.get("iteration", "?"),
                                                                   prediction=formatDuration(event.get("prediction_s")) or "?")
        elif kind == "finished":
            self.finishedEvent = event
        elif kind == "prediction" and event.get("case"):
            predicted.append(event["case"])
            if event.get("score") is not None:
                self.caseScores[event["case"]] = float(event["score"])
        elif kind == "workspace_reloaded":
            changed = sorted(set(event.get("added", []) + event.get("relabelled", []) + event.get("moved", [])))
            if changed:
                self.status(_("Training took in the new labels of: {cases}").format(cases=", ".join(changed)))
        elif kind == "regions":
            self._forgetRegions(self.job.runId)

    def _progressView(self, event: dict) -> ProgressView:
        """The bar counts iterations; a run that ends at its time budget only counts the budget's seconds."""
        total = int(event["total"]) if event.get("total") else 0
        if total:
            return ProgressView(progressText(event), total, min(int(event.get("iteration", 0)), total), True)
        if self.budgetSeconds and event.get("budget_left_s") is not None:
            spent = self.budgetSeconds - max(0.0, float(event["budget_left_s"]))
            return ProgressView(progressText(event), int(self.budgetSeconds), int(min(max(spent, 0.0), self.budgetSeconds)), True)
        return ProgressView(progressText(event), 0, 0, True)  # no end: a busy indicator

    def _onTrainingEnded(self, job) -> None:
        self.job = None
        self._forgetRegions(job.runId)
        self.trainingState = IDLE
        refused = self.logic.trainingEnded(job)
        if job.state == "failed":
            self.error = job.error or {"message": _("The training worker failed."), "hint": ""}
            if refused and self.parameters is not None:  # its folder is gone: the earlier run stays the one shown
                self.parameters.lastRunId = self.previousRunId
                self.progress = ProgressView(_("The engine refused run {run}; nothing was trained or kept.").format(run=job.runId))
            return
        try:
            self.caseScores.update(self.logic.caseScores(str(job.workspaceDir), job.runId))
        except (OSError, ValueError):
            pass  # the scores of the prediction events stay
        if job.state == "cancelled":
            self.progress.text = _("Stopped. The last checkpoint is kept in run {run}.").format(run=job.runId)
        else:
            self.progress.value = self.progress.maximum
            self.progress.text = finishedText(job.runId, self.finishedEvent)
        self.refreshCases()

    def workerLogPath(self) -> pathlib.Path:
        runId = self.parameters.lastRunId
        path = pathlib.Path(self.parameters.workspaceDir) / "runs" / (runId or "-") / "worker.log"
        if not runId or not path.exists():
            raise PanelProblem(_("No worker log at {path}.").format(path=path))
        return path

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

    def _nodesByClass(self, className: str) -> list:
        return [self.scene.GetNthNodeByClass(i, className) for i in range(self.scene.GetNumberOfNodesByClass(className))]

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
