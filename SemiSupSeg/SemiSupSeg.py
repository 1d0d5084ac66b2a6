"""SemiSupSeg: semi-supervised 3D segmentation with an annotation loop (the Slicer module).

This file is the GUI layer only (docs/DESIGN.md, "Three layers"): the module description, the
parameter node, the widget (Resources/UI/SemiSupSeg.ui bound to the parameter node, timers) and
the test that runs inside Slicer. Work on nodes and files is done by SemiSupSegLib (Qt-free); the
training itself runs in a separate worker process (the ``semisupseg`` engine), never in Slicer's
GUI thread.

``from __future__ import annotations`` is deliberately not used: parameterNodeWrapper reads the
field annotations of SemiSupSegParameterNode when the class is created.
"""

import functools
import pathlib
import threading
import traceback
from typing import Annotated

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SemiSupSegLib import SemiSupSegLogic, TrainingJob  # noqa: F401 (TrainingJob: for scripting)
from SemiSupSegLib.in_slicer_checks import AnnotationLoopChecks
from SemiSupSegLib.presenter import TRAINING, PanelProblem, SemiSupSegPresenter
from SemiSupSegLib.panel import ParameterNodeGuiBinding, PathField, patchSizeProblem  # noqa: F401
from SemiSupSegLib.panel_text import (  # noqa: F401 (re-exported: scripts and tests use them from here)
    CaseSummary,
    caseStateText,
    classNamesFromSegments,
    engineStatusText,
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
    VOLUME_FILE_EXTENSIONS,
)

MODULE_NAME = "SemiSupSeg"
HOMEPAGE = "https://github.com/semisupseg/SlicerSemiSupSeg"

DEVICES = ["auto", "cuda", "mps", "cpu"]  # the engine's --device choices (mps: an Apple GPU)
EXPORT_FORMATS = ["seg.nrrd", "nifti", "dicomseg"]
POLL_INTERVAL_MS = 500  # how often the widget drains the worker's events while training
ENGINE_STATUS_POLL_MS = 200
# Folder fields bound by hand (SemiSupSegLib.panel.PathField), not by connectGui: widget -> parameter.
PATH_FIELDS = {"workspacePathLineEdit": "workspaceDir", "exportDirectoryPathLineEdit": "exportDir"}


#
# SemiSupSeg
#


class SemiSupSeg(ScriptedLoadableModule):
    """Module description shown in Slicer (title, category, help, acknowledgements)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SemiSupSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SemiSupSeg contributors"]
        self.parent.helpText = _(
            "Label a few volumes in Segment Editor, mark them as labelled and click <b>Train</b>. A "
            "background process trains a network on the labelled <i>and</i> the unlabelled volumes "
            "(DyCON by default). Each volume's prediction arrives as an editable segmentation with a "
            "voxel uncertainty (entropy) overlay; <b>Next uncertain region</b> centres the views where the "
            "network is least sure. Correct there, accept, train again, then export .seg.nrrd, NIfTI or "
            "DICOM SEG."
        ) + f'<p>{_("Documentation")}: <a href="{HOMEPAGE}">{HOMEPAGE}</a></p>'
        self.parent.acknowledgementText = _(
            "DyCON: M. Assefa, M. Naseer, I. I. Ganapathi, S. S. Ali, M. L. Seghier, N. Werghi, "
            "\"DyCON: Dynamic Uncertainty-aware Consistency and Contrastive Learning for Semi-supervised "
            "Medical Image Segmentation\", CVPR 2025 (arXiv:2504.04566). "
            "Left atrium (LA) data: the 2018 Atrial Segmentation Challenge (Xiong et al., \"A global "
            "benchmark of algorithms for segmenting the left atrium from late gadolinium-enhanced cardiac "
            "magnetic resonance imaging\", Medical Image Analysis 67, 2021). "
            "Built on 3D Slicer, PyTorch and MONAI."
        )


#
# SemiSupSegParameterNode
#


@parameterNodeWrapper
class SemiSupSegParameterNode:
    """Everything the user chose, saved with the scene.

    workspaceDir - folder shared with the engine (dataset.json, images/, labels/, runs/).
    caseVolumes - the volumes of the case table, in table order. Each case's segmentation and
        labelled state are stored on its volume node by SemiSupSegLib (see case_nodes), so the
        logic and the table read the same values.
    method - training method, one of the engine's (`semisupseg methods`); not bound through the .ui
        because the combobox is filled from the engine at run time.
    iterations, batchLabelled - 0 = the engine's default for the device (GPU 6000 / CPU 300
        iterations; GPU 4 / CPU 2 patches). batchUnlabelled: -1 = default, 0 = labelled cases only.
    device - "auto" lets the engine use a CUDA GPU, else an Apple GPU (mps), else the CPU.
    patchX, patchY, patchZ - training patch (x, y, z) in voxels, multiples of 16; all 0 = automatic.
    predictEvery - iterations between intermediate predictions; 0 = only at the end.
    timeBudgetMin - train until this many minutes, prediction included (engine `time_budget_min`); 0 = none.
    largestStructureOnly - predictions keep only their largest connected group of structures (engine
        `postprocess: largest_foreground`); off by default, since it would drop one of two kidneys.
    averageFlips - predictions are the mean over the in-plane flips training uses (engine `tta: flips`),
        4x the prediction time; off by default.
    sliceBySlice - train a 2D U-Net run on every slice (engine `network: unet2d`) for thin-slab scans;
        off by default (the 3D U-Net, planned from the spacing).
    showUncertainty, uncertaintyOpacity - the entropy heat overlay in the slice views.
    trainFromScratch - Train again starts from random weights instead of the last run's final weights.
    keepTraining - the live loop: train until Stop (engine `iterations: 0`, `--continuous`), picking up
        accepted regions and new labels every `reload_every` iterations; `iterations` is then ignored.
    currentCase, currentRegionIndex - what the Review section shows (-1 = no region visited yet).
    lastRunId - the run whose results are shown and navigated.
    exportFormat, exportDir, exportOverwrite - the Export section.
    """

    workspaceDir: pathlib.Path
    caseVolumes: list[vtkMRMLScalarVolumeNode]
    method: str = "dycon"
    iterations: Annotated[int, WithinRange(0, 1_000_000)] = 0
    device: Annotated[str, Choice(DEVICES)] = "auto"
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 1337
    batchLabelled: Annotated[int, WithinRange(0, 64)] = 0
    batchUnlabelled: Annotated[int, WithinRange(-1, 64)] = -1
    patchX: Annotated[int, WithinRange(0, 1024)] = 0
    patchY: Annotated[int, WithinRange(0, 1024)] = 0
    patchZ: Annotated[int, WithinRange(0, 1024)] = 0
    predictEvery: Annotated[int, WithinRange(0, 1_000_000)] = 1000
    timeBudgetMin: Annotated[int, WithinRange(0, 10_000)] = 0
    largestStructureOnly: bool = False
    averageFlips: bool = False
    sliceBySlice: bool = False
    trainFromScratch: bool = False
    keepTraining: bool = True
    showUncertainty: bool = True
    uncertaintyOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4
    currentCase: vtkMRMLScalarVolumeNode
    currentRegionIndex: int = -1
    lastRunId: str = ""
    exportFormat: Annotated[str, Choice(EXPORT_FORMATS)] = "seg.nrrd"
    exportDir: pathlib.Path
    exportOverwrite: bool = False


def parameterMRMLNode():
    """The module's vtkMRMLScriptedModuleNode (a singleton in the scene, created on first use)."""
    holder = ScriptedLoadableModuleLogic()
    holder.moduleName = MODULE_NAME  # the singleton tag; the class name would give another one
    return holder.getParameterNode()


def getParameterNode() -> SemiSupSegParameterNode:
    """A typed wrapper of the module's parameter node (for scripts; the widget keeps its own, see
    ParameterNodeGuiBinding: a wrapper per module enter broke the GUI bindings in Slicer 5.8)."""
    return SemiSupSegParameterNode(parameterMRMLNode())


#
# SemiSupSegWidget
#


class SemiSupSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel. Humble: Qt signals become SemiSupSegPresenter calls, and the presenter's
    view state becomes widget properties (``_render``). Dialogs, the file picker, threads and
    timers stay here because they are Qt."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = self.presenter = self._binding = self._pollTimer = None
        self._parameterNode = None
        self._pathFields = {}  # ctkPathLineEdit -> PathField
        self._updatingTable = False
        self._tableSignature = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SemiSupSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SemiSupSegLogic()
        self.presenter = SemiSupSegPresenter(self.logic, None, fitViews=slicer.util.resetSliceViews)
        self._binding = ParameterNodeGuiBinding(SemiSupSegParameterNode, self.ui)
        self._setupPathFields()
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._onPollTimer)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        table = self.ui.casesTableWidget
        table.horizontalHeader().setSectionResizeMode(0, qt.QHeaderView.Stretch)
        table.horizontalHeader().setSectionResizeMode(1, qt.QHeaderView.Stretch)
        table.connect("itemChanged(QTableWidgetItem*)", self.onCaseItemChanged)
        table.connect("itemSelectionChanged()", self.onCaseSelectionChanged)
        presenter = self.presenter
        for button, handler in (
            ("addSceneVolumes", presenter.addSceneVolumes), ("addFolder", self.onAddFolder),
            ("removeCases", lambda: presenter.removeCases(self._selectedVolumes())),
            ("markLabelled", lambda: presenter.setLabelled(self._selectedVolumes(), True)),
            ("markUnlabelled", lambda: presenter.setLabelled(self._selectedVolumes(), False)),
            ("train", self.onTrainButton), ("showLog", self.onShowLog),
            ("previousRegion", lambda: presenter.stepRegion(-1)), ("nextRegion", lambda: presenter.stepRegion(+1)),
            ("acceptRegion", presenter.acceptRegion), ("predictNow", presenter.predictNow),
            ("loadNewerPrediction", presenter.loadNewerPrediction), ("acceptPrediction", presenter.acceptPrediction),
            ("loadResults", presenter.loadResults), ("export", self.onExport),
        ):
            # the lambda takes clicked(bool)'s argument; no wait cursor over the dialogs of Train and Add folder
            busy = handler not in (self.onTrainButton, self.onAddFolder)
            getattr(self.ui, button + "Button").connect("clicked(bool)", lambda checked=False, h=handler, b=busy: self._call(h, busy=b))
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.errorFrame.hide()
        self.ui.trainingProgressBar.hide()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Stops a running worker (it must not keep the GPU busy after Slicer has gone)."""
        if self.presenter is not None:
            self.presenter.requestStop()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self._binding is not None:
            self._binding.release()
        self.removeObservers()

    def enter(self) -> None:
        """The first time, the torch / device check starts in the background (a short Python process)."""
        self.initializeParameterNode()
        if self.presenter.engineStatus is None:
            self._startEngineStatusCheck()

    def exit(self) -> None:
        """The GUI stays connected (one connectGui per parameter node, see ParameterNodeGuiBinding); a
        running training and its polling go on while another module (e.g. Segment Editor) is open."""

    def onSceneStartClose(self, caller, event) -> None:
        """A running training is stopped (it keeps its checkpoint): its volumes are about to go."""
        self.presenter.requestStop(self._inBackground)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Bind the parameter node (once per node); fill the default folders of a new one."""
        self.setParameterNode(parameterMRMLNode())
        if self._binding.newlyBound:
            self.presenter.fillDefaultFolders(slicer.app.defaultScenePath)

    def setParameterNode(self, mrmlNode) -> None:
        wrapper = self._binding.bind(mrmlNode)
        if wrapper is self._parameterNode:
            return
        if self._parameterNode:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = wrapper
        self._tableSignature = None
        self.presenter.setParameters(wrapper)
        if wrapper:
            self.addObserver(wrapper, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self._render()

    def _setupPathFields(self) -> None:
        """Folder fields bound by hand (PathField; issue 20, bug 6): the .ui gives them no
        SlicerParameterName, so connectGui leaves them alone."""
        for widgetName, name in PATH_FIELDS.items():
            widget = getattr(self.ui, widgetName)
            field = PathField(lambda name=name: getattr(self._parameterNode, name) if self._parameterNode else None,
                              lambda path, name=name: self._parameterNode and setattr(self._parameterNode, name, path))
            self._pathFields[widget] = field
            widget.connect("currentPathChanged(QString)", field.onTextChanged)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode is not None:
            self.presenter.followDisplaySettings()
            self._render()

    def _call(self, action, *args, busy: bool = True) -> None:
        """Run a presenter action: a PanelProblem is a warning (the user can fix it), anything else an error."""
        try:
            with slicer.util.WaitCursor(busy):
                action(*args)
        except PanelProblem as problem:
            slicer.util.warningDisplay(str(problem), windowTitle=problem.title or _("SemiSupSeg"))
        except Exception as error:
            slicer.util.errorDisplay(_("Failed: {error}").format(error=error), detailedText=traceback.format_exc())
        self._render()

    def _render(self) -> None:
        presenter, ui = self.presenter, self.ui
        if self._parameterNode is None:
            return
        self._syncMethodComboBox()
        for widget, field in self._pathFields.items():
            text = field.textToShow(widget.currentPath)
            if text is not None:  # a change made elsewhere; the text being typed is never rewritten
                wasBlocked = widget.blockSignals(True)
                widget.currentPath = text
                widget.blockSignals(wasBlocked)
        self._updateCasesTable()
        ui.classNamesLabel.text = presenter.classNamesText()
        ui.engineStatusLabel.text = presenter.engineStatusLine()
        ui.regionLabel.text = presenter.regionText()
        for name, enabled in presenter.buttons().items():
            getattr(ui, name + "Button").enabled = enabled
        ui.trainButton.text = presenter.trainButtonText()
        progress = presenter.progress
        ui.trainingProgressBar.maximum, ui.trainingProgressBar.value = progress.maximum, progress.value
        ui.trainingProgressBar.visible = progress.visible
        ui.progressLabel.text = progress.text
        ui.errorFrame.visible = presenter.error is not None
        if presenter.error:
            ui.errorMessageLabel.text = presenter.error.get("message", "")
            ui.errorHintLabel.text = presenter.error.get("hint", "")
        while presenter.statusMessages:
            slicer.util.showStatusMessage(*presenter.statusMessages.pop(0))

    def _updateCasesTable(self) -> None:
        rows = self.presenter.tableRows()
        signature = tuple((row.volume.GetID(), row.name, row.segmentation.GetID() if row.segmentation else None,
                           row.labelled, row.scoreText, row.stateText) for row in rows)
        if signature == self._tableSignature:
            return
        self._tableSignature = signature
        table, self._updatingTable = self.ui.casesTableWidget, True
        try:
            table.setRowCount(len(rows))
            for index, row in enumerate(rows):
                for column, text in ((0, row.name), (3, row.scoreText), (4, row.stateText)):
                    item = qt.QTableWidgetItem(text)
                    item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                    table.setItem(index, column, item)
                table.setCellWidget(index, 1, self._segmentationSelector(row.volume, row.segmentation))
                labelledItem = qt.QTableWidgetItem()
                labelledItem.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
                labelledItem.setCheckState(qt.Qt.Checked if row.labelled else qt.Qt.Unchecked)
                table.setItem(index, 2, labelledItem)
                if row.volume is self._parameterNode.currentCase:
                    table.selectRow(index)
        finally:
            self._updatingTable = False

    def _segmentationSelector(self, volume, segmentation):
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = ["vtkMRMLSegmentationNode"]
        selector.noneEnabled, selector.addEnabled, selector.removeEnabled, selector.renameEnabled = True, False, False, False
        selector.showHidden = False
        selector.selectNodeUponCreation = False  # a new segmentation elsewhere must not re-assign this case
        selector.setMRMLScene(slicer.mrmlScene)
        selector.setCurrentNode(segmentation)
        selector.setToolTip(_("The segmentation that holds this case's labels."))
        selector.connect("currentNodeChanged(vtkMRMLNode*)", functools.partial(self.onCaseSegmentationChanged, volume))
        return selector

    def _selectedVolumes(self) -> list:
        rows = sorted({index.row() for index in self.ui.casesTableWidget.selectionModel().selectedRows()})
        cases = self.presenter.cases()
        return [cases[row] for row in rows if row < len(cases)]

    def onCaseItemChanged(self, item) -> None:
        """The Labelled checkbox of a row was clicked."""
        cases = self.presenter.cases()
        if not self._updatingTable and item.column() == 2 and item.row() < len(cases):
            self._tableSignature = None  # a refused tick must be unticked again
            self._call(self.presenter.setLabelled, [cases[item.row()]], item.checkState() == qt.Qt.Checked)

    def onCaseSegmentationChanged(self, volume, segmentationNode) -> None:
        if not self._updatingTable:
            self._call(self.presenter.setSegmentation, volume, segmentationNode)

    def onCaseSelectionChanged(self) -> None:
        selected = self._selectedVolumes()
        if not self._updatingTable and self._parameterNode is not None and selected:
            self._call(self.presenter.selectCase, selected[0])

    def onAddFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Folder of scans"), str(pathlib.Path(self._parameterNode.workspaceDir).parent))
        if not folder:
            return
        dialog = slicer.util.createProgressDialog(parent=slicer.util.mainWindow(), labelText=_("Loading scans..."),
                                                  windowTitle=_("SemiSupSeg"))

        def progress(index: int, count: int, name: str) -> bool:
            dialog.maximum, dialog.value, dialog.labelText = count, index, name
            slicer.app.processEvents()
            return not dialog.wasCanceled

        try:
            self.presenter.addFolder(folder, lambda path: slicer.util.loadVolume(path, {"show": False}), progress)
        finally:
            dialog.close()

    def onMethodChanged(self, index: int) -> None:
        name = self.ui.methodComboBox.itemText(index) if index >= 0 else ""
        if self._parameterNode is not None and name and name != self._parameterNode.method:
            self._parameterNode.method = name

    def _syncMethodComboBox(self) -> None:
        combo, items = self.ui.methodComboBox, self.presenter.methodItems()
        wasBlocked = combo.blockSignals(True)
        if [combo.itemText(i) for i in range(combo.count)] != [name for name, _unused in items]:
            combo.clear()
            for name, description in items:
                combo.addItem(name)
                combo.setItemData(combo.count - 1, description, qt.Qt.ToolTipRole)
        combo.currentIndex = combo.findText(self._parameterNode.method)
        combo.blockSignals(wasBlocked)

    def _startEngineStatusCheck(self) -> None:
        """The presenter's engine check (short child processes) in a thread; a timer collects it."""
        if self.presenter.checkingEngine:
            return
        self.presenter.checkingEngine = True
        result = {}
        thread = threading.Thread(target=lambda: result.update(self.presenter.checkEngine()), daemon=True)
        thread.start()

        def collect():
            if thread.is_alive():
                qt.QTimer.singleShot(ENGINE_STATUS_POLL_MS, collect)
                return
            self.presenter.engineChecked(result)
            self._render()

        qt.QTimer.singleShot(ENGINE_STATUS_POLL_MS, collect)
        self._render()

    def _ensureDependencies(self) -> bool:
        return self.presenter.ensureDependencies(
            lambda message: slicer.util.confirmOkCancelDisplay(message, windowTitle=_("Install SemiSupSeg dependencies")),
            lambda message, title: slicer.util.infoDisplay(message, windowTitle=title))

    @staticmethod
    def _inBackground(stop) -> None:
        """``TrainingJob.stop`` waits for the checkpoint: never in the GUI thread."""
        threading.Thread(target=stop, name="SemiSupSeg stop worker", daemon=True).start()

    def onTrainButton(self) -> None:
        self.ui.workspacePathLineEdit.addCurrentPathToHistory()  # settingKey keeps only what is added
        if self.presenter.onTrainButton(self._ensureDependencies, self._inBackground) == TRAINING:
            self._pollTimer.start()

    def _onPollTimer(self) -> None:
        """Drain the worker's events (predictions load as they come) until it has ended."""
        if not self.presenter.poll():
            self._pollTimer.stop()
        self._render()

    def onShowLog(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.presenter.workerLogPath())))

    def onExport(self) -> None:
        self.ui.exportDirectoryPathLineEdit.addCurrentPathToHistory()
        self.ui.exportStatusLabel.text = self.presenter.export()


#
# SemiSupSegTest
#


class SemiSupSegTest(ScriptedLoadableModuleTest, AnnotationLoopChecks):
    """Runs inside Slicer (``Slicer --testing``, or Reload and Test in developer mode): the widget
    against its parameter node, then the whole annotation loop (SemiSupSegLib.in_slicer_checks)."""

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()
        import tempfile
        self.tempDir = tempfile.mkdtemp(prefix="SemiSupSegTest-", dir=slicer.app.temporaryPath)

    def tearDown(self):
        import shutil
        shutil.rmtree(self.tempDir, ignore_errors=True)

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        try:
            self.test_WidgetBindsParameterNode()
        finally:
            self.tearDown()
        self.setUp()
        try:
            self.test_AnnotationLoop()
        finally:
            self.tearDown()

    def test_WidgetBindsParameterNode(self):
        """The .ui loads and its widgets follow the parameter node (both directions)."""
        self.delayDisplay("Widget and parameter node")
        slicer.util.selectModule(MODULE_NAME)
        widget = slicer.modules.semisupseg.widgetRepresentation().self()
        parameters = getParameterNode()
        self.assertEqual(widget.ui.trainButton.text, "Train")
        parameters.iterations = 1234
        self.assertEqual(widget.ui.iterationsSpinBox.value, 1234)
        widget.ui.timeBudgetSpinBox.value = 20
        self.assertEqual(trainingConfig(parameters)["time_budget_min"], 20)
        widget.ui.largestStructureOnlyCheckBox.checked = True
        self.assertEqual(trainingConfig(parameters)["postprocess"], "largest_foreground")
        widget.ui.averageFlipsCheckBox.checked = True
        self.assertEqual(trainingConfig(parameters)["tta"], "flips")
        widget.ui.sliceBySliceCheckBox.checked = True
        self.assertEqual(trainingConfig(parameters)["network"], "unet2d")
        widget.ui.showUncertaintyCheckBox.checked = False
        self.assertFalse(parameters.showUncertainty)
        widget.ui.deviceComboBox.currentIndex = DEVICES.index("cpu")
        self.assertEqual(parameters.device, "cpu")
        parameters.method = "mean_teacher"
        self.assertEqual(widget.ui.methodComboBox.currentText, "mean_teacher")
        slicer.util.selectModule("Data")  # leave and enter again: Slicer 5.8 used to reset Device here
        slicer.util.selectModule(MODULE_NAME)
        self.assertEqual((parameters.device, widget.ui.deviceComboBox.currentText), ("cpu", "cpu"))
        problems = validateTrainingInputs(parameters.workspaceDir, widget.presenter.caseSummaries())
        self.assertTrue(any("Add volumes" in problem for problem in problems), problems)
        self.delayDisplay("Widget test passed")
