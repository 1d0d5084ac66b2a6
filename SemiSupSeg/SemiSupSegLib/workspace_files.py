"""Paths and files of a workspace and its runs (the layout in DESIGN.md, "Workspace")."""

from __future__ import annotations

import json
from pathlib import Path

from .files import readJson

DATASET_FILE = "dataset.json"
RUNS_FOLDER = "runs"
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


def readDataset(workspaceDir) -> dict:
    """dataset.json of a workspace; ValueError with the fix when it is missing."""
    path = Path(workspaceDir) / DATASET_FILE
    dataset = readJson(path)
    if not isinstance(dataset, dict):
        raise ValueError(f"{path} does not exist or is not a JSON object; write the workspace first.")
    return dataset


def classNamesOf(dataset: dict) -> list[str]:
    """``["background", ...]`` from dataset.json ``labels`` ({"0": "background", "1": ...})."""
    labels = dataset.get("labels") or {"0": "background"}
    return [labels[key] for key in sorted(labels, key=int)]


def caseIdsOf(dataset: dict) -> list[str]:
    return [case["id"] for case in dataset.get("cases", [])]


def runDir(workspaceDir, runId: str) -> Path:
    return Path(workspaceDir) / RUNS_FOLDER / runId


def _caseFile(folder: Path, caseId: str) -> Path:
    """``folder/<case>.<ext>`` for the first known image extension that exists (``.nii.gz`` if none)."""
    for extension in IMAGE_EXTENSIONS:
        candidate = folder / f"{caseId}{extension}"
        if candidate.exists():
            return candidate
    return folder / f"{caseId}{IMAGE_EXTENSIONS[0]}"


def predictionPath(workspaceDir, runId: str, caseId: str) -> Path:
    return _caseFile(runDir(workspaceDir, runId) / "predictions", caseId)


def uncertaintyPath(workspaceDir, runId: str, caseId: str) -> Path:
    return _caseFile(runDir(workspaceDir, runId) / "uncertainty", caseId)


def imagePath(workspaceDir, dataset: dict, caseId: str) -> Path:
    for case in dataset.get("cases", []):
        if case["id"] == caseId:
            return Path(workspaceDir) / case["image"]
    raise ValueError(f'Case "{caseId}" is not in {Path(workspaceDir) / DATASET_FILE}.')


def readEvents(workspaceDir, runId: str) -> list[dict]:
    """The events a run wrote to ``events.jsonl`` (unreadable lines skipped, e.g. a line being written)."""
    path = runDir(workspaceDir, runId) / "events.jsonl"
    if not path.exists():
        return []
    events = []
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events
