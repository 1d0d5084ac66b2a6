"""Has the annotator edited a loaded prediction? Then a newer prediction waits instead of replacing it.

A prediction segmentation is the annotator's drafting surface in Review: they correct it in
Segment Editor, then press Accept region (or Accept prediction). Predictions keep arriving while
training runs; replacing an edited, not yet accepted prediction would throw the annotator's work
away. So each loaded prediction node remembers what it held when it was loaded (or last accepted):

- ``SemiSupSeg.LoadedDigest``: sha256 of the class-indexed label array (k, j, i) on the volume grid;
- ``SemiSupSeg.LoadedSignature``: the VTK modification times of the segmentation and of each
  segment's binary labelmap. Unchanged times prove the content is unchanged (every edit, by
  Segment Editor or ``slicer.util``, goes through ``Modified()``), so the costly check (exporting
  the segments to a label array and hashing it) runs only after something was touched;
- ``SemiSupSeg.LoadedFile``: the prediction file's size and modification time, so loading the same
  file again is not mistaken for a newer prediction;
- ``SemiSupSeg.NewerPredictionRun``: the run whose newer prediction is waiting (empty when none).

All are node attributes, so they are saved with the scene.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .segment_labels import labelArrayFromSegmentation

LOADED_DIGEST_ATTRIBUTE = "SemiSupSeg.LoadedDigest"
LOADED_SIGNATURE_ATTRIBUTE = "SemiSupSeg.LoadedSignature"
LOADED_FILE_ATTRIBUTE = "SemiSupSeg.LoadedFile"
NEWER_RUN_ATTRIBUTE = "SemiSupSeg.NewerPredictionRun"


def labelDigest(labels: np.ndarray) -> str:
    """sha256 of a class-indexed label array (values < 256), independent of its integer type."""
    array = np.ascontiguousarray(labels, dtype=np.uint8)
    digest = hashlib.sha256(repr(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def modificationSignature(segmentationNode) -> str:
    """Modification times of the segmentation and of every segment and its binary labelmap."""
    segmentation = segmentationNode.GetSegmentation()
    sourceName = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName  # Slicer < 5.4
    times = [segmentation.GetNumberOfSegments(), segmentation.GetMTime()]
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        labelmap = segment.GetRepresentation(sourceName())
        times += [segment.GetMTime(), labelmap.GetMTime() if labelmap is not None else 0]
    return " ".join(str(value) for value in times)


def fileStamp(path) -> str:
    status = Path(path).stat()
    return f"{Path(path).name}|{status.st_size}|{status.st_mtime_ns}"


def recordLoaded(segmentationNode, labels: np.ndarray, path) -> None:
    """Remember what a freshly loaded prediction holds (``labels``: the file's label array, k, j, i)."""
    segmentationNode.SetAttribute(LOADED_DIGEST_ATTRIBUTE, labelDigest(labels))
    segmentationNode.SetAttribute(LOADED_SIGNATURE_ATTRIBUTE, modificationSignature(segmentationNode))
    segmentationNode.SetAttribute(LOADED_FILE_ATTRIBUTE, fileStamp(path))
    segmentationNode.SetAttribute(NEWER_RUN_ATTRIBUTE, "")


def recordAccepted(segmentationNode, labels: np.ndarray) -> None:
    """The prediction's current content (``labels``, its class-indexed array) was accepted: no longer an unsaved edit."""
    segmentationNode.SetAttribute(LOADED_DIGEST_ATTRIBUTE, labelDigest(labels))
    segmentationNode.SetAttribute(LOADED_SIGNATURE_ATTRIBUTE, modificationSignature(segmentationNode))


def isEdited(scene, segmentationNode, volumeNode, classNames) -> bool:
    """True when the prediction differs from what was loaded or last accepted.

    A segment whose name is not a class (added by the annotator) counts as an edit. A node loaded
    before this bookkeeping existed (no digest) counts as unedited.
    """
    recorded = segmentationNode.GetAttribute(LOADED_DIGEST_ATTRIBUTE)
    if not recorded:
        return False
    signature = modificationSignature(segmentationNode)
    if signature == segmentationNode.GetAttribute(LOADED_SIGNATURE_ATTRIBUTE):
        return False
    try:
        labels = labelArrayFromSegmentation(scene, segmentationNode, volumeNode, classNames)
    except ValueError:
        return True
    if labelDigest(labels) != recorded:
        return True
    # Touched but equal (e.g. a 3D surface was built): remember the new times to skip the export next time.
    segmentationNode.SetAttribute(LOADED_SIGNATURE_ATTRIBUTE, signature)
    return False


def holdsBackNewerPrediction(scene, segmentationNode, volumeNode, classNames, path, runId: str) -> bool:
    """Whether loading ``path`` must wait because the annotator edited the loaded prediction.

    When it must, the node records ``runId`` as having a newer prediction waiting. Loading the
    very file that was loaded before is not "newer" and never waits.
    """
    if not isEdited(scene, segmentationNode, volumeNode, classNames):
        return False
    if segmentationNode.GetAttribute(LOADED_FILE_ATTRIBUTE) != fileStamp(path):
        segmentationNode.SetAttribute(NEWER_RUN_ATTRIBUTE, runId)
    return True


def newerPredictionRun(segmentationNode) -> str | None:
    """The run whose newer prediction waits for this (edited) prediction, or None."""
    if segmentationNode is None:
        return None
    return segmentationNode.GetAttribute(NEWER_RUN_ATTRIBUTE) or None
