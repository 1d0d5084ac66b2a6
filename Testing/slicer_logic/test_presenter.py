"""The panel's presenter, headless, on real MRML with the real worker: the README's annotation loop
step by step (add cases, label, train, predictions arrive, step regions, accept, export) and its
failure paths (inputs refused with the fix, a worker that fails, stop, export without a folder).

The worker trains the tiny network of ``slicer_test_scenes.FAST_TRAINING`` (4 CPU iterations); the
panel cannot set network widths, so the logic used here adds them to the panel's configuration.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")
pytest.importorskip("torch", reason="the worker needs torch")

from SemiSupSegLib import SemiSupSegLogic, case_nodes  # noqa: E402
from SemiSupSegLib.presenter import IDLE, STOPPING, TRAINING, PanelParameters, PanelProblem, SemiSupSegPresenter  # noqa: E402
from slicer_test_scenes import FAST_TRAINING, sliceCentres, tinyTrainingCases  # noqa: E402

pytestmark = pytest.mark.slow


class TinyNetworkLogic(SemiSupSegLogic):
    """The real logic; the worker builds the tiny test network (a width list the panel has no field for)."""

    def startTraining(self, workspaceDir, config, **options):
        return super().startTraining(workspaceDir, dict(config, network_options=FAST_TRAINING["network_options"]), **options)


def panelParameters(workspace: pathlib.Path, **changes) -> PanelParameters:
    values = dict(workspaceDir=workspace, method="supervised", iterations=4, keepTraining=False, device="cpu",
                  seed=0, batchLabelled=1, patchX=32, patchY=32, patchZ=16, predictEvery=0,
                  exportDir=workspace.parent / "export")
    values.update(changes)
    return PanelParameters(**values)


def followUntilIdle(presenter, timeout: float = 300.0) -> None:
    """What the widget's timer does: poll until the worker has ended."""
    deadline = time.monotonic() + timeout
    while presenter.poll():
        assert time.monotonic() < deadline, f"worker still running: {presenter.progress.text}"
        time.sleep(0.2)


@pytest.fixture
def panel(mrml, tmp_path):
    fits = []
    presenter = SemiSupSegPresenter(TinyNetworkLogic(), panelParameters(tmp_path / "workspace"), fitViews=lambda: fits.append(1))
    cases = tinyTrainingCases(mrml.scene)
    yield presenter, cases, fits
    if presenter.job is not None:
        presenter.job.stop(timeout=5)


def test_the_annotation_loop_step_by_step(panel, mrml):
    presenter, cases, fits = panel
    (vol0, seg0, _), (vol1, _, _) = cases

    # 1. Cases: scene volumes join the table once; results and label maps never do.
    assert presenter.trainingProblems()[0].startswith("Add volumes")
    assert presenter.addSceneVolumes() == 2 and presenter.addSceneVolumes() == 0
    assert [row.name for row in presenter.tableRows()] == ["vol0", "vol1"]
    assert presenter.buttons()["export"] and not presenter.buttons()["nextRegion"]

    # 2. Label: a case without a segmentation is refused and says what to do.
    with pytest.raises(PanelProblem, match="no segmentation yet.*vol1"):
        presenter.setLabelled([vol1], True)
    assert any("Mark at least one case" in problem for problem in presenter.trainingProblems())
    presenter.setSegmentation(vol0, seg0)
    presenter.setLabelled([vol0], True)
    assert [(row.labelled, row.stateText) for row in presenter.tableRows()] == [(True, "labelled"), (False, "unlabelled")]
    assert presenter.classNamesText() == "Classes: background, organ"
    assert presenter.trainingProblems() == []

    # 3. Train: the button turns into Stop, the table cannot shrink meanwhile, Export waits.
    assert presenter.onTrainButton() == TRAINING
    assert presenter.trainButtonText() == "Stop" and presenter.progress.visible
    buttons = presenter.buttons()
    assert not buttons["removeCases"] and not buttons["export"] and buttons["predictNow"] and buttons["train"]
    with pytest.raises(PanelProblem, match="Stop training"):
        presenter.removeCases([vol1])

    # 4. Predictions arrive as nodes; the run ends; scores and states fill the table.
    followUntilIdle(presenter)
    assert presenter.trainingState == IDLE and presenter.error is None, presenter.error
    assert presenter.progress.maximum == 4 and presenter.progress.value == 4
    assert presenter.progress.text.startswith("Finished run " + presenter.parameters.lastRunId)
    rows = presenter.tableRows()
    assert all(row.scoreText for row in rows) and rows[1].stateText == "predicted"
    for volume in (vol0, vol1):
        caseId = case_nodes.caseIdOf(volume)
        assert case_nodes.resultNode(mrml.scene, caseId, case_nodes.PREDICTION) is not None

    # 5. Review: selecting a case shows it (views refitted), regions are stepped with wrap-around.
    fitsBefore = len(fits)
    assert presenter.selectCase(vol1) and not presenter.selectCase(vol1)
    assert len(fits) == fitsBefore + 1
    regions = presenter.regionsOfCurrentCase()
    assert regions, "a 4-iteration network is uncertain somewhere in vol1"
    assert presenter.regionText() == f"{len(regions)} uncertain regions: click 'Next uncertain region'."
    presenter.parameters.uncertaintyOpacity = 0.55
    first = presenter.stepRegion(+1)
    assert presenter.parameters.currentRegionIndex == 0 and presenter.regionText().startswith(f"Region 1 of {len(regions)}")
    centre = presenter.logic.regionCenterRAS(first)
    for viewCentre in sliceCentres(mrml.scene).values():
        np.testing.assert_allclose(viewCentre, centre, atol=1e-6)
    composite = mrml.scene.GetNodeByID("vtkMRMLSliceCompositeNodeRed")
    assert composite.GetForegroundOpacity() == pytest.approx(0.55)  # the panel's opacity, not 0.4
    presenter.stepRegion(-1)  # from the first back to the last
    assert presenter.parameters.currentRegionIndex == len(regions) - 1
    presenter.stepRegion(+1)  # and forward again to the first
    assert presenter.parameters.currentRegionIndex == 0

    # 6. Accept the region: a partial label, counted in the table.
    result = presenter.acceptRegion()
    assert result["regionVoxels"] > 0 and presenter.tableRows()[1].stateText.startswith("1 region reviewed")
    assert presenter.statusMessages and "region accepted" in presenter.statusMessages[-1][0]

    # 7. Export every case; a second export refuses to overwrite.
    with pytest.raises(PanelProblem, match="output folder"):
        SemiSupSegPresenter(presenter.logic, panelParameters(pathlib.Path(""), exportDir=pathlib.Path(""))).export()
    message = presenter.export()
    written = sorted(pathlib.Path(presenter.parameters.exportDir).glob("*.seg.nrrd"))
    assert message == f"Wrote {len(written)} files to {presenter.parameters.exportDir}." and len(written) == 2
    with pytest.raises(FileExistsError):
        presenter.export()


def test_inputs_the_engine_would_refuse_are_refused_before_anything_is_written(panel):
    presenter, cases, _ = panel
    (vol0, seg0, _), _unused = cases
    presenter.addCases([vol0])
    presenter.setSegmentation(vol0, seg0)
    presenter.setLabelled([vol0], True)
    presenter.parameters.patchX = presenter.parameters.patchY = presenter.parameters.patchZ = 16
    with pytest.raises(PanelProblem) as refused:
        presenter.onTrainButton()
    assert refused.value.title == "Cannot train yet" and "too small" in str(refused.value)
    assert presenter.trainingState == IDLE and not pathlib.Path(presenter.parameters.workspaceDir).exists()
    presenter.parameters.patchZ = 32
    assert presenter.onTrainButton(ensureDependencies=lambda: False) == IDLE  # the install was declined
    assert presenter.job is None


class EngineOnlyRefusalLogic(TinyNetworkLogic):
    """Sends a patch the panel would have refused (16^3: the network's bottleneck rule), so that the
    engine's own refusal is what is tested."""

    def startTraining(self, workspaceDir, config, **options):
        return super().startTraining(workspaceDir, dict(config, patch_size=[16, 16, 16]), **options)


@pytest.mark.parametrize("refusal", ["unknown method", "patch size"])
def test_a_run_the_engine_refuses_shows_its_message_and_leaves_no_run_behind(panel, refusal):
    presenter, cases, _ = panel
    (vol0, seg0, _), _unused = cases
    presenter.addCases([vol0])
    presenter.setSegmentation(vol0, seg0)
    presenter.setLabelled([vol0], True)
    if refusal == "unknown method":
        presenter.parameters.method = "no_such_method"
    else:
        presenter.logic = EngineOnlyRefusalLogic()
    presenter.parameters.lastRunId = "earlier-run"  # the run shown before Train was clicked
    presenter.onTrainButton()
    refusedRun = presenter.job.runId
    followUntilIdle(presenter, timeout=120)
    assert presenter.trainingState == IDLE and presenter.trainButtonText() == "Train"
    expected = "no_such_method" if refusal == "unknown method" else "patch"
    assert presenter.error and expected in presenter.error["message"].lower() and presenter.error["hint"], presenter.error
    runs = pathlib.Path(presenter.parameters.workspaceDir) / "runs"
    assert sorted(path.name for path in runs.iterdir()) == []  # neither runs/<id>/ nor its pending config
    assert presenter.parameters.lastRunId == "earlier-run"  # still the one shown and warm-started from
    assert refusedRun in presenter.progress.text and "refused" in presenter.progress.text


def test_stop_keeps_the_checkpoint_and_returns_to_idle(panel):
    presenter, cases, _ = panel
    (vol0, seg0, _), _unused = cases
    presenter.addCases([vol0])
    presenter.setSegmentation(vol0, seg0)
    presenter.setLabelled([vol0], True)
    presenter.parameters.keepTraining = True  # the live loop: runs until Stop
    presenter.onTrainButton()
    deadline = time.monotonic() + 120
    while presenter.poll() and not presenter.progress.text.startswith("Iteration"):
        assert time.monotonic() < deadline, presenter.progress.text
        time.sleep(0.2)
    assert "training until stopped" in presenter.progress.text and presenter.progress.maximum == 0  # busy indicator
    stops = []
    assert presenter.onTrainButton(ensureDependencies=pytest.fail, stopInBackground=stops.append) == STOPPING
    assert presenter.trainButtonText() == "Stopping..." and not presenter.buttons()["train"]
    presenter.onTrainButton(ensureDependencies=pytest.fail, stopInBackground=stops.append)  # a second click: nothing
    assert len(stops) == 1
    stops[0]()  # what the widget's thread runs: STOP file, the checkpoint, the end
    followUntilIdle(presenter, timeout=120)
    runDir = pathlib.Path(presenter.parameters.workspaceDir) / "runs" / presenter.parameters.lastRunId
    assert presenter.progress.text.startswith("Stopped.") and (runDir / "checkpoints" / "last.pt").exists()


def test_a_time_budget_ends_the_live_loop_with_a_prediction_and_says_so(panel, mrml):
    """Keep training (the panel's default) with a time budget: the engine gets ``time_budget_min``,
    the progress shows the budget left, and the run ends by itself at the budget with predictions.
    (The panel offers whole minutes; a quarter of a minute keeps the test short.)"""
    presenter, cases, _ = panel
    (vol0, seg0, _), (vol1, _, _) = cases
    presenter.addCases([vol0, vol1])
    presenter.setSegmentation(vol0, seg0)
    presenter.setLabelled([vol0], True)
    presenter.parameters.keepTraining, presenter.parameters.timeBudgetMin = True, 0.25
    presenter.onTrainButton()
    texts, bars = [], []
    shownAfterEvent = []  # the text after every event: one poll can take "started" and a progress together
    takeEvent = presenter._onEvent
    presenter._onEvent = lambda event, predicted: (takeEvent(event, predicted),
                                                   shownAfterEvent.append(presenter.progress.text))
    deadline = time.monotonic() + 300
    while presenter.poll():
        assert time.monotonic() < deadline, presenter.progress.text
        texts.append(presenter.progress.text)
        if presenter.progress.text.startswith("Iteration"):
            bars.append((presenter.progress.maximum, presenter.progress.value))
        time.sleep(0.2)
    assert presenter.error is None, presenter.error
    runDir = pathlib.Path(presenter.parameters.workspaceDir) / "runs" / presenter.parameters.lastRunId
    assert json.loads((runDir / "config.json").read_text())["time_budget_min"] == 0.25
    assert presenter.finishedEvent["stopped_by"] == "time_budget" and presenter.finishedEvent["time_budget_s"] == 15
    during = [text for text in texts if text.startswith("Iteration")]
    assert during and all("training until the time budget" in text and "time budget: " in text for text in during)
    assert any("Time budget: 15 s, prediction included." in text for text in shownAfterEvent)  # "started"
    assert bars and all(maximum == 15 and 0 <= value <= 15 for maximum, value in bars)  # the bar counts seconds
    assert presenter.progress.text.startswith(f"Finished run {presenter.parameters.lastRunId}: stopped at its time budget (")
    assert "of 15 s, prediction included" in presenter.progress.text
    for volume in (vol0, vol1):  # the final prediction came within the budget's run
        assert case_nodes.resultNode(mrml.scene, case_nodes.caseIdOf(volume), case_nodes.PREDICTION) is not None


# -- decisions without a worker ------------------------------------------------------------


class StubLogic:
    """Answers ``engineStatus`` from a list (one per call) and records the install confirmation."""

    def __init__(self, statuses, acceptInstall=None):
        self.statuses, self.asked = list(statuses), []
        self.acceptInstall = acceptInstall

    def engineStatus(self):
        return self.statuses.pop(0)

    def installDependencies(self, confirm):
        if self.acceptInstall is not None:  # something is missing: the one question
            self.asked.append(confirm("SemiSupSeg needs these Python packages: monai"))


READY = {"torch": "2.9.0", "cuda": True, "device": "cuda:0 GPU", "missing": []}
CPU_READY = {"torch": "2.9.0", "cuda": False, "device": "cpu", "missing": []}
MISSING = {"torch": None, "cuda": False, "device": "cpu", "missing": ["torch", "monai"]}


def test_dependencies_ready_asks_nothing():
    presenter = SemiSupSegPresenter(StubLogic([READY]), PanelParameters())
    assert presenter.ensureDependencies(pytest.fail, pytest.fail) and presenter.engineStatus == READY
    assert presenter.ensureDependencies(pytest.fail, pytest.fail)  # the known status is used: no second check


def test_a_declined_install_does_not_train():
    questions = []
    logic = StubLogic([MISSING], acceptInstall=False)
    presenter = SemiSupSegPresenter(logic, PanelParameters())
    assert not presenter.ensureDependencies(lambda message: questions.append(message) or False, pytest.fail)
    assert len(questions) == 1 and "monai" in questions[0] and "numpy, SimpleITK and VTK are not touched" in questions[0]
    assert logic.statuses == []  # no re-check after "no"


def test_an_install_that_leaves_packages_missing_says_restart_and_a_cpu_only_torch_is_told():
    presenter = SemiSupSegPresenter(StubLogic([MISSING, MISSING], acceptInstall=True), PanelParameters())
    with pytest.raises(PanelProblem, match="Restart Slicer"):
        presenter.ensureDependencies(lambda message: True, pytest.fail)
    told = []
    presenter = SemiSupSegPresenter(StubLogic([MISSING, CPU_READY], acceptInstall=True), PanelParameters())
    assert presenter.ensureDependencies(lambda message: True, lambda message, title: told.append(title))
    assert told == ["CPU only"] and "CPU only" in presenter.engineStatusLine()


def test_an_apple_gpu_is_named_on_the_device_line_and_is_not_called_cpu_only():
    """A Mac's worker Python (status as ``dependencies.engineStatus`` reports an available MPS backend)."""
    mpsReady = {"torch": "2.9.0", "cuda": False, "mps": True, "device": "mps Apple GPU (MPS)", "missing": []}
    told = []
    presenter = SemiSupSegPresenter(StubLogic([MISSING, mpsReady], acceptInstall=True), PanelParameters())
    assert presenter.ensureDependencies(lambda message: True, lambda message, title: told.append(title))
    assert told == []  # no "CPU only" warning: training runs on the Apple GPU
    assert presenter.engineStatusLine() == "PyTorch 2.9.0 · GPU: Apple GPU (MPS)"


def test_the_method_list_keeps_a_saved_method_selectable():
    presenter = SemiSupSegPresenter(StubLogic([]), PanelParameters(method="an_old_method"))
    presenter.engineChecked({"status": READY, "methods": [("dycon", "DyCON"), ("supervised", "labelled only")]})
    assert presenter.methodItems() == [("dycon", "DyCON"), ("supervised", "labelled only"), ("an_old_method", "")]
    presenter.engineChecked({"status": READY, "methods": []})  # a failed listing keeps the last one
    assert [name for name, _unused in presenter.methodItems()][:2] == ["dycon", "supervised"]


def test_every_button_the_presenter_enables_exists_in_the_ui():
    """The widget sets ``<key>Button.enabled`` for every key of ``buttons()``: each must be in the .ui."""
    import re
    import xml.etree.ElementTree as ElementTree

    from conftest import MODULE_DIR

    names = {widget.get("name") for widget in ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "SemiSupSeg.ui").iter("widget")}
    source = (MODULE_DIR / "SemiSupSegLib" / "presenter.py").read_text(encoding="utf-8")
    keys = re.findall(r'"(\w+)":', source[source.index("    def buttons("):source.index("    def trainButtonText(")])
    assert {"removeCases", "export", "train", "nextRegion"} <= set(keys)
    assert [key for key in keys if key + "Button" not in names] == []


def test_a_folder_of_scans_adds_the_readable_volumes_and_names_the_others(mrml, tmp_path):
    import slicer

    from SemiSupSegLib.mrml_helpers import readVolumeFile

    SimpleITK = pytest.importorskip("SimpleITK")
    for name in ("a.nii.gz", "b.nrrd"):
        SimpleITK.WriteImage(SimpleITK.Image([8, 8, 4], SimpleITK.sitkFloat32), str(tmp_path / name))
    (tmp_path / "broken.mha").write_text("not an image")
    (tmp_path / "labels.seg.nrrd").write_text("skipped")

    def loadVolume(path):
        volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", pathlib.Path(path).name)
        try:
            readVolumeFile(path, volume)
        except Exception:
            mrml.scene.RemoveNode(volume)
            raise
        return volume

    presenter = SemiSupSegPresenter(SemiSupSegLogic(), PanelParameters(workspaceDir=tmp_path / "workspace"))
    seen = []
    with pytest.raises(PanelProblem, match=r"1 files could not be loaded:\nbroken.mha"):
        presenter.addFolder(tmp_path, loadVolume, lambda index, count, name: seen.append((index, count, name)) or True)
    assert seen == [(0, 3, "a.nii.gz"), (1, 3, "b.nrrd"), (2, 3, "broken.mha")]
    assert [row.name for row in presenter.tableRows()] == ["a.nii.gz", "b.nrrd"]
    assert isinstance(presenter.cases()[0], slicer.vtkMRMLScalarVolumeNode)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PanelProblem, match="No volume files"):
        presenter.addFolder(tmp_path / "empty", loadVolume)
