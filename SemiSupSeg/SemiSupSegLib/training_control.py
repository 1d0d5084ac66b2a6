"""``TrainingControl``: the presenter's engine check and training state machine, without Qt.

A mixin of ``SemiSupSegPresenter`` (``presenter.py``), which holds the state it reads and writes
(``logic``, ``parameters``, ``job``, ``trainingState``, ``progress``, ``caseScores``...): checking
the worker's PyTorch and installing it, Train / Stop, following the worker's events and the end of
a run. Tested through the presenter (``Testing/slicer_logic/test_presenter.py``).
"""

from __future__ import annotations

import pathlib
from typing import Callable, Optional

from . import case_nodes
from .panel_state import ENDED_STATES, IDLE, STOPPING, TRAINING, PanelProblem, ProgressView
from .panel_text import (
    _,
    engineStatusText,
    finishedText,
    formatDuration,
    methodEntries,
    progressText,
    trainingConfig,
    validateTrainingInputs,
)


class TrainingControl:
    """Engine status, Train / Stop and the worker's events (see the module docstring)."""

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
        return validateTrainingInputs(parameters.workspaceDir, self.caseSummaries(), patch,
                                      sliceBySlice=parameters.sliceBySlice)

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
