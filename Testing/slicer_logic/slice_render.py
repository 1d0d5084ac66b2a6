"""Headless renders of Slicer's Red/Yellow/Green slice views, for pixel tests and screenshots.

The pictures are drawn by Slicer's own C++ view code from the ``slicer-core`` wheel: each view's
``vtkMRMLSliceLogic`` reslices, colour-maps, thresholds and blends the background and foreground
volumes, and the segmentations displayable manager draws the segments' outline and fill on top
(see ``../shared/docs/reference/slice-render.md``). What is missing next to the application is
Qt: no view controllers, annotations or orientation labels, only the slice contents.

Rendering goes offscreen through EGL (Mesa's software renderer where there is no GPU), chosen
before VTK makes its first window: ``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow``. Whether that
works is checked in a child process (``renderingUnavailableReason``) so that a machine without EGL
skips the tests instead of crashing the test process.

Pixel coordinates: images are ``(rows, columns, 3)`` uint8 arrays with row 0 at the top, like the
PNG; ``pixelToRAS`` maps them back to the RAS points whose colours they show.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np  # noqa: E402

VIEW_ORIENTATIONS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
# Displayable managers Slicer's slice views register that draw scene content (crosshair, ruler and
# orientation marker are off by default in Slicer and left out).
SLICE_DISPLAYABLE_MANAGERS = (
    "vtkMRMLSegmentationsDisplayableManager2D",
    "vtkMRMLModelSliceDisplayableManager",
)

_PROBE = """
import os
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
window.SetSize(8, 8)
renderer = vtk.vtkRenderer()
renderer.SetBackground(1.0, 0.0, 0.0)
window.AddRenderer(renderer)
window.Render()
grab = vtk.vtkWindowToImageFilter()
grab.SetInput(window)
grab.ReadFrontBufferOff()
grab.Update()
print(window.GetClassName(), grab.GetOutput().GetPointData().GetScalars().GetTuple(0)[0])
"""


@lru_cache(maxsize=1)
def renderingUnavailableReason() -> str | None:
    """None when an offscreen VTK window renders here, else why not (run once, in a child process,
    because a failing OpenGL set-up can abort the process that tries it)."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
            env={**os.environ, "VTK_DEFAULT_OPENGL_WINDOW": os.environ["VTK_DEFAULT_OPENGL_WINDOW"]},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"offscreen rendering probe failed: {error}"
    lines = probe.stdout.strip().splitlines()
    if probe.returncode != 0 or not lines or not lines[-1].endswith("255.0"):
        detail = re.sub(r"\x1b\[[0-9;]*m", "", (probe.stderr.strip().splitlines() or ["no output"])[-1])
        return f"no offscreen OpenGL (EGL/Mesa) rendering here: exit code {probe.returncode}, {detail}"
    return None


class SliceViews:
    """Offscreen slice views over a scene, one per layout name (``"Red"``, ``"Yellow"``, ``"Green"``).

    Each view is what ``qMRMLSliceView`` holds in the application, minus Qt: a render window with
    two layers, the slice logic's blended RGBA image drawn by a ``vtkImageMapper`` (window 255,
    level 127.5) on layer 0 and the displayable managers' actors on layer 1, so segments are drawn
    over the volumes whatever order nodes arrive in. Existing slice nodes of the same layout name
    (and their composite nodes) are used, so what the module sets on them is what is drawn.

    Use as a context manager, or call ``close()``: it detaches the logics from the scene.
    """

    def __init__(self, scene, appLogic, views=tuple(VIEW_ORIENTATIONS), size=(256, 256)):
        import slicer
        import vtk

        self.scene, self.appLogic, self.size = scene, appLogic, (int(size[0]), int(size[1]))
        if appLogic.GetSliceLogics() is None:
            appLogic.SetSliceLogics(vtk.vtkCollection())
        if appLogic.GetViewLogics() is None:
            appLogic.SetViewLogics(vtk.vtkCollection())
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(appLogic)
        for name in SLICE_DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
        self._views = {name: self._makeView(name, factory) for name in views}

    def _makeView(self, name: str, factory) -> dict:
        import slicer
        import vtk

        window = vtk.vtkRenderWindow()
        window.SetOffScreenRendering(1)
        window.SetSize(*self.size)
        window.SetNumberOfLayers(2)
        # The segmentations displayable manager reaches for the interactor; Slicer's views have one.
        interactor = vtk.vtkGenericRenderWindowInteractor()
        interactor.SetRenderWindow(window)
        imageRenderer, overlayRenderer = vtk.vtkRenderer(), vtk.vtkRenderer()
        for layer, renderer in enumerate((imageRenderer, overlayRenderer)):
            renderer.SetLayer(layer)
            renderer.GetActiveCamera().ParallelProjectionOn()
            window.AddRenderer(renderer)
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(self.appLogic)
        self.appLogic.GetSliceLogics().AddItem(logic)
        logic.SetMRMLScene(self.scene)
        sliceNode = self.scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        if sliceNode is not None:
            logic.SetSliceNode(sliceNode)
        else:
            sliceNode = logic.AddSliceNode(name)
        if name in VIEW_ORIENTATIONS:
            self._orient(sliceNode, VIEW_ORIENTATIONS[name])
        managers = slicer.vtkMRMLDisplayableManagerGroup()
        managers.Initialize(factory, overlayRenderer)
        managers.SetMRMLDisplayableNode(sliceNode)
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        imageActor = vtk.vtkActor2D()
        imageActor.SetMapper(mapper)
        imageRenderer.AddViewProp(imageActor)
        logic.ResizeSliceNode(*self.size)
        return {"window": window, "interactor": interactor, "renderers": (imageRenderer, overlayRenderer),
                "logic": logic, "sliceNode": sliceNode, "managers": managers, "mapper": mapper, "actor": imageActor}

    @staticmethod
    def _orient(sliceNode, orientation: str) -> None:
        """Orient the view as Slicer's layout does (radiological: patient right on screen left).
        A slice node made before the scene had orientation presets has none, and would keep an
        identity SliceToRAS; it gets Slicer's standard presets first."""
        import slicer
        import vtk

        standard = {"Axial": slicer.vtkMRMLSliceNode.GetAxialSliceToRASMatrix,
                    "Sagittal": slicer.vtkMRMLSliceNode.GetSagittalSliceToRASMatrix,
                    "Coronal": slicer.vtkMRMLSliceNode.GetCoronalSliceToRASMatrix}
        for name, fill in standard.items():
            if not sliceNode.HasSliceOrientationPreset(name):
                matrix = vtk.vtkMatrix3x3()
                fill(matrix, True)
                sliceNode.AddSliceOrientationPreset(name, matrix)
        sliceNode.SetOrientation(orientation)

    # -- view control --------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._views)

    def sliceNode(self, name: str):
        return self._views[name]["sliceNode"]

    def sliceLogic(self, name: str):
        return self._views[name]["logic"]

    def fitToBackground(self) -> None:
        """What Slicer does when a volume is first shown: fit the field of view to the background
        volume and put the slice on a voxel centre. ``loadResults`` does not fit; a caller must."""
        for view in self._views.values():
            view["logic"].ResizeSliceNode(*self.size)
            view["logic"].FitSliceToBackground()
            view["logic"].SnapSliceOffsetToIJK()

    def jumpTo(self, pointRAS) -> None:
        """Move every view's slice through ``pointRAS`` (centred), then onto the nearest voxel centre."""
        import slicer

        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, *[float(c) for c in pointRAS],
                                              slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        self.snapToVoxels()

    def snapToVoxels(self) -> None:
        """Put every view's slice on the nearest voxel centre (as Slicer's views do after a jump)."""
        for view in self._views.values():
            view["logic"].SnapSliceOffsetToIJK()

    # -- pictures ------------------------------------------------------------------------------

    def render(self, name: str) -> np.ndarray:
        """The view's pixels, ``(rows, columns, 3)`` uint8, row 0 at the top."""
        import vtk
        from vtk.util import numpy_support

        view = self._views[name]
        connection = view["logic"].GetImageDataConnection()  # None until a layer has a volume
        view["actor"].SetVisibility(connection is not None)
        if connection is not None:
            view["mapper"].SetInputConnection(connection)
        view["window"].Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(view["window"])
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        columns, rows, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1)
        return np.ascontiguousarray(pixels[::-1, :, :3])  # VTK's rows start at the bottom

    def renderAll(self) -> dict[str, np.ndarray]:
        return {name: self.render(name) for name in self._views}

    def pixelToRAS(self, name: str, rows, columns) -> np.ndarray:
        """RAS points ``(N, 3)`` drawn at the given pixels (row 0 at the top). The slice logic
        resamples pixel ``(x, y)`` (y from the bottom) at ``XYToRAS @ (x, y, 0, 1)``."""
        import slicer

        matrix = slicer.util.arrayFromVTKMatrix(self._views[name]["sliceNode"].GetXYToRAS())
        rows, columns = np.broadcast_arrays(np.asarray(rows, float).ravel(), np.asarray(columns, float).ravel())
        xy = np.stack([columns, self.size[1] - 1 - rows, np.zeros_like(rows), np.ones_like(rows)])
        return (matrix @ xy)[:3].T

    def close(self) -> None:
        for view in self._views.values():
            view["managers"].SetMRMLDisplayableNode(None)
            view["renderers"][1].RemoveAllViewProps()
            self.appLogic.GetSliceLogics().RemoveItem(view["logic"])
            view["logic"].SetMRMLScene(None)
            view["window"].Finalize()
        self._views = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# -- helpers for tests and screenshots --------------------------------------------------------------

def sampleArrayAt(volumeNode, array, pointsRAS) -> np.ndarray:
    """Values of a ``(k, j, i)`` array on ``volumeNode``'s grid (the node's own array when ``array`` is
    None) at RAS points ``(N, 3)``: nearest voxel, NaN outside; any parent transform is ignored.
    Used to say what a pixel should show."""
    import slicer
    import vtk

    if array is None:
        array = slicer.util.arrayFromVolume(volumeNode)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(matrix)
    rasToIjk = slicer.util.arrayFromVTKMatrix(matrix)
    points = np.c_[np.asarray(pointsRAS, float), np.ones(len(pointsRAS))]
    ijk = np.rint((rasToIjk @ points.T)[:3].T).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(array.shape[::-1])), axis=1)
    values = np.full(len(ijk), np.nan)
    values[inside] = array[ijk[inside, 2], ijk[inside, 1], ijk[inside, 0]]
    return values


def sideBySide(images, gap: int = 4, gapColour=(40, 40, 40)) -> np.ndarray:
    """Images of equal height in one row, separated by ``gap`` pixels."""
    images = list(images)
    rows = images[0].shape[0]
    spacer = np.empty((rows, gap, 3), np.uint8)
    spacer[:] = gapColour
    parts = []
    for index, image in enumerate(images):
        if index:
            parts.append(spacer)
        parts.append(image)
    return np.concatenate(parts, axis=1)


def writePng(pixels: np.ndarray, path) -> Path:
    """Write ``(rows, columns, 3)`` uint8 pixels (row 0 at the top) as a PNG, atomically."""
    import vtk
    from vtk.util import numpy_support

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, columns, _ = pixels.shape
    image = vtk.vtkImageData()
    image.SetDimensions(columns, rows, 1)
    flat = np.ascontiguousarray(pixels[::-1]).reshape(-1, 3)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    temporary = path.with_name(f".{path.name}.tmp")
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(temporary))
    writer.SetInputData(image)
    writer.Write()
    os.replace(temporary, path)
    return path


# -- make screenshot ------------------------------------------------------------------------------

def chooseCase(workspaceDir, runId: str) -> tuple[str, dict | None]:
    """The case the loop sends the annotator to first and its rank-1 region: the first case of
    regions.json's ``case_order`` (most uncertain first) that has no label yet and has regions;
    else any predicted case with regions; else the first predicted case, without a region."""
    from SemiSupSegLib import navigation, workspace_files
    from SemiSupSegLib.files import readJson

    dataset = workspace_files.readDataset(workspaceDir)
    unlabelled = {case["id"] for case in dataset.get("cases", []) if not case.get("label")}
    predicted = [caseId for caseId in workspace_files.caseIdsOf(dataset)
                 if workspace_files.uncertaintyPath(workspaceDir, runId, caseId).exists()
                 and workspace_files.predictionPath(workspaceDir, runId, caseId).exists()]
    if not predicted:
        raise SystemExit(f"Run {runId} in {workspaceDir} has no predictions yet: run `make demo` first.")
    meta = (readJson(workspace_files.runDir(workspaceDir, runId) / "regions.json", default=None) or {}).get("meta", {})
    order = [caseId for caseId in meta.get("case_order", []) if caseId in predicted]
    order += [caseId for caseId in predicted if caseId not in order]
    for candidates in ([caseId for caseId in order if caseId in unlabelled], order):
        for caseId in candidates:
            regions = navigation.loadRegions(workspaceDir, runId, caseId)
            if regions:
                return caseId, regions[0]
    return predicted[0], None


def screenshotOfRun(workspaceDir, runId: str, outPath, caseId: str | None = None, size=(320, 320)) -> dict:
    """Load one case of a run through ``SemiSupSegLogic.loadResults`` (as the module does), go to its
    most uncertain region as "Next uncertain region" does, render Red, Yellow and Green side by side."""
    from SemiSupSegLib import SemiSupSegLogic, navigation
    from slicer_test_scenes import headlessScene

    region = None
    if caseId is None:
        caseId, region = chooseCase(workspaceDir, runId)
    else:
        regions = navigation.loadRegions(workspaceDir, runId, caseId)
        region = regions[0] if regions else None
    with headlessScene() as environment:
        logic = SemiSupSegLogic()
        results = logic.loadResults(workspaceDir, runId, [caseId])
        with SliceViews(environment.scene, environment.appLogic, size=size) as views:
            views.fitToBackground()
            if region is not None:
                logic.jumpToRegion(region)  # what "Next uncertain region" does
                views.snapToVoxels()
            pixels = sideBySide(views.renderAll().values())
        threshold = results[caseId]["uncertainty"].GetDisplayNode().GetLowerThreshold()
    writePng(pixels, outPath)
    return {"case": caseId, "region": region, "threshold": threshold, "png": str(outPath)}


def main(argv=None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Render a run's results in Slicer's slice views (headless) to a PNG.")
    parser.add_argument("workspace", type=Path)
    parser.add_argument("run")
    parser.add_argument("png", type=Path)
    parser.add_argument("--case", help="case id (default: the first case with regions)")
    parser.add_argument("--size", type=int, default=320, help="pixels per view (square)")
    args = parser.parse_args(argv)
    reason = renderingUnavailableReason()
    if reason:
        print(f"Cannot render: {reason}", file=sys.stderr)
        return 2
    summary = screenshotOfRun(args.workspace.resolve(), args.run, args.png, args.case, (args.size, args.size))
    print(json.dumps({key: summary[key] for key in ("case", "threshold", "png")}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "SemiSupSeg"))
    sys.exit(main())
