"""Segmentations -> files: ``.seg.nrrd``, NIfTI label maps on the volume's grid, DICOM SEG.

Nothing is overwritten unless asked: all target paths are checked before the first file is
written, so a refused export writes nothing. Every file is written atomically. The user's nodes
are only read (standalone storage nodes; their own storage settings stay as they were).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from . import case_nodes
from .files import atomicWriteJson
from .mrml_helpers import temporaryNode, writeSegmentationFile, writeVolumeFile, copyGeometry
from .segment_labels import labelArrayFromSegmentation, normalizedClassList, unionClassList

LOG = logging.getLogger("SemiSupSeg.export")

SEG_NRRD, NIFTI, DICOM_SEG = "seg.nrrd", "nifti", "dicomseg"
_FORMAT_ALIASES = {
    "seg.nrrd": SEG_NRRD, ".seg.nrrd": SEG_NRRD, "segnrrd": SEG_NRRD, "nrrd": SEG_NRRD,
    "nifti": NIFTI, "nii": NIFTI, "nii.gz": NIFTI, ".nii.gz": NIFTI,
    "dicomseg": DICOM_SEG, "dicom": DICOM_SEG, "dicom seg": DICOM_SEG, "dicom-seg": DICOM_SEG,
}
NIFTI_LABELS_FILE = "labels.json"
# Which segmentation of a case is exported.
SOURCES = ("auto", "user", "prediction")


def normalizedFormat(format: str) -> str:
    try:
        return _FORMAT_ALIASES[str(format).strip().lower()]
    except KeyError:
        raise ValueError(f'Unknown export format "{format}"; use "seg.nrrd", "nifti" or "dicomseg".') from None


class Exporter:
    """Exports the segmentations of registered cases (volumes that were written to a workspace)."""

    def __init__(self, scene):
        self.scene = scene

    def export(self, outputDir, format: str = SEG_NRRD, caseIds=None, overwrite: bool = False,
               source: str = "auto", classNames=None) -> list[str]:
        """Write one file (DICOM: one folder) per case; returns the written paths.

        ``source``: ``"user"`` the annotator's segmentation, ``"prediction"`` the loaded prediction,
        ``"auto"`` the annotator's when the case has one, else the prediction. With ``caseIds=None``
        every registered case that has such a segmentation is exported. NIfTI label values follow
        ``classNames`` (default: all segment names, in order of appearance); they are listed in
        ``labels.json`` next to the label maps.
        """
        format = normalizedFormat(format)
        if source not in SOURCES:
            raise ValueError(f"Unknown source {source!r}; use one of {SOURCES}.")
        outputDir = Path(outputDir)
        pairs = self._casesToExport(caseIds, source)
        if not pairs:
            raise ValueError("There is no segmentation to export: label a case or load a run's results first.")
        if format == DICOM_SEG:
            self._checkDicomSources(pairs)
            plugin = dicomSegExporter()
        targets = [self._targetPath(outputDir, format, caseId) for caseId, _, _ in pairs]
        if format == NIFTI:
            targets.append(outputDir / NIFTI_LABELS_FILE)
        existing = [str(path) for path in targets if path.exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"Export refused, these files already exist: {existing}. Choose another folder or export with overwrite=True."
            )
        outputDir.mkdir(parents=True, exist_ok=True)
        if format == SEG_NRRD:
            for (caseId, volumeNode, segmentationNode), path in zip(pairs, targets):
                writeSegmentationFile(segmentationNode, path)
        elif format == NIFTI:
            classList = (
                normalizedClassList(classNames) if classNames is not None
                else unionClassList([segmentationNode for _, _, segmentationNode in pairs])
            )
            for (caseId, volumeNode, segmentationNode), path in zip(pairs, targets):
                self._writeLabelmap(segmentationNode, volumeNode, classList, path)
            atomicWriteJson(targets[-1], {str(index): name for index, name in enumerate(classList)})
        else:
            for (caseId, volumeNode, segmentationNode), path in zip(pairs, targets):
                exportDicomSeg(self.scene, plugin, segmentationNode, volumeNode, path, overwrite)
        return [str(path) for path in targets]

    # -- selection ----------------------------------------------------------------------

    def _casesToExport(self, caseIds, source: str) -> list[tuple]:
        explicit = caseIds is not None
        if caseIds is None:
            caseIds = [case_nodes.caseIdOf(node) for node in case_nodes.registeredVolumeNodes(self.scene)]
        pairs = []
        for caseId in caseIds:
            volumeNode = case_nodes.volumeNodeForCase(self.scene, caseId)
            if volumeNode is None:
                raise ValueError(f'No volume of case "{caseId}" in the scene.')
            segmentationNode = self._segmentationOf(caseId, volumeNode, source)
            if segmentationNode is None:
                if explicit:
                    raise ValueError(f'Case "{caseId}" has no {"" if source == "auto" else source + " "}segmentation to export.')
                LOG.info("Case %s has no segmentation to export; skipped", caseId)
                continue
            pairs.append((caseId, volumeNode, segmentationNode))
        return pairs

    def _segmentationOf(self, caseId: str, volumeNode, source: str):
        user = case_nodes.userSegmentationNode(self.scene, volumeNode) if source in ("auto", "user") else None
        if user is not None or source == "user":
            return user
        return case_nodes.resultNode(self.scene, caseId, case_nodes.PREDICTION)

    @staticmethod
    def _targetPath(outputDir: Path, format: str, caseId: str) -> Path:
        if format == SEG_NRRD:
            return outputDir / f"{caseId}.seg.nrrd"
        if format == NIFTI:
            return outputDir / f"{caseId}.nii.gz"
        return outputDir / caseId

    # -- writers ------------------------------------------------------------------------

    def _writeLabelmap(self, segmentationNode, volumeNode, classList, path: Path) -> None:
        import slicer

        labels = labelArrayFromSegmentation(self.scene, segmentationNode, volumeNode, classList)
        with temporaryNode(self.scene, "vtkMRMLLabelMapVolumeNode") as labelmapNode:
            copyGeometry(volumeNode, labelmapNode)
            slicer.util.updateVolumeFromArray(labelmapNode, labels)
            writeVolumeFile(labelmapNode, path)

    @staticmethod
    def _checkDicomSources(pairs) -> None:
        notDicom = [volumeNode.GetName() for _, volumeNode, _ in pairs if case_nodes.volumeSource(volumeNode) != "dicom"]
        if notDicom:
            raise ValueError(
                f"DICOM SEG export needs volumes loaded from DICOM, but {notDicom} were not (no DICOM.instanceUIDs): "
                "a DICOM SEG must reference the DICOM series it segments. Load the series through the DICOM module, "
                "or export as seg.nrrd or NIfTI instead."
            )


def dicomSegExporter():
    """Slicer's DICOM SEG exporter plugin (core since Slicer 5.12, QuantitativeReporting before)."""
    try:
        import DICOMSegmentationPlugin  # a Slicer scripted module, only importable inside Slicer
    except ImportError:
        raise RuntimeError(
            "DICOM SEG export is not available: it needs the DICOM segmentation plugin of Slicer 5.12 or later, "
            "or the QuantitativeReporting extension on older Slicer versions. Install QuantitativeReporting from "
            "the Extensions Manager, or export as seg.nrrd or NIfTI instead."
        ) from None
    return DICOMSegmentationPlugin.DICOMSegmentationPluginClass()


def exportDicomSeg(scene, plugin, segmentationNode, volumeNode, folder: Path, overwrite: bool) -> None:
    """Export one segmentation as DICOM SEG into ``folder`` (written in a temporary folder, then renamed).

    The exporter requires the segmentation to sit in the subject-hierarchy study of its volume,
    so the segmentation is moved there first (this only changes its place in the Data tree).
    """
    shNode = scene.GetSubjectHierarchyNode()
    segmentationItem = shNode.GetItemByDataNode(segmentationNode)
    studyItem = shNode.GetItemParent(shNode.GetItemByDataNode(volumeNode))
    if studyItem and shNode.GetItemParent(segmentationItem) != studyItem:
        shNode.SetItemParent(segmentationItem, studyItem)
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    exportables = plugin.examineForExport(segmentationItem)
    if not exportables:
        raise RuntimeError(f'The DICOM SEG exporter cannot export "{segmentationNode.GetName()}" (is its volume a DICOM series?).')
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for exportable in exportables:
            exportable.directory = str(temporary)
        message = plugin.export(exportables)
        if message:
            raise RuntimeError(f'DICOM SEG export of "{segmentationNode.GetName()}" failed: {message}')
        if folder.exists() and overwrite:
            shutil.rmtree(folder)
        os.replace(temporary, folder)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
