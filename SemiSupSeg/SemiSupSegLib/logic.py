"""``SemiSupSegLogic``: the one object the module's GUI talks to.

A facade over the single-purpose modules of this package (workspace writing, the worker process,
results, navigation, export, dependencies). Qt-free: it runs in Slicer and headless with the
``slicer-core`` wheel. It is a plain class rather than a ``ScriptedLoadableModuleLogic``, whose
module imports Qt; the GUI keeps the parameter node.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import slicer

from . import case_nodes, dependencies, navigation, prediction_edits, region_corrections
from .corrections import acceptPrediction
from .exporter import Exporter
from .files import atomicWriteJson, readJson
from .panel import PANEL_NETWORK
from .dependencies import noConsoleWindow
from .results_loader import UNCERTAINTY_OPACITY, ResultsLoader
from .training_job import TrainingJob, defaultPythonExecutable, runFolder, workerCommand, workerEnvironment
from .workspace_files import classNamesOf, readDataset
from .workspace_writer import WorkspaceWriter

MODULE_DIR = Path(__file__).resolve().parent.parent  # SemiSupSeg/: holds the engine package ``semisupseg``
# What the Slicer side remembers about a run it started (the class list, for warm-start checks).
RUN_NOTE_FILE = "slicer-run.json"
METHODS_TIMEOUT_S = 120


def newRunId() -> str:
    """``20261123-101530-3fa2``: sortable by start time, unique, file-name safe."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class SemiSupSegLogic:
    """Scene <-> workspace, training worker, results, navigation and export.

    ``scene`` defaults to ``slicer.mrmlScene`` (looked up at each call). ``pythonExecutable``
    chooses the worker's Python (default: ``PythonSlicer`` in Slicer, else this interpreter);
    a non-Slicer Python (e.g. a CUDA environment) runs with Slicer's startup environment.
    """

    def __init__(self, scene=None, pythonExecutable: str | None = None, moduleDir=None):
        self._scene = scene
        self.pythonExecutable = pythonExecutable
        self.moduleDir = Path(moduleDir) if moduleDir else MODULE_DIR
        self.classNames: list[str] | None = None  # class list of the last workspace written or loaded
        self.workspaceDir: Path | None = None

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    # -- scene -> workspace ---------------------------------------------------------------

    def writeWorkspace(self, workspaceDir, cases, classNames=None, name: str | None = None, modality: str | None = None) -> dict:
        """Write ``cases`` = ``[(volumeNode, segmentationNode or None, labelled), ...]`` as a workspace.

        Returns ``{"written": [...], "unchanged": [...], "cases": n, "labelled": n, ...}``; raises
        ValueError (naming the node and the fix) for inconsistent segment names or bad inputs.
        """
        result = WorkspaceWriter(self.scene).write(workspaceDir, cases, classNames, name=name, modality=modality)
        self.classNames = result["classNames"]
        self.workspaceDir = Path(workspaceDir)
        return result

    def sceneCases(self) -> list[tuple]:
        """``(volumeNode, user segmentation or None, labelled)`` of every volume already in a workspace."""
        return [
            (node, case_nodes.userSegmentationNode(self.scene, node), case_nodes.isLabelled(node))
            for node in case_nodes.registeredVolumeNodes(self.scene)
        ]

    def caseVolumeNode(self, caseId: str):
        return case_nodes.volumeNodeForCase(self.scene, caseId)

    def setCaseLabelled(self, caseIdOrVolumeNode, labelled: bool) -> None:
        case_nodes.setLabelled(self._volumeNode(caseIdOrVolumeNode), labelled)

    # -- worker ---------------------------------------------------------------------------

    def workerPython(self, pythonExecutable: str | None = None) -> str:
        return pythonExecutable or self.pythonExecutable or defaultPythonExecutable()

    def workerEnvironment(self, pythonExecutable: str) -> dict:
        """Environment of the worker; a foreign Python must not inherit Slicer's PYTHONHOME/PYTHONPATH."""
        base = None
        if "PythonSlicer" not in Path(pythonExecutable).name and hasattr(slicer, "app"):
            try:
                base = slicer.util.startupEnvironment()
            except Exception:  # headless or an older Slicer: keep the current environment
                base = None
        return workerEnvironment(self.moduleDir, base)

    def startTraining(self, workspaceDir, config: dict, pythonExecutable: str | None = None,
                      runId: str | None = None, resume: bool = False, initFrom=None) -> TrainingJob:
        """Start ``python -m semisupseg train`` on the workspace; returns at once with the running job.

        ``initFrom``: a run folder (see ``warmStartRun``) whose final weights the new run starts from
        (``--init-from``); None starts from random weights.
        """
        runId = runId or newRunId()
        configPath = Path(workspaceDir) / "runs" / f"pending-{runId}.json"
        atomicWriteJson(configPath, dict(config))
        python = self.workerPython(pythonExecutable)
        command = workerCommand(python, workspaceDir, configPath, runId, resume=resume, initFrom=initFrom)
        self.workspaceDir = Path(workspaceDir)
        job = TrainingJob(runId, workspaceDir, command, self.workerEnvironment(python), cwd=workspaceDir)
        note = {"classNames": classNamesOf(readDataset(workspaceDir)), "method": config.get("method"),
                "initFrom": str(initFrom) if initFrom else None}
        atomicWriteJson(job.runDir / RUN_NOTE_FILE, note)
        return job

    def trainingEnded(self, job) -> bool:
        """Tidy up after a job has ended: its pending configuration goes (the engine keeps the resolved
        one in ``runs/<id>/config.json``), and the run folder of a run the engine refused (bad input,
        nothing trained) goes too, so no empty run is left to be chosen as a warm start or listed.
        Returns True when the run was refused and its folder removed."""
        (Path(job.workspaceDir) / "runs" / f"pending-{job.runId}.json").unlink(missing_ok=True)
        discard = getattr(job, "discardIfRefused", None)
        return bool(discard and discard())

    def warmStartRun(self, workspaceDir, previousRunId: str | None, config: dict, fromScratch: bool = False):
        """``(run folder or None, reason)``: where "Train again" starts from.

        The previous run's final weights (``checkpoints/last.pt``) by default; None (random weights)
        when ``fromScratch``, when there is no previous run or checkpoint, or when the previous run
        trained another method, network or class list (its weights would not fit: the engine
        refuses them).
        ``reason`` says why in one sentence (empty when warm-starting).
        """
        if fromScratch:
            return None, "Starting from scratch, as chosen."
        if not previousRunId:
            return None, "No earlier run: starting from random weights."
        previous = runFolder(workspaceDir, previousRunId)
        if not (previous / "checkpoints" / "last.pt").exists():
            return None, f"Run {previousRunId} left no checkpoint: starting from random weights."
        previousConfig = readJson(previous / "config.json", default={}) or {}
        previousMethod = previousConfig.get("method")
        if config.get("method") and previousMethod and previousMethod != config["method"]:
            return None, f"Run {previousRunId} trained {previousMethod}, not {config['method']}: starting from random weights."
        # a config without "network" trains the engine's default network (PANEL_NETWORK, checked against the engine)
        previousNetwork, network = previousConfig.get("network", PANEL_NETWORK), config.get("network", PANEL_NETWORK)
        if previousNetwork != network:  # a 3D run's weights do not fit the slice-by-slice network, nor back
            return None, f"Run {previousRunId} trained the {previousNetwork} network, not {network}: starting from random weights."
        note = readJson(previous / RUN_NOTE_FILE, default={}) or {}
        classNames = classNamesOf(readDataset(workspaceDir))
        if note.get("classNames") and note["classNames"] != classNames:
            return None, (f"Run {previousRunId} learned the classes {note['classNames'][1:]}, the workspace now has "
                          f"{classNames[1:]}: starting from random weights.")
        return previous, ""

    def runDir(self, workspaceDir, runId: str) -> Path:
        return runFolder(workspaceDir, runId)

    def requestPrediction(self, workspaceDir, runId: str, caseIds) -> Path:
        """Ask the running worker to predict ``caseIds`` at its next iteration (the engine's PREDICT file).

        Written atomically (the worker never reads half a list); a request still waiting is
        merged, not replaced, so two clicks in a row lose no case. Returns the file's path.
        """
        ids = [str(caseId) for caseId in caseIds]
        if not ids:
            raise ValueError("No case to predict: select a case in the table first.")
        path = self.runDir(workspaceDir, runId) / "PREDICT"
        if not path.parent.is_dir():
            raise ValueError(f'Run "{runId}" has no folder in {workspaceDir}: start training first.')
        try:
            waiting = readJson(path)
        except (OSError, ValueError):
            waiting = []
        merged = list(dict.fromkeys([*(waiting if isinstance(waiting, list) else []), *ids]))
        atomicWriteJson(path, merged)
        return path

    # -- results --------------------------------------------------------------------------

    def loadResults(self, workspaceDir, runId: str, caseIds=None, force: bool = False) -> dict:
        """``{caseId: {"segmentation", "uncertainty", "newerPredictionWaiting"}}``; see ResultsLoader.

        A case whose prediction the annotator edited and has not accepted keeps it (its newer
        prediction waits, see ``newerPredictionRun``) unless ``force``.
        """
        results = ResultsLoader(self.scene).load(workspaceDir, runId, caseIds, force=force)
        self.classNames = classNamesOf(readDataset(workspaceDir))
        return results

    def newerPredictionRun(self, caseIdOrVolumeNode) -> str | None:
        """The run whose newer prediction waits because the loaded one has unaccepted edits, else None."""
        caseId = self._caseId(caseIdOrVolumeNode)
        return prediction_edits.newerPredictionRun(case_nodes.resultNode(self.scene, caseId, case_nodes.PREDICTION))

    def loadNewerPrediction(self, workspaceDir, caseIdOrVolumeNode) -> dict:
        """The annotator's choice: replace an edited prediction (and its uncertainty map) by the waiting one."""
        caseId = self._caseId(caseIdOrVolumeNode)
        runId = self.newerPredictionRun(caseId)
        if runId is None:
            raise ValueError(f'No newer prediction is waiting for case "{caseId}".')
        return self.loadResults(workspaceDir, runId, [caseId], force=True)[caseId]

    def showCase(self, caseId: str, showUncertainty: bool = True, opacity: float | None = None) -> None:
        """The case's volume in every slice view, its uncertainty map over it as the panel says
        (``showUncertainty``, ``opacity``; None = the default 0.4), the prediction outlined or filled."""
        ResultsLoader(self.scene).showCase(caseId, showUncertainty, UNCERTAINTY_OPACITY if opacity is None else opacity)

    def regions(self, workspaceDir, runId: str, caseId: str) -> list[dict]:
        return navigation.loadRegions(workspaceDir, runId, caseId)

    @staticmethod
    def regionCenterRAS(region: dict) -> list[float]:
        return navigation.regionCenterRAS(region)

    def jumpToRegion(self, region: dict, showUncertainty: bool = True, opacity: float | None = None) -> None:
        """Show the region's case (when its results are loaded) and centre all slice views on the region.

        The overlay follows the panel's Show uncertainty and Opacity (issue 20, bug 5: it used to be
        re-shown at 0.4 whatever the panel said)."""
        caseId = region.get("case")
        if caseId and case_nodes.volumeNodeForCase(self.scene, caseId) is not None:
            self.showCase(caseId, showUncertainty, opacity)
        navigation.jumpToRegion(self.scene, region)

    def caseScores(self, workspaceDir, runId: str) -> dict[str, float]:
        return navigation.caseScores(workspaceDir, runId)

    # -- corrections ----------------------------------------------------------------------

    def acceptPrediction(self, caseIdOrVolumeNode):
        """Copy the loaded prediction into the user's segmentation (created if missing) and mark
        the case labelled: the only operation that changes a user's segmentation. Returns it."""
        classNames = self.classNames
        if self.workspaceDir is not None and (self.workspaceDir / "dataset.json").exists():
            classNames = classNamesOf(readDataset(self.workspaceDir))
        return acceptPrediction(self.scene, self._volumeNode(caseIdOrVolumeNode), classNames)

    def acceptRegion(self, workspaceDir, caseIdOrVolumeNode, region: dict | None,
                     marginMm: float = region_corrections.DEFAULT_MARGIN_MM) -> dict:
        """Write the edited prediction inside ``region`` into the case's partial label, at once.

        Never touches the user's segmentation; see region_corrections.acceptRegion for the voxels
        taken, the files written, the result dict and the refusals (ValueError with the fix).
        """
        self.workspaceDir = Path(workspaceDir)
        return region_corrections.acceptRegion(self.scene, workspaceDir, self._volumeNode(caseIdOrVolumeNode), region, marginMm)

    def reviewedRegionCounts(self, workspaceDir) -> dict[str, int]:
        """``{caseId: regions accepted}`` of the partially labelled cases ("3 regions reviewed")."""
        return region_corrections.reviewedRegionCounts(workspaceDir)

    # -- export ---------------------------------------------------------------------------

    def exportSegmentations(self, outputDir, format: str = "seg.nrrd", caseIds=None, overwrite: bool = False,
                            source: str = "auto", classNames=None) -> list[str]:
        """Export each case's segmentation (the user's, else the prediction); see Exporter.export."""
        return Exporter(self.scene).export(
            outputDir, format, caseIds, overwrite=overwrite, source=source,
            classNames=classNames if classNames is not None else self.classNames,
        )

    # -- dependencies ---------------------------------------------------------------------

    def requirements(self) -> list[str]:
        return dependencies.readRequirements(self.moduleDir / "Resources" / "requirements.txt")

    def engineStatus(self, pythonExecutable: str | None = None) -> dict:
        """Torch version, CUDA, device and missing requirements of the worker's Python (runs a child process)."""
        python = self.workerPython(pythonExecutable)
        return dependencies.engineStatus(python, self.requirements(), self.workerEnvironment(python))

    def availableMethods(self, pythonExecutable: str | None = None) -> dict:
        """The engine's training methods, ``{name: {"description", "uses_unlabelled", "options"}}``, from
        ``semisupseg methods --json`` in the worker's Python (a child process: torch stays out of Slicer's).

        Raises RuntimeError with the worker's last stderr lines when the listing fails (e.g. no torch yet)."""
        python = self.workerPython(pythonExecutable)
        completed = subprocess.run(
            [str(python), "-m", "semisupseg", "methods", "--json"], capture_output=True, text=True,
            timeout=METHODS_TIMEOUT_S, env=self.workerEnvironment(python), stdin=subprocess.DEVNULL, **noConsoleWindow(),
        )
        try:
            listing = json.loads(completed.stdout) if completed.returncode == 0 else None
        except ValueError:
            listing = None
        if not isinstance(listing, dict):
            raise RuntimeError(f"{python} -m semisupseg methods failed: {completed.stderr.strip()[-1000:]}")
        return listing

    def installDependencies(self, confirm) -> None:
        """Install torch (PyTorch extension) and the other requirements into Slicer's Python after ``confirm(message)``."""
        dependencies.installDependencies(confirm, self.requirements())

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _caseId(caseIdOrVolumeNode) -> str | None:
        return caseIdOrVolumeNode if isinstance(caseIdOrVolumeNode, str) else case_nodes.caseIdOf(caseIdOrVolumeNode)

    def _volumeNode(self, caseIdOrVolumeNode):
        if isinstance(caseIdOrVolumeNode, str):
            volumeNode = case_nodes.volumeNodeForCase(self.scene, caseIdOrVolumeNode)
            if volumeNode is None:
                raise ValueError(f'No volume of case "{caseIdOrVolumeNode}" in the scene; write the workspace first.')
            return volumeNode
        return caseIdOrVolumeNode
