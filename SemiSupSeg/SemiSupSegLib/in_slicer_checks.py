"""The annotation loop checked inside real Slicer: the body of ``SemiSupSegTest`` (SemiSupSeg.py).

A mixin for a ``unittest.TestCase`` (``ScriptedLoadableModuleTest``: ``delayDisplay``, ``tempDir``):
the whole loop on a tiny synthetic scene with the real worker process (workspace, a 4-iteration CPU
training, results as nodes with the overlay display, region navigation, accepting a prediction,
export). It runs with ``Slicer --testing``; headless, the same steps are covered by
Testing/slicer_logic (test_worker_run.py, test_presenter.py). Kept here, Qt-free, so that the GUI
file stays small. The training part needs torch in Slicer's Python; without it that part is
reported and skipped, unless SEMISUPSEG_TEST_REQUIRE_TORCH=1 (CI with torch) makes it fail.
"""

from __future__ import annotations

import logging
import math
import os

import slicer

from . import case_nodes
from .logic import SemiSupSegLogic
from .panel_text import segmentNamesOf


class AnnotationLoopChecks:
    """``test_AnnotationLoop`` and its helpers, for a TestCase that has ``tempDir`` and ``delayDisplay``."""

    FAST_CONFIG = {
        "method": "supervised", "iterations": 4, "device": "cpu", "seed": 0,
        "network_options": {"widths": [4, 8, 16, 32, 64]}, "patch_size": [32, 32, 16],
    }

    # -- scene ----------------------------------------------------------------------------

    def _syntheticCase(self, name: str, centre, withSegmentation: bool):
        """A 40x40x20 volume (spacing 1 x 1 x 2 mm) with a bright ellipsoid; optionally its segmentation."""
        import numpy as np

        shape_kji = (20, 40, 40)
        k, j, i = np.indices(shape_kji)
        ellipsoid = ((i - centre[0]) / 9.0) ** 2 + ((j - centre[1]) / 7.0) ** 2 + ((k - centre[2]) / 4.0) ** 2 <= 1.0
        rng = np.random.default_rng(sum(map(ord, name)))
        image = (100.0 + 200.0 * ellipsoid + rng.normal(0.0, 10.0, shape_kji)).astype(np.float32)
        volume = slicer.util.addVolumeFromArray(image, name=name)
        volume.SetSpacing(1.0, 1.0, 2.0)
        if not withSegmentation:
            return volume, None, None
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("blob", "blob")
        mask = ellipsoid.astype(np.uint8)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segmentId, volume)
        return volume, segmentation, mask

    # -- tests ----------------------------------------------------------------------------

    def test_AnnotationLoop(self):
        import json

        import numpy as np

        logic = SemiSupSegLogic()
        workspace = os.path.join(self.tempDir, "workspace")
        self.delayDisplay("Building a tiny scene")
        volumeA, segmentationA, maskA = self._syntheticCase("caseA", (20, 20, 10), withSegmentation=True)
        volumeB, _unused, _mask = self._syntheticCase("caseB", (18, 22, 9), withSegmentation=False)

        summary = logic.writeWorkspace(workspace, [(volumeA, segmentationA, True), (volumeB, None, False)])
        self.assertEqual((summary["cases"], summary["labelled"]), (2, 1))
        with open(os.path.join(workspace, "dataset.json"), encoding="utf-8") as stream:
            dataset = json.load(stream)
        self.assertEqual(dataset["labels"], {"0": "background", "1": "blob"})
        caseA, caseB = case_nodes.caseIdOf(volumeA), case_nodes.caseIdOf(volumeB)
        self.assertTrue(caseA and caseB and caseA != caseB)
        again = logic.writeWorkspace(workspace, [(volumeA, segmentationA, True), (volumeB, None, False)])
        self.assertEqual(again["written"], [], "an unchanged scene must not rewrite any file")

        status = logic.engineStatus()
        if not status.get("torch"):
            message = "torch is not installed in Slicer's Python: the training part of SemiSupSegTest was skipped"
            if os.environ.get("SEMISUPSEG_TEST_REQUIRE_TORCH") == "1":
                self.fail(message)
            logging.warning(message)
            self.delayDisplay(message)
            return

        self.delayDisplay("Training 4 iterations on the CPU")
        job = logic.startTraining(workspace, dict(self.FAST_CONFIG))
        events = self._waitForJob(job, timeoutSeconds=600)
        self.assertEqual(job.state, "finished", job.error)
        predicted = {event["case"] for event in events if event.get("event") == "prediction"}
        self.assertEqual(predicted, {caseA, caseB})

        self.delayDisplay("Loading results")
        results = logic.loadResults(workspace, job.runId)
        self.assertEqual(set(results), {caseA, caseB})
        for caseId, volume in ((caseA, volumeA), (caseB, volumeB)):
            self._checkResultNodes(results[caseId], volume)
        compositeNodes = [slicer.mrmlScene.GetNodeByID(f"vtkMRMLSliceCompositeNode{view}") for view in ("Red", "Green", "Yellow")]
        foregroundIds = {node.GetForegroundVolumeID() for node in compositeNodes}
        self.assertEqual(len(foregroundIds), 1)
        self.assertIn(foregroundIds.pop(), {results[c]["uncertainty"].GetID() for c in results})
        for node in compositeNodes:
            self.assertAlmostEqual(node.GetForegroundOpacity(), 0.4, places=2)
        # The user's own segmentation is never changed by loading results.
        self.assertEqual(segmentNamesOf(segmentationA), ["blob"])
        userMask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationA, "blob", volumeA)
        np.testing.assert_array_equal(userMask, maskA)

        scores = logic.caseScores(workspace, job.runId)
        self.assertEqual(set(scores), {caseA, caseB})
        self.assertTrue(all(math.isfinite(score) for score in scores.values()))

        self.delayDisplay("Jumping to an uncertain region")
        regions = logic.regions(workspace, job.runId, caseA) + logic.regions(workspace, job.runId, caseB)
        self.assertTrue(regions, "a 4-iteration network is uncertain somewhere")
        logic.jumpToRegion(regions[0])
        centre = logic.regionCenterRAS(regions[0])
        for view in ("Red", "Green", "Yellow"):
            sliceToRAS = slicer.mrmlScene.GetNodeByID(f"vtkMRMLSliceNode{view}").GetSliceToRAS()
            normal = [sliceToRAS.GetElement(row, 2) for row in range(3)]
            origin = [sliceToRAS.GetElement(row, 3) for row in range(3)]
            distance = sum(n * (c - o) for n, c, o in zip(normal, centre, origin))
            self.assertLess(abs(distance), 1.0, f"{view} slice does not pass through the region centre")

        self.delayDisplay("Accepting a prediction")
        accepted = logic.acceptPrediction(volumeB)
        self.assertIsInstance(accepted, slicer.vtkMRMLSegmentationNode)
        self.assertIsNot(accepted, results[caseB]["segmentation"])
        self.assertTrue(case_nodes.isLabelled(volumeB))

        self.delayDisplay("Exporting")
        exportDir = os.path.join(self.tempDir, "export")
        paths = logic.exportSegmentations(exportDir, format="seg.nrrd")
        self.assertTrue(paths)
        for path in paths:
            self.assertTrue(path.endswith(".seg.nrrd") and os.path.isfile(path), path)
        with self.assertRaises(FileExistsError):  # refuses to overwrite
            logic.exportSegmentations(exportDir, format="seg.nrrd")
        self.assertEqual(sorted(logic.exportSegmentations(exportDir, format="seg.nrrd", overwrite=True)), sorted(paths))
        reloaded = [segmentNamesOf(slicer.util.loadSegmentation(path)) for path in paths]
        self.assertTrue(any("blob" in names for names in reloaded), reloaded)
        self.delayDisplay("Annotation loop test passed")

    def _waitForJob(self, job, timeoutSeconds: float) -> list:
        """Poll like the widget does (events drained while Slicer keeps processing its own)."""
        import time

        events, deadline = [], time.monotonic() + timeoutSeconds
        while job.state in ("starting", "running"):
            if time.monotonic() > deadline:
                job.stop()
                self.fail(f"training did not finish within {timeoutSeconds} s")
            events += job.pollEvents()
            slicer.app.processEvents()
            time.sleep(0.2)
        return events + job.pollEvents()

    def _checkResultNodes(self, nodes: dict, volume) -> None:
        import numpy as np

        segmentation, uncertainty = nodes["segmentation"], nodes["uncertainty"]
        self.assertIsInstance(segmentation, slicer.vtkMRMLSegmentationNode)
        self.assertEqual(segmentation.GetName(), f"{volume.GetName()} prediction")
        geometryRole = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        self.assertEqual(segmentation.GetNodeReferenceID(geometryRole), volume.GetID())
        self.assertIsInstance(uncertainty, slicer.vtkMRMLScalarVolumeNode)
        self.assertEqual(uncertainty.GetName(), f"{volume.GetName()} uncertainty")
        values = slicer.util.arrayFromVolume(uncertainty)
        self.assertEqual(values.shape, slicer.util.arrayFromVolume(volume).shape)
        self.assertGreaterEqual(float(values.min()), 0.0)
        self.assertLessEqual(float(values.max()), 1.0)
        display = uncertainty.GetDisplayNode()
        self.assertFalse(display.GetAutoWindowLevel())
        self.assertAlmostEqual(display.GetWindowLevelMin(), 0.0)
        self.assertAlmostEqual(display.GetWindowLevelMax(), 1.0)
        self.assertTrue(display.GetApplyThreshold())
        self.assertGreater(display.GetLowerThreshold(), 0.0)
        colorId = display.GetColorNodeID() or ""
        self.assertIn("CoolTint1", colorId)  # the heat table Slicer ships (results_loader.HEAT_COLOR_NODE_IDS)
        self.assertTrue(np.isfinite(values).all())
