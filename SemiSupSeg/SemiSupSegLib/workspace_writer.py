"""Scene -> workspace: volumes become ``images/<id>.nii.gz``, labelled segmentations become
``labels/<id>.nii.gz`` on the volume's own grid, and ``dataset.json`` lists them.

Only files whose content changed are written. The content digest of every written file
(voxels, data type, grid) is kept in ``<workspace>/.semisupseg-slicer-state.json`` together with
the file's size and modification time, so an unchanged volume is neither re-exported to disk nor
re-hashed from disk, and a file changed behind our back is rewritten.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer

from . import case_nodes, region_corrections
from .files import atomicWriteJson, jsonText, readJson
from .mrml_helpers import copyGeometry, ijkToRasArray, temporaryNode, writeVolumeFile
from .segment_labels import checkSegmentNames, labelArrayFromSegmentation, normalizedClassList, unionClassList
from .workspace_files import DATASET_FILE

STATE_FILE = ".semisupseg-slicer-state.json"
IMAGE_FOLDER = "images"
LABEL_FOLDER = "labels"
IMAGE_EXTENSION = ".nii.gz"
# Volumes whose intensities reach this low are taken to be CT (Hounsfield units) when the
# modality is neither given nor known from DICOM; everything else is normalised like MR.
CT_MINIMUM_INTENSITY = -500.0


@dataclass
class WorkspaceCase:
    """One row of the request, after validation and id assignment."""

    caseId: str
    volumeNode: object
    segmentationNode: object
    labelled: bool


def contentDigest(array: np.ndarray, ijkToRas: np.ndarray) -> str:
    """sha256 over what a written image file encodes: shape, data type, voxels and grid."""
    digest = hashlib.sha256()
    digest.update(repr((array.shape, array.dtype.str)).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(np.round(ijkToRas, 6).astype(np.float64).tobytes())
    return digest.hexdigest()


class WorkspaceWriter:
    """Writes the cases of a scene into a workspace folder (see DESIGN.md, "Workspace")."""

    def __init__(self, scene):
        self.scene = scene

    # -- public -------------------------------------------------------------------------

    def write(self, workspaceDir, cases, classNames=None, name: str | None = None, modality: str | None = None) -> dict:
        """Write ``cases`` (``(volumeNode, segmentationNode or None, labelled)``) into ``workspaceDir``.

        Everything is checked before anything is written, so a refused request leaves the
        workspace as it was. Returns ``{"written": [relative paths], "unchanged": [...],
        "cases": n, "labelled": n, "classNames": [...], "caseIds": [...]}``.
        """
        workspace = Path(workspaceDir)
        existing = readJson(workspace / DATASET_FILE, default={}) or {}
        requests = self._validated(cases)
        self._assignCaseIds(requests)
        reviews = region_corrections.readReviews(workspace)
        partial = self._partialRecords(workspace, requests, reviews)
        classList = self._classList(requests, classNames, existing, partial)
        state = readJson(workspace / STATE_FILE, default={}) or {}
        written, unchanged, entries = [], [], []
        for case in requests:
            entry = self._writeCase(workspace, case, classList, state, written, unchanged)
            if entry["label"] is None and case.caseId in partial:
                entry["label"] = self._keepPartialLabel(workspace, case, partial[case.caseId], classList, written)
            entries.append(entry)
        dataset = {
            "name": name or existing.get("name") or workspace.name,
            "modality": {"0": modality or self._existingModality(existing) or self._guessModality(requests)},
            "labels": {str(index): className for index, className in enumerate(classList)},
            "cases": entries,
        }
        if partial:  # voxels of value 255 in a partial label are "not annotated" (engine: ignore_label)
            dataset["ignore_label"] = region_corrections.IGNORE_LABEL
        if any(name in written for name in (record["label"] for record in partial.values())):
            region_corrections.writeReviews(workspace, reviews)
        self._writeIfChanged(workspace / DATASET_FILE, dataset, written, unchanged, workspace)
        if state != (readJson(workspace / STATE_FILE, default={}) or {}):
            atomicWriteJson(workspace / STATE_FILE, state)
        for case in requests:
            self._recordOnNodes(case)
        return {
            "written": written,
            "unchanged": unchanged,
            "cases": len(requests),
            "labelled": sum(case.labelled for case in requests),
            "partial": len(partial),
            "classNames": classList,
            "caseIds": [case.caseId for case in requests],
        }

    # -- validation ---------------------------------------------------------------------

    def _validated(self, cases) -> list[WorkspaceCase]:
        requests = []
        seen = set()
        for row in cases:
            volumeNode, segmentationNode, labelled = row
            if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
                raise ValueError(f"Case {row!r}: the first element must be a scalar volume node.")
            if volumeNode.GetImageData() is None:
                raise ValueError(f'Volume "{volumeNode.GetName()}" has no voxels; load or create its image first.')
            if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
                raise ValueError(
                    f'Volume "{volumeNode.GetName()}" has several components per voxel (colour or vector image); '
                    "convert it to a scalar volume (Vector to Scalar Volume module) first."
                )
            if volumeNode.GetID() in seen:
                raise ValueError(f'Volume "{volumeNode.GetName()}" is listed twice; list every volume once.')
            seen.add(volumeNode.GetID())
            if segmentationNode is not None and not segmentationNode.IsA("vtkMRMLSegmentationNode"):
                raise ValueError(f'"{segmentationNode.GetName()}" is not a segmentation node.')
            if labelled and segmentationNode is None:
                raise ValueError(
                    f'Volume "{volumeNode.GetName()}" is marked labelled but has no segmentation; '
                    "select its segmentation or mark it unlabelled."
                )
            requests.append(WorkspaceCase("", volumeNode, segmentationNode, bool(labelled)))
        return requests

    def _assignCaseIds(self, requests: list[WorkspaceCase]) -> None:
        """Keep each volume's stored id; give new volumes (and copies that inherited an id) a fresh unique one."""
        requestedIds = {case.volumeNode.GetID() for case in requests}
        taken = {
            case_nodes.caseIdOf(node)
            for node in case_nodes.registeredVolumeNodes(self.scene)
            if node.GetID() not in requestedIds
        }
        for case in requests:
            stored = case_nodes.caseIdOf(case.volumeNode)
            if stored and stored == case_nodes.sanitizeCaseId(stored) and stored not in taken:
                case.caseId = stored
                taken.add(stored)
        for case in requests:
            if case.caseId:
                continue
            base = case_nodes.sanitizeCaseId(case.volumeNode.GetName())
            candidate, suffix = base, 2
            while candidate in taken:
                candidate, suffix = f"{base}_{suffix}", suffix + 1
            case.caseId = candidate
            taken.add(candidate)

    def _classList(self, requests, classNames, existing: dict, partial: dict) -> list[str]:
        """Class list of the labelled segmentations (or ``classNames``); partial labels' classes must be in it.

        When no case is fully labelled, the partial labels' classes are the class list.
        """
        labelledSegmentations = [case.segmentationNode for case in requests if case.labelled]
        existingLabels = existing.get("labels") or {}
        previous = [existingLabels[key] for key in sorted(existingLabels, key=lambda key: int(key)) if key != "0"]
        if classNames is not None:
            classList = normalizedClassList(classNames)
        else:
            classList = unionClassList(labelledSegmentations, preferredOrder=previous)
            if not labelledSegmentations and partial:
                named = previous + [name for record in partial.values() for name in record.get("classes", [])[1:]]
                classList += [name for name in dict.fromkeys(named) if name not in classList]
        for segmentationNode in labelledSegmentations:
            checkSegmentNames(segmentationNode, classList)
        for caseId, record in partial.items():
            region_corrections.checkPartialClasses(caseId, record, classList)
        return classList

    @staticmethod
    def _partialRecords(workspace: Path, requests, reviews: dict) -> dict:
        """``{caseId: review record}`` of the unlabelled cases that have accepted regions (a partial label)."""
        unlabelled = {case.caseId for case in requests if not case.labelled}
        return {
            caseId: record for caseId, record in reviews["cases"].items()
            if caseId in unlabelled and record.get("label") and (workspace / record["label"]).exists()
        }

    def _keepPartialLabel(self, workspace: Path, case: WorkspaceCase, record: dict, classList, written) -> str:
        """An unlabelled case with accepted regions trains on its partial label (re-indexed if the classes moved)."""
        if region_corrections.remapPartialLabel(self.scene, workspace, record, case.volumeNode, classList):
            written.append(record["label"])
        return record["label"]

    # -- writing ------------------------------------------------------------------------

    def _writeCase(self, workspace: Path, case: WorkspaceCase, classList, state, written, unchanged) -> dict:
        volumeNode = case.volumeNode
        imagePath = f"{IMAGE_FOLDER}/{case.caseId}{IMAGE_EXTENSION}"
        image = slicer.util.arrayFromVolume(volumeNode)
        digest = contentDigest(image, ijkToRasArray(volumeNode))
        self._writeFileIfChanged(workspace, imagePath, digest, state, written, unchanged, lambda path: writeVolumeFile(volumeNode, path))
        labelPath = None
        if case.labelled:
            labelPath = f"{LABEL_FOLDER}/{case.caseId}{IMAGE_EXTENSION}"
            labels = labelArrayFromSegmentation(self.scene, case.segmentationNode, volumeNode, classList)
            digest = contentDigest(labels, ijkToRasArray(volumeNode))
            self._writeFileIfChanged(
                workspace, labelPath, digest, state, written, unchanged, lambda path: self._writeLabelmap(labels, volumeNode, path)
            )
        return {"id": case.caseId, "image": imagePath, "label": labelPath, "source": case_nodes.volumeSource(volumeNode)}

    def _writeLabelmap(self, labels: np.ndarray, volumeNode, path: Path) -> None:
        with temporaryNode(self.scene, "vtkMRMLLabelMapVolumeNode") as labelmapNode:
            copyGeometry(volumeNode, labelmapNode)
            slicer.util.updateVolumeFromArray(labelmapNode, labels)
            writeVolumeFile(labelmapNode, path)

    @staticmethod
    def _fileStamp(path: Path) -> list[int]:
        status = path.stat()
        return [status.st_size, status.st_mtime_ns]

    def _writeFileIfChanged(self, workspace: Path, relativePath: str, digest: str, state, written, unchanged, writer) -> None:
        path = workspace / relativePath
        record = state.get(relativePath) or {}
        if path.exists() and record.get("digest") == digest and record.get("stamp") == self._fileStamp(path):
            unchanged.append(relativePath)
            return
        writer(path)
        state[relativePath] = {"digest": digest, "stamp": self._fileStamp(path)}
        written.append(relativePath)

    @staticmethod
    def _writeIfChanged(path: Path, content: dict, written, unchanged, workspace: Path) -> None:
        relativePath = os.path.relpath(path, workspace)
        if path.exists() and path.read_text(encoding="utf-8") == jsonText(content):
            unchanged.append(relativePath)
            return
        atomicWriteJson(path, content)
        written.append(relativePath)

    # -- metadata -----------------------------------------------------------------------

    @staticmethod
    def _existingModality(existing: dict) -> str | None:
        modality = existing.get("modality")
        if isinstance(modality, dict):
            return modality.get("0")
        return modality if isinstance(modality, str) else None

    def _guessModality(self, requests: list[WorkspaceCase]) -> str:
        """DICOM modality of the first volume when known, else CT if it has Hounsfield-like values, else MR."""
        if not requests:
            return "MR"
        volumeNode = requests[0].volumeNode
        dicomModality = volumeNode.GetAttribute("DICOM.Modality") or self._subjectHierarchyModality(volumeNode)
        if dicomModality:
            return dicomModality
        scalarRange = volumeNode.GetImageData().GetScalarRange()
        return "CT" if scalarRange[0] <= CT_MINIMUM_INTENSITY else "MR"

    def _subjectHierarchyModality(self, volumeNode) -> str | None:
        shNode = self.scene.GetSubjectHierarchyNode() if hasattr(self.scene, "GetSubjectHierarchyNode") else None
        if shNode is None:
            return None
        item = shNode.GetItemByDataNode(volumeNode)
        return shNode.GetItemAttribute(item, "DICOM.Modality") or None if item else None

    @staticmethod
    def _recordOnNodes(case: WorkspaceCase) -> None:
        """Remember the case id, labelled state and the user's segmentation on the volume node."""
        if case_nodes.caseIdOf(case.volumeNode) != case.caseId:
            case.volumeNode.SetAttribute(case_nodes.CASE_ID_ATTRIBUTE, case.caseId)
        if case.volumeNode.GetAttribute(case_nodes.LABELLED_ATTRIBUTE) != ("1" if case.labelled else "0"):
            case_nodes.setLabelled(case.volumeNode, case.labelled)
        if case.segmentationNode is not None and case.volumeNode.GetNodeReference(case_nodes.USER_SEGMENTATION_ROLE) is not case.segmentationNode:
            case_nodes.setUserSegmentationNode(case.volumeNode, case.segmentationNode)
