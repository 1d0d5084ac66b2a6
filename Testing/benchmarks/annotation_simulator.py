"""The simulated annotator of the annotation-loop benchmark (``bench_annotation_loop.py``).

Its "correction" is the ground truth inside the voxels it reviews. Per strategy and round it picks
cases and boxes (the engine's uncertain regions, the same boxes at random places of the predicted
boundary band or of the volume, or whole cases), marks the boxes reviewed until the round's voxel
budget, and writes the case's label file as the Slicer module does: a partial label
``labels/<id>.partial.nii.gz`` (255 = not annotated) or the full truth, pointed at by dataset.json,
atomically. Cost: voxels newly reviewed, and of those the voxels where the prediction it saw was
wrong (edited).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

STRATEGIES = ("uncertain_regions", "boundary_random", "random_boxes", "uncertain_case", "random_case", "no_review")
REGION_STRATEGIES = STRATEGIES[:3]
NOT_ANNOTATED = 255  # the partial label's "not annotated" value (SemiSupSegLib.region_corrections.IGNORE_LABEL)
PARTIAL_SUFFIX = ".partial.nii.gz"


# --------------------------------------------------------------------------- label files
def write_json_atomic(path: Path, data) -> None:
    from semisupseg.atomic import atomic_output

    with atomic_output(path, ".json") as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))


def set_case_label(workspace: Path, case: str, relative: str) -> None:
    """Point the case's dataset.json entry at a label file (read-modify-write, atomic)."""
    dataset = json.loads((workspace / "dataset.json").read_text())
    for entry in dataset["cases"]:
        if entry["id"] == case:
            entry["label"] = relative
    write_json_atomic(workspace / "dataset.json", dataset)


# --------------------------------------------------------------------------- arrays
def read_labels(path: Path):
    """(array (x, y, z) uint8, sitk reference) of a label file."""
    from semisupseg.data.io import read_image, to_array

    image = read_image(path)
    return to_array(image).astype(np.uint8), image


def foreground_dice(pred: np.ndarray, truth: np.ndarray, classes) -> float:
    """Mean over ``classes`` of Dice = 2 |P_c & T_c| / (|P_c| + |T_c|) (1 when both are empty)."""
    values = []
    for c in classes:
        p, t = pred == c, truth == c
        den = int(p.sum()) + int(t.sum())
        values.append(1.0 if den == 0 else 2.0 * int((p & t).sum()) / den)
    return float(np.mean(values))


def box_slices(lo, hi) -> tuple:
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))


def engine_boxes(regions: List[dict]) -> List[tuple]:
    """The regions' boxes ((lo, hi) inclusive voxel indices, image grid) in rank order."""
    ranked = sorted(regions, key=lambda r: r.get("rank", 0))
    return [(r["bbox_voxels"]["min"], r["bbox_voxels"]["max"]) for r in ranked]


def fallback_boxes(shape, spacing, extent_mm: float) -> List[tuple]:
    """One box of the regions' maximum extent, for a case where the engine found no region."""
    size = np.minimum(np.maximum(np.round(extent_mm / np.asarray(spacing)).astype(int), 1), shape)
    return [([0, 0, 0], (size - 1).tolist())]


def centred_boxes(sizes: List[np.ndarray], centres: np.ndarray, shape, rng) -> List[tuple]:
    """Boxes of ``sizes`` centred on random rows of ``centres`` (N, 3), shifted to lie inside ``shape``."""
    placed = []
    for size in sizes:
        centre = centres[rng.integers(len(centres))]
        start = np.clip(centre - size // 2, 0, np.maximum(np.asarray(shape) - size, 0))
        placed.append((start.tolist(), (start + size - 1).tolist()))
    return placed


# --------------------------------------------------------------------------- the simulated annotator
@dataclass
class Review:
    """What one strategy's annotator did in one round."""

    cases: List[str] = field(default_factory=list)
    reviewed: int = 0  # voxels newly annotated this round
    edited: int = 0  # of those, where the prediction the annotator saw was wrong
    boxes: int = 0
    fallback_placements: int = 0  # boundary_random boxes placed anywhere (no predicted boundary)


def region_boxes(strategy: str, regions: List[dict], pred: np.ndarray, spacing, region_cfg: dict, rng,
                 count: int) -> tuple:
    """``count`` boxes for one case in the strategy's order; returns (boxes, fallback placements)."""
    from semisupseg.inference.regions import boundary_band

    boxes = engine_boxes(regions) or fallback_boxes(pred.shape, spacing, region_cfg.get("max_extent_mm", 20.0))
    if strategy == "uncertain_regions":
        return boxes, 0
    sizes = [np.asarray(hi) - np.asarray(lo) + 1 for lo, hi in boxes]
    sizes = [sizes[i % len(sizes)] for i in range(count)]  # the same shapes, repeated as needed
    if strategy == "boundary_random":
        band = np.argwhere(boundary_band(pred, 2))
        if len(band):
            return centred_boxes(sizes, band, pred.shape, rng), 0
    anywhere = bc.random_boxes_like([([0, 0, 0], (s - 1).tolist()) for s in sizes], pred.shape, rng)
    return anywhere, (count if strategy == "boundary_random" else 0)


def review_boxes(annotated: np.ndarray, boxes: List[tuple], budget: int) -> tuple:
    """Mark boxes reviewed, in order, until ``budget`` voxels are newly reviewed; (new mask, boxes used)."""
    new = np.zeros(annotated.shape, dtype=bool)
    used = 0
    for lo, hi in boxes:
        if int(new.sum()) >= budget:
            break
        window = box_slices(lo, hi)
        new[window] = ~annotated[window]  # voxels reviewed in an earlier round cost nothing again
        used += 1
    return new, used


def write_label(workspace: Path, case: str, label: np.ndarray, reference, full: bool, history: Path) -> None:
    """The case's label file (atomic), pointed at by dataset.json; a copy kept in ``history``."""
    from semisupseg.data.io import from_array, write_image_atomic

    relative = f"labels/{case}{'.nii.gz' if full else PARTIAL_SUFFIX}"
    image = from_array(label.astype(np.uint8), reference)
    write_image_atomic(image, workspace / relative)
    write_image_atomic(image, history / f"{case}.nii.gz")
    set_case_label(workspace, case, relative)


def current_annotation(workspace: Path, case: str, truth_shape) -> np.ndarray:
    """Boolean mask of the case's voxels annotated so far (its label file, 255 = not annotated)."""
    for name in (f"{case}.nii.gz", f"{case}{PARTIAL_SUFFIX}"):
        path = workspace / "labels" / name
        if path.exists():
            return read_labels(path)[0] != NOT_ANNOTATED
    return np.zeros(truth_shape, dtype=bool)


def annotate(strategy: str, workspace: Path, run_dir: Path, regions_doc: dict, candidates: List[str],
             args, rng, history: Path) -> Review:
    """One round of the simulated annotator for ``strategy`` on the predictions of ``run_dir``."""
    review = Review()
    history.mkdir(parents=True, exist_ok=True)
    fully = [c for c in candidates if (workspace / "labels" / f"{c}.nii.gz").exists()]
    open_cases = [c for c in candidates if c not in fully]
    if strategy == "no_review":  # the control: training goes on, nothing is reviewed
        return review
    if strategy in REGION_STRATEGIES:
        if strategy == "uncertain_regions":
            order = [c for c in regions_doc["meta"]["case_order"] if c in open_cases]
        else:
            order = [open_cases[i] for i in rng.permutation(len(open_cases))]
        for case in order:
            if len(review.cases) >= args.cases_per_round:
                break
            if review_case_regions(strategy, workspace, run_dir, regions_doc, case, args, rng, review, history):
                review.cases.append(case)
    else:
        if not open_cases:
            return review
        if strategy == "uncertain_case":
            scores = regions_doc["meta"]["scores"]
            case = max(open_cases, key=lambda c: (scores[c], c))
        else:
            case = open_cases[int(rng.integers(len(open_cases)))]
        truth, reference = read_labels(workspace / "truth" / f"{case}.nii.gz")
        pred = read_labels(run_dir / "predictions" / f"{case}.nii.gz")[0]
        new = ~current_annotation(workspace, case, truth.shape)
        review.reviewed, review.edited = int(new.sum()), int((pred != truth)[new].sum())
        write_label(workspace, case, truth, reference, True, history)
        review.cases.append(case)
    return review


def review_case_regions(strategy, workspace, run_dir, regions_doc, case, args, rng, review, history) -> bool:
    """Review boxes of one case until the budget; write its partial label. False when nothing was new."""
    truth, reference = read_labels(workspace / "truth" / f"{case}.nii.gz")
    pred = read_labels(run_dir / "predictions" / f"{case}.nii.gz")[0]
    annotated = current_annotation(workspace, case, truth.shape)
    budget = max(1, int(round(args.budget_fraction * truth.size)))
    region_cfg = json.loads((run_dir / "config.json").read_text())["regions"]
    boxes, fallbacks = region_boxes(strategy, regions_doc["cases"].get(case, []), pred, reference.GetSpacing(),
                                    region_cfg, rng, args.max_boxes)
    new, used = review_boxes(annotated, boxes, budget)
    if not new.any():
        return False
    annotated |= new
    label = np.where(annotated, truth, NOT_ANNOTATED).astype(np.uint8)
    write_label(workspace, case, label, reference, False, history)
    review.reviewed += int(new.sum())
    review.edited += int((pred != truth)[new].sum())
    review.boxes += used
    review.fallback_placements += min(fallbacks, used)
    return True
