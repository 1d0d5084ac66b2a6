"""What the annotator sees, checked from pixels that Slicer's own slice-view code draws (headless).

A scene is filled through the module's own ``SemiSupSegLogic.writeWorkspace`` + ``loadResults`` from
a hand-written run (prediction: a disc; uncertainty: a small hot patch away from it, a wider
lukewarm band that the display threshold must hide, zero elsewhere). The Red view is rendered by
``slice_render.SliceViews`` and every pixel is compared with what the map and the prediction hold
at the RAS point it shows. Pixels within 1.5 mm of an edge (of the patch, the band or the disc) are
left out of the exact checks: the slice logic interpolates linearly, so edges move by a fraction
of a voxel.

The display rules themselves (threshold per case, colour table, fallback table) are tested first,
without rendering.
"""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel: pip install slicer-core==5.13.31053.0")
SimpleITK = pytest.importorskip("SimpleITK")

import slice_render  # noqa: E402  (sets VTK_DEFAULT_OPENGL_WINDOW before vtk makes a window)
import slicer  # noqa: E402
from SemiSupSegLib import SemiSupSegLogic, case_nodes  # noqa: E402
from SemiSupSegLib import results_loader  # noqa: E402
from SemiSupSegLib.results_loader import ResultsLoader, displayThreshold  # noqa: E402
from slicer_test_scenes import makeSegmentation, makeVolume  # noqa: E402

RUN = "run-by-hand"
SHAPE_KJI = (8, 80, 80)
SPACING = (1.0, 1.0, 2.0)
HOT, LUKEWARM = 0.9, 0.5
EDGE_MM = 1.5


def lookup(colorNodeId: str, scene, value: float) -> np.ndarray:
    """RGB in [0, 1] of a colour table at ``value`` in [0, 1] (the display window is 0..1)."""
    table = scene.GetNodeByID(colorNodeId).GetLookupTable()
    count = table.GetNumberOfTableValues()
    return np.array(table.GetTableValue(int(round(value * (count - 1))))[:3])


def hue(rgb) -> float:
    return 360.0 * colorsys.rgb_to_hsv(*np.asarray(rgb, float) / max(1e-9, float(np.max(rgb))))[0]


def hueDistance(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def luminance(rgb) -> np.ndarray:
    rgb = np.asarray(rgb, float)
    return rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722


# -- display rules, no rendering -------------------------------------------------------------------

def test_display_threshold_tints_at_most_the_fraction_and_never_below_the_floor():
    rng = np.random.default_rng(5)
    # Like the LA maps of issue 17: 40 % of the volume above 0.1, a long tail up to 1.
    values = np.where(rng.random(200_000) < 0.4, rng.beta(1.2, 3.0, 200_000), 0.0)
    threshold = displayThreshold(values)
    tinted = np.mean(values >= threshold)
    assert 0.015 <= tinted <= 0.02, tinted  # about the fraction asked for, never more
    assert threshold > results_loader.UNCERTAINTY_THRESHOLD_FLOOR
    assert np.mean(values >= 0.1) > 0.3  # the old fixed threshold tinted this much

    confident = rng.random(10_000) * 0.1  # everything below the floor: nothing is tinted
    assert displayThreshold(confident) == pytest.approx(results_loader.UNCERTAINTY_THRESHOLD_FLOOR)
    assert np.mean(confident >= displayThreshold(confident)) == 0.0


def test_display_threshold_skips_a_plateau_that_would_tint_too_much():
    values = np.zeros(1000)
    values[:100] = 0.5  # 10 % at one value: the 98 % quantile lands on the plateau
    values[:15] = 0.8  # 1.5 %
    threshold = displayThreshold(values)
    assert threshold == pytest.approx(0.8)
    assert np.mean(values >= threshold) == pytest.approx(0.015)
    allEqual = np.full(1000, 0.7)  # no larger value to move to: nothing is tinted
    assert np.mean(allEqual >= displayThreshold(allEqual)) == 0.0


def test_heat_table_is_bright_cool_and_the_fallback_matches_it(mrml):
    scene = mrml.scene
    heatId = results_loader.heatColorNodeId(scene)
    assert heatId == "vtkMRMLColorTableNodeCoolTint1"  # built into Slicer, so also here headless
    fallbackId = results_loader._addFallbackHeatTable(scene).GetID()
    shown = np.linspace(results_loader.UNCERTAINTY_THRESHOLD_FLOOR, 1.0, 41)
    heat = np.array([lookup(heatId, scene, v) for v in shown])
    fallback = np.array([lookup(fallbackId, scene, v) for v in shown])
    np.testing.assert_allclose(fallback, heat, atol=0.02)
    # No dark low end: every colour that can be shown is at least as bright as mid-grey tissue.
    assert luminance(heat).min() >= 0.65
    # No hue shared with the warm segment colours (the default first class, orange, yellow).
    for segmentColour in (results_loader.SEGMENT_PALETTE[0], (0.95, 0.55, 0.20), (0.95, 0.80, 0.25)):
        assert min(hueDistance(hue(colour), hue(segmentColour)) for colour in heat) >= 120


# -- rendered by Slicer's slice views ---------------------------------------------------------------

def writeRunOutputs(workspace, caseId: str, labels_kji: np.ndarray, uncertainty_kji: np.ndarray) -> None:
    """Prediction and uncertainty NIfTIs on the case image's grid, as the engine writes them."""
    reference = SimpleITK.ReadImage(str(workspace / "images" / f"{caseId}.nii.gz"))
    for folder, array in (("predictions", labels_kji.astype(np.uint8)), ("uncertainty", uncertainty_kji.astype(np.float32))):
        image = SimpleITK.GetImageFromArray(array)
        image.CopyInformation(reference)
        (workspace / "runs" / RUN / folder).mkdir(parents=True, exist_ok=True)
        SimpleITK.WriteImage(image, str(workspace / "runs" / RUN / folder / f"{caseId}.nii.gz"))


def shownCaseArrays():
    """Image, prediction and uncertainty (k, j, i) of the case the test looks at."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE_KJI], indexing="ij")
    prediction = ((j - 40) ** 2 + (i - 34) ** 2 <= 16**2).astype(np.uint8)  # a disc through every slice
    image = (300 + 5 * i + 3 * j + 400 * prediction.astype(np.int32)).astype(np.int16)  # grey ramps, a brighter organ
    uncertainty = np.zeros(SHAPE_KJI, np.float32)
    uncertainty[:, 10:18, 62:70] = HOT  # 1 % of the volume, away from the disc
    uncertainty[:, :, :4] = LUKEWARM  # 5 %: more than the display shows, so it stays clear
    return image, prediction, uncertainty


@pytest.fixture
def renderedScene(mrml, tmp_path):
    """Workspace with a labelled case far away and the unlabelled case under test; results loaded."""
    reason = slice_render.renderingUnavailableReason()
    if reason:
        pytest.skip(reason)
    scene = mrml.scene
    image, prediction, uncertainty = shownCaseArrays()
    eye = np.eye(3)
    other = makeVolume(scene, "other", image, SPACING, (500.0, 0.0, 0.0), eye)
    otherSegmentation = makeSegmentation(scene, other, "other seg", {"organ": prediction})
    shown = makeVolume(scene, "shown", image, SPACING, (0.0, 0.0, 0.0), eye)
    logic = SemiSupSegLogic()
    caseIds = logic.writeWorkspace(tmp_path, [(other, otherSegmentation, True), (shown, None, False)])["caseIds"]
    writeRunOutputs(tmp_path, caseIds[0], prediction, np.zeros(SHAPE_KJI))
    writeRunOutputs(tmp_path, caseIds[1], prediction, uncertainty)
    results = logic.loadResults(tmp_path, RUN)
    otherSegmentation.GetDisplayNode().SetVisibility(False)  # the user's own segmentation is not under test
    logic.showCase(caseIds[1])
    with slice_render.SliceViews(scene, mrml.appLogic, size=(256, 256)) as views:
        views.fitToBackground()
        views.jumpTo([40.0, 40.0, 7.0])  # middle of the shown volume (RAS = IJK * spacing)
        yield {"logic": logic, "views": views, "volume": shown, "caseId": caseIds[1], "results": results[caseIds[1]],
               "prediction": prediction, "uncertainty": uncertainty}


def pixelKnowledge(views, volume, prediction, uncertainty) -> dict:
    """Per Red-view pixel: the map's and the prediction's values around the RAS point it shows
    (at the point and 1.5 mm away in 8 directions), to tell clear pixels from edge pixels."""
    rows, columns = np.indices(views.size[::-1])
    points = views.pixelToRAS("Red", rows, columns)
    offsets = [(dx, dy, 0.0) for dx in (-EDGE_MM, 0.0, EDGE_MM) for dy in (-EDGE_MM, 0.0, EDGE_MM)]
    mapSamples = np.stack([slice_render.sampleArrayAt(volume, uncertainty, points + offset) for offset in offsets])
    predSamples = np.stack([slice_render.sampleArrayAt(volume, prediction, points + offset) for offset in offsets])
    shape = rows.shape
    inVolume = np.all(np.isfinite(mapSamples), axis=0).reshape(shape)
    return {
        "inVolume": inVolume,
        "mapAll": lambda test: np.all(test(mapSamples), axis=0).reshape(shape) & inVolume,
        "insidePrediction": np.all(predSamples == 1, axis=0).reshape(shape) & inVolume,
        "outsidePrediction": np.all(predSamples == 0, axis=0).reshape(shape) & inVolume,
        "predictionAtPixel": (predSamples[len(offsets) // 2] == 1).reshape(shape),
    }


def coloured(pixels: np.ndarray) -> np.ndarray:
    """Pixels that are not grey: the grey-scale background has R = G = B exactly."""
    pixels = pixels.astype(int)
    return pixels.max(axis=2) - pixels.min(axis=2) > 6


def grown(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=radius)


def shrunk(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=radius)


def test_red_view_shows_the_heat_where_the_map_is_high_and_the_prediction_as_an_outline(renderedScene):
    views, volume = renderedScene["views"], renderedScene["volume"]
    scene = views.scene
    uncertaintyNode = renderedScene["results"]["uncertainty"]
    display = uncertaintyNode.GetDisplayNode()
    threshold = display.GetLowerThreshold()
    # The band (5 % of the volume) is above the floor but hidden: only the top 2 % may be tinted.
    assert LUKEWARM < threshold <= HOT
    known = pixelKnowledge(views, volume, renderedScene["prediction"], renderedScene["uncertainty"])
    hot = known["mapAll"](lambda v: v >= threshold) & known["outsidePrediction"]
    cold = known["mapAll"](lambda v: v < threshold)
    onBoundary = known["inVolume"] & ~known["insidePrediction"] & ~known["outsidePrediction"]
    assert hot.sum() > 150 and cold.sum() > 20_000 and onBoundary.sum() > 300  # the scene is in view

    heatOn = views.render("Red")
    # The widget's Show uncertainty off: the foreground layer is emptied, nothing else changes.
    slicer.util.setSliceViewerLayers(foreground=None)
    heatOff = views.render("Red")

    # 1. The heat colour is there where the map is high, and nowhere the map is below the threshold.
    assert coloured(heatOn)[hot].all()
    assert not coloured(heatOn)[cold & known["outsidePrediction"]].any()
    assert not coloured(heatOn)[cold & known["insidePrediction"]].any()  # and no prediction fill under it
    # ... and it is the table's colour at the map's value, blended at the display opacity over the grey.
    opacity = scene.GetNodeByID("vtkMRMLSliceCompositeNodeRed").GetForegroundOpacity()
    assert opacity == pytest.approx(results_loader.UNCERTAINTY_OPACITY)
    heatColour = lookup(display.GetColorNodeID(), scene, HOT) * 255
    expected = (1 - opacity) * heatOff[hot].astype(float) + opacity * heatColour
    np.testing.assert_allclose(heatOn[hot], expected, atol=4)
    assert (luminance(heatOn[hot]) >= luminance(heatOff[hot]) - 1).all()  # it lightens, never darkens

    # 2. Show uncertainty off removes the colour: only the prediction's outline is left.
    assert not coloured(heatOff)[hot].any()
    outline = coloured(heatOff)
    assert outline.sum() > 100
    assert onBoundary[outline].mean() >= 0.97  # the outline lies on the predicted boundary ...
    predicted = known["predictionAtPixel"]
    edge = predicted & ~shrunk(predicted, 1)  # the disc's rim, one pixel wide
    assert grown(outline, 3)[edge].mean() >= 0.98  # ... all the way round
    np.testing.assert_array_equal(heatOn[outline], heatOff[outline])  # drawn over the heat, unchanged

    # 3. Prediction and uncertainty are told apart at a glance: hues far apart.
    segment = renderedScene["results"]["segmentation"].GetSegmentation().GetNthSegment(0)
    outlineColour = heatOff[outline].astype(float).mean(axis=0)
    np.testing.assert_allclose(outlineColour, np.array(segment.GetColor()) * 255, atol=30)
    renderedHeat = (heatOn[hot].astype(float) - (1 - opacity) * heatOff[hot]) / opacity
    assert hueDistance(hue(renderedHeat.mean(axis=0)), hue(outlineColour)) >= 120


def test_showing_a_case_without_uncertainty_fills_the_prediction_and_hides_the_heat(renderedScene):
    views, volume = renderedScene["views"], renderedScene["volume"]
    known = pixelKnowledge(views, volume, renderedScene["prediction"], renderedScene["uncertainty"])
    threshold = renderedScene["results"]["uncertainty"].GetDisplayNode().GetLowerThreshold()
    hot = known["mapAll"](lambda v: v >= threshold) & known["outsidePrediction"]

    ResultsLoader(views.scene).showCase(renderedScene["caseId"], showUncertainty=False)
    pixels = views.render("Red")
    composite = views.scene.GetNodeByID("vtkMRMLSliceCompositeNodeRed")
    assert composite.GetForegroundVolumeID() is None
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    assert not coloured(pixels)[hot].any()
    assert not coloured(pixels)[known["outsidePrediction"]].any()
    # Without the heat the prediction is filled again (Slicer's usual look), in its segment's hue.
    inside = known["insidePrediction"]
    assert coloured(pixels)[inside].mean() > 0.99
    segment = renderedScene["results"]["segmentation"].GetSegmentation().GetNthSegment(0)
    assert hueDistance(hue(pixels[inside].astype(float).mean(axis=0)), hue(segment.GetColor())) < 20

    ResultsLoader(views.scene).showCase(renderedScene["caseId"])  # and back: outline only, heat on
    pixels = views.render("Red")
    assert coloured(pixels)[hot].all()
    assert not coloured(pixels)[inside & known["mapAll"](lambda v: v < threshold)].any()
    display = renderedScene["results"]["segmentation"].GetDisplayNode()
    assert not display.GetVisibility2DFill() and display.GetVisibility2DOutline()


def test_all_three_views_draw_the_volume(renderedScene):
    views = renderedScene["views"]
    for name, pixels in views.renderAll().items():
        assert pixels.shape == (256, 256, 3)
        drawn = pixels.max(axis=2) > 0
        assert drawn.mean() > 0.05, f"{name} view is empty"
        assert coloured(pixels).any(), f"{name} view shows neither heat nor outline"
    case = case_nodes.caseIdOf(renderedScene["volume"])
    assert case == renderedScene["caseId"]
