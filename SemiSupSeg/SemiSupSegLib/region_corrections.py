"""Accept region: the corrected prediction inside one uncertain region becomes annotated voxels.

In Review the annotator edits the loaded prediction segmentation where the current uncertain
region is, then presses Accept region. The region's voxels get the edited prediction's classes in
the case's *partial label*; every other voxel of the case stays ``IGNORE_LABEL`` (255, "not
annotated": the engine's losses skip it). A second region adds to the first.

Which voxels are "the region" (``regionVoxels``): the uncertain voxels inside the region's box,
i.e. ``u > threshold`` with the region's own threshold (regions.json ``threshold``) on the loaded
uncertainty map, within ``bbox_voxels``, grown by a ball of ``DEFAULT_MARGIN_MM`` = 3 mm (an
ellipsoid in voxels on anisotropic grids). Why 3 mm: the uncertain band straddles the predicted
boundary by one or two voxels, and where the network was wrong the true boundary usually lies a
few millimetres off it; the annotator's correction moves the boundary there. 3 mm is 2 to 5
voxels at 0.6 to 1.5 mm in-plane spacing and adds no slice where slices are 3.5 mm or thicker,
so the accepted voxels stay close to what the annotator looked at. Without a usable map (no
threshold, a map of another grid, no voxel above the threshold in the box) the whole box, grown
by the same margin, is taken. Edits farther away are not taken: Accept prediction takes a whole case.

Files (all written atomically; the write happens at once, also while a worker trains):
- ``labels/<id>.partial.nii.gz``: the partial label on exactly the volume's grid (uint8). It is
  kept apart from ``labels/<id>.nii.gz`` (the full label written from the user's segmentation) so
  that marking a case labelled and unlabelled again never mixes the two.
- ``reviewed_regions.json`` beside dataset.json: per case the partial label's path, the class
  list its values refer to, the classes it holds and one entry per accepted region (run, rank,
  centre voxel, voxels taken, time); "N regions reviewed" is the number of entries.
- ``dataset.json``: the case's ``label`` points at the partial label and ``"ignore_label": 255``.

A fully labelled case is refused: its label is written from the user's segmentation at every
Train, which would silently undo a region correction, and only an explicit Accept prediction may
write into a user's segmentation.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import slicer

from . import case_nodes, prediction_edits
from .files import atomicWriteJson, readJson
from .mrml_helpers import copyGeometry, geometryMatches, readVolumeFile, temporaryNode, volumeDimensions, writeVolumeFile
from .segment_labels import isBackgroundName, labelArrayFromSegmentation
from .workspace_files import DATASET_FILE, classNamesOf, readDataset

IGNORE_LABEL = 255
REVIEW_FILE = "reviewed_regions.json"
REVIEW_FORMAT = 1
PARTIAL_LABEL_SUFFIX = ".partial.nii.gz"
DEFAULT_MARGIN_MM = 3.0


def partialLabelPath(caseId: str) -> str:
    """Workspace-relative path of a case's partial label."""
    return f"labels/{caseId}{PARTIAL_LABEL_SUFFIX}"


# -- the review record ------------------------------------------------------------------


def readReviews(workspaceDir) -> dict:
    """``reviewed_regions.json`` (an empty record when there is none)."""
    content = readJson(Path(workspaceDir) / REVIEW_FILE, default=None)
    if not isinstance(content, dict) or not isinstance(content.get("cases"), dict):
        return {"format": REVIEW_FORMAT, "ignore_label": IGNORE_LABEL, "cases": {}}
    return content


def writeReviews(workspaceDir, reviews: dict) -> None:
    atomicWriteJson(Path(workspaceDir) / REVIEW_FILE, reviews)


def partialCases(workspaceDir) -> dict:
    """``{caseId: record}`` of the cases whose partial label file exists."""
    workspace = Path(workspaceDir)
    return {
        caseId: record for caseId, record in readReviews(workspace)["cases"].items()
        if record.get("label") and (workspace / record["label"]).exists()
    }


def reviewedRegionCounts(workspaceDir) -> dict:
    """``{caseId: number of regions accepted}`` of the cases with a partial label."""
    return {caseId: len(record.get("regions", [])) for caseId, record in partialCases(workspaceDir).items()}


def classLookup(oldClasses: list, newClasses: list) -> np.ndarray:
    """``lookup[old index] = new index`` by class name; ``IGNORE_LABEL`` stays, a class that is gone
    becomes "not annotated" (callers check first that no annotated voxel has such a class)."""
    lookup = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for index, name in enumerate(oldClasses):
        if index == 0 or isBackgroundName(name):
            lookup[index] = 0
        elif name in newClasses:
            lookup[index] = newClasses.index(name)
    return lookup


def checkPartialClasses(caseId: str, record: dict, classNames: list) -> None:
    """ValueError naming the case and the fix when its annotated voxels use a class the list lacks."""
    missing = [name for name in record.get("present_classes", []) if name not in classNames]
    if not missing:
        return
    folded = {" ".join(name.lower().split()): name for name in classNames[1:]}
    close = [f'"{name}" looks like "{folded[key]}"' for name in missing
             if (key := " ".join(name.lower().split())) in folded]
    hint = f" ({'; '.join(close)})" if close else ""
    raise ValueError(
        f'Case "{caseId}" has {len(record.get("regions", []))} reviewed regions labelled {missing}, which the class '
        f"list {classNames[1:]} lacks{hint}. Name the segments of the labelled segmentations {missing} again, "
        f'or delete {record.get("label")} and its entry in {REVIEW_FILE} to drop those regions.'
    )


# -- region voxels ----------------------------------------------------------------------


def _boxSlices(region: dict, dimensions_ijk) -> tuple:
    """(k, j, i) slices of the region's inclusive ``bbox_voxels``; ValueError when it leaves the volume."""
    box = region.get("bbox_voxels") or {}
    try:
        low, high = [int(v) for v in box["min"]], [int(v) for v in box["max"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"Region {region.get('rank', '?')} has no bbox_voxels; the run's regions.json is too old.") from None
    if any(lo < 0 or hi >= n or lo > hi for lo, hi, n in zip(low, high, dimensions_ijk)):
        raise ValueError(
            f"Region {region.get('rank', '?')} ({low}..{high}) lies outside the volume {tuple(dimensions_ijk)}: "
            "the results belong to another grid. Write the workspace and train again."
        )
    return tuple(slice(lo, hi + 1) for lo, hi in reversed(list(zip(low, high))))


def marginBall(spacing_kji, marginMm: float) -> np.ndarray:
    """Offsets within ``marginMm`` of the centre on a grid of ``spacing_kji``: a boolean ellipsoid (k, j, i)."""
    radii = [int(np.floor(marginMm / s + 1e-9)) for s in spacing_kji]
    grids = np.meshgrid(*[np.arange(-r, r + 1) * s for r, s in zip(radii, spacing_kji)], indexing="ij")
    return sum(grid ** 2 for grid in grids) <= marginMm ** 2 + 1e-9


def regionVoxels(region: dict, dimensions_ijk, spacing_ijk, uncertainty_kji=None,
                 marginMm: float = DEFAULT_MARGIN_MM) -> tuple:
    """The voxels Accept region takes, as ``(slices, mask, source)``.

    ``slices`` are (k, j, i) slices of the volume, ``mask`` a boolean array of their shape,
    ``source`` ``"uncertain voxels"`` or ``"box"`` (see the module docstring). ``uncertainty_kji``
    is the region's uncertainty map on the volume grid (k, j, i) or None.
    """
    from scipy import ndimage  # in Slicer's Python and the engine's requirements; not needed at import

    box = _boxSlices(region, dimensions_ijk)
    seeds, source = None, "box"
    threshold = region.get("threshold")
    if uncertainty_kji is not None and threshold is not None and uncertainty_kji.shape == tuple(reversed(dimensions_ijk)):
        seeds = np.asarray(uncertainty_kji[box]) > float(threshold)
        source = "uncertain voxels"
    if seeds is None or not seeds.any():
        seeds, source = np.ones([s.stop - s.start for s in box], dtype=bool), "box"
    ball = marginBall(list(reversed(spacing_ijk)), marginMm)
    radii = [n // 2 for n in ball.shape]
    shape_kji = tuple(reversed(dimensions_ijk))
    grown = tuple(slice(max(0, s.start - r), min(n, s.stop + r)) for s, r, n in zip(box, radii, shape_kji))
    canvas = np.zeros([s.stop - s.start for s in grown], dtype=bool)
    canvas[tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown))] = seeds
    if ball.size > 1:
        canvas = ndimage.binary_dilation(canvas, structure=ball)
    return grown, canvas, source


# -- label files ------------------------------------------------------------------------


def _readLabel(scene, path: Path, volumeNode) -> np.ndarray | None:
    """A label file on the volume's grid as (k, j, i) uint8, or None when it is on another grid."""
    with temporaryNode(scene, "vtkMRMLLabelMapVolumeNode") as labelmapNode:
        readVolumeFile(path, labelmapNode)
        if not geometryMatches(labelmapNode, volumeNode):
            return None
        return np.array(slicer.util.arrayFromVolume(labelmapNode), dtype=np.uint8)


def writeLabel(scene, labels: np.ndarray, volumeNode, path: Path) -> None:
    """Write a (k, j, i) uint8 label array on exactly the volume's grid, atomically."""
    with temporaryNode(scene, "vtkMRMLLabelMapVolumeNode") as labelmapNode:
        copyGeometry(volumeNode, labelmapNode)
        slicer.util.updateVolumeFromArray(labelmapNode, np.ascontiguousarray(labels, dtype=np.uint8))
        writeVolumeFile(labelmapNode, path)


def remapPartialLabel(scene, workspaceDir, record: dict, volumeNode, classNames: list) -> bool:
    """Re-index a partial label written with another class order; True when the file changed."""
    if list(record.get("classes") or []) == list(classNames):
        return False
    path = Path(workspaceDir) / record["label"]
    labels = _readLabel(scene, path, volumeNode)
    if labels is not None:
        writeLabel(scene, classLookup(record.get("classes") or classNames, classNames)[labels], volumeNode, path)
    record["classes"] = list(classNames)
    return True


# -- Accept region ----------------------------------------------------------------------


def _refuseUnless(condition, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _caseEntry(dataset: dict, caseId: str, volumeName: str) -> dict:
    for entry in dataset.get("cases", []):
        if entry.get("id") == caseId:
            return entry
    raise ValueError(f'"{volumeName}" (case "{caseId}") is not in the workspace; click Train to write it first.')


def _uncertaintyOnGrid(scene, caseId: str, volumeNode):
    node = case_nodes.resultNode(scene, caseId, case_nodes.UNCERTAINTY)
    if node is None or node.GetImageData() is None or not geometryMatches(node, volumeNode):
        return None
    return slicer.util.arrayFromVolume(node)


def _regionKey(entry: dict) -> tuple:
    return entry.get("run"), entry.get("rank"), tuple(entry.get("center_voxel") or ())


def acceptRegion(scene, workspaceDir, volumeNode, region: dict | None, marginMm: float = DEFAULT_MARGIN_MM) -> dict:
    """Write the edited prediction inside ``region`` into the case's partial label (see the module docstring).

    Returns ``{"case", "label" (absolute path), "regionVoxels" (taken now), "annotatedVoxels" (all
    annotated voxels of the case), "regionsReviewed", "source", "marginMm"}``. Raises ValueError
    with the fix for: a volume that is not a workspace case, no prediction loaded, no region
    selected or one of another case, a fully labelled case, prediction segments whose names are
    not classes of the workspace.
    """
    name = volumeNode.GetName()
    caseId = case_nodes.caseIdOf(volumeNode)
    _refuseUnless(caseId, f'"{name}" is not a case of the workspace yet; click Train (it writes the workspace) first.')
    prediction = case_nodes.resultNode(scene, caseId, case_nodes.PREDICTION)
    _refuseUnless(prediction is not None,
                  f'No prediction is loaded for "{name}"; click "Load results", correct the prediction in the region, '
                  "then Accept region.")
    _refuseUnless(region, f'No region is selected for "{name}": click "Next uncertain region", correct the prediction '
                          "there, then Accept region.")
    _refuseUnless(region.get("case") in (None, caseId),
                  f'The selected region belongs to case "{region.get("case")}", not to "{name}"; select that case '
                  "or go to a region of this one.")
    userNode = case_nodes.userSegmentationNode(scene, volumeNode)
    _refuseUnless(not case_nodes.isLabelled(volumeNode),
                  f'"{name}" is fully labelled from your segmentation "{userNode.GetName() if userNode else "?"}", which '
                  "is written to the workspace at every Train and would undo a region correction. Correct that "
                  "segmentation in Segment Editor, or use Accept prediction to replace it with the edited prediction.")
    workspace = Path(workspaceDir)
    dataset = readDataset(workspace)
    entry = _caseEntry(dataset, caseId, name)
    classNames = classNamesOf(dataset)
    _refuseUnless(len(classNames) < IGNORE_LABEL,
                  f"{len(classNames)} classes leave no label value free for 'not annotated' ({IGNORE_LABEL}).")
    edited = labelArrayFromSegmentation(scene, prediction, volumeNode, classNames)  # ValueError for foreign segment names
    slices, mask, source = regionVoxels(
        region, volumeDimensions(volumeNode), volumeNode.GetSpacing(), _uncertaintyOnGrid(scene, caseId, volumeNode), marginMm)

    reviews = readReviews(workspace)
    record = reviews["cases"].get(caseId) or {}
    labelPath = record.get("label") or partialLabelPath(caseId)
    labels = None
    if record and (workspace / labelPath).exists():
        labels = _readLabel(scene, workspace / labelPath, volumeNode)
        if labels is not None and record.get("classes") and record["classes"] != classNames:
            labels = classLookup(record["classes"], classNames)[labels]
    if labels is None:  # first region, or the volume's grid changed: start from "nothing annotated"
        labels, record = np.full(edited.shape, IGNORE_LABEL, dtype=np.uint8), {}
    labels[slices][mask] = edited[slices][mask]
    writeLabel(scene, labels, volumeNode, workspace / labelPath)

    accepted = {"run": prediction.GetAttribute(case_nodes.RESULT_RUN_ATTRIBUTE), "rank": region.get("rank"),
                "center_voxel": region.get("center_voxel"), "voxels": int(mask.sum()), "source": source,
                "margin_mm": float(marginMm), "accepted_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    regions = [old for old in record.get("regions", []) if _regionKey(old) != _regionKey(accepted)] + [accepted]
    present = sorted({int(v) for v in np.unique(labels)} - {IGNORE_LABEL, 0})
    reviews["cases"][caseId] = {"label": labelPath, "classes": classNames,
                                "present_classes": [classNames[v] for v in present], "regions": regions}
    writeReviews(workspace, reviews)
    if entry.get("label") != labelPath or dataset.get("ignore_label") != IGNORE_LABEL:
        entry["label"] = labelPath
        dataset["ignore_label"] = IGNORE_LABEL
        atomicWriteJson(workspace / DATASET_FILE, dataset)
    prediction_edits.recordAccepted(prediction, edited)
    return {"case": caseId, "label": str(workspace / labelPath), "regionVoxels": int(mask.sum()),
            "annotatedVoxels": int((labels != IGNORE_LABEL).sum()), "regionsReviewed": len(regions),
            "source": source, "marginMm": float(marginMm)}
