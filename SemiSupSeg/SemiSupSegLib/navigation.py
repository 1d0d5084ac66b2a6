"""Uncertain regions of a run (``runs/<id>/regions.json``) and moving the slice views to them.

The engine writes region centres in LPS millimetres (ITK's convention) and, for convenience,
also in RAS. Slicer works in RAS: ``(r, a, s) = (-l, -p, s)``. The coordinates are those of the
image file, i.e. of the volume node without its parent transform; when the volume sits under a
transform the jump applies it, so the views land on the region as displayed.
"""

from __future__ import annotations

import slicer
import vtk

from . import case_nodes, workspace_files
from .files import readJson


def loadRegions(workspaceDir, runId: str, caseId: str) -> list[dict]:
    """Regions of one case, best (rank 1) first; each dict gains a ``"case"`` key. [] when none."""
    path = workspace_files.runDir(workspaceDir, runId) / "regions.json"
    content = readJson(path, default=None)
    if content is None:
        return []
    system = str(content.get("coordinate_system", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise ValueError(f"{path}: unknown coordinate_system {system!r} (expected LPS or RAS).")
    regions = []
    for region in (content.get("cases") or {}).get(caseId, []):
        region = dict(region, case=caseId)
        if "center_ras_mm" not in region and "center_lps_mm" not in region and "center_mm" in region:
            key = "center_lps_mm" if system == "LPS" else "center_ras_mm"
            region[key] = region["center_mm"]
        regions.append(region)
    return sorted(regions, key=lambda region: region.get("rank", len(regions)))


def regionCenterRAS(region: dict) -> list[float]:
    """The region's centre in RAS mm (file coordinates of its volume)."""
    if "center_ras_mm" in region:
        r, a, s = region["center_ras_mm"]
        return [float(r), float(a), float(s)]
    if "center_lps_mm" in region:
        l, p, s = region["center_lps_mm"]
        return [-float(l), -float(p), float(s)]
    raise ValueError(f"Region {region!r} has no centre (center_ras_mm or center_lps_mm).")


def worldPoint(volumeNode, pointRAS: list[float]) -> list[float]:
    """A point in the volume's local RAS moved through the volume's parent transform, if any."""
    if volumeNode is None or volumeNode.GetParentTransformNode() is None:
        return list(pointRAS)
    transform = vtk.vtkGeneralTransform()
    volumeNode.GetParentTransformNode().GetTransformToWorld(transform)
    return list(transform.TransformPoint(pointRAS))


def jumpToRegion(scene, region: dict) -> list[float]:
    """Centre every slice view on the region; returns the world RAS point used."""
    volumeNode = case_nodes.volumeNodeForCase(scene, region["case"]) if region.get("case") else None
    r, a, s = worldPoint(volumeNode, regionCenterRAS(region))
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return [r, a, s]


def caseScores(workspaceDir, runId: str) -> dict[str, float]:
    """Latest uncertainty score of each case from the run's ``prediction`` events."""
    scores = {}
    for event in workspace_files.readEvents(workspaceDir, runId):
        if event.get("event") == "prediction" and event.get("case") is not None and event.get("score") is not None:
            scores[event["case"]] = float(event["score"])
    return scores
