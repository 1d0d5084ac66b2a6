"""Texts and input checks of the module panel: plain functions, no Qt, no MRML.

What the panel shows (progress, regions, case states, the torch line, class names) and every reason
Train cannot start, as sentences that say what to do. Used by the presenter (``presenter.py``) and
re-exported by ``SemiSupSeg.py``; loads without Slicer (the GUI-file tests import it with stand-ins).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

from .dependencies import MPS_DESCRIPTION
from .panel import medianSpacing, patchSizeProblem

try:
    from slicer.i18n import tr as _
except ImportError:  # the slicer-core wheel has no i18n: headless texts stay English
    def _(text: str) -> str:
        return text

# Files "Add folder of scans..." loads; .seg.nrrd files are segmentations and are skipped.
VOLUME_FILE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class CaseSummary:
    """What the input checks need to know about one row of the case table."""

    name: str
    labelled: bool
    hasSegmentation: bool
    segmentNames: list = field(default_factory=list)
    hasImage: bool = True
    reviewedRegions: int = 0  # regions accepted with Accept region (a partial label)
    spacing: tuple = ()  # voxel spacing (x, y, z) mm: the engine plans the network's pooling from it


def isPathSet(path) -> bool:
    """False for the empty path a fresh parameter node holds (pathlib turns "" into ".")."""
    return path is not None and str(path) not in ("", ".")


def formatDuration(seconds) -> str:
    """``42`` -> "42 s", ``750`` -> "13 min", ``5400`` -> "1 h 30 min"; "" when unknown."""
    if seconds is None or not math.isfinite(float(seconds)) or seconds < 0:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = int(round(seconds / 60.0))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progressText(progress: dict) -> str:
    """Two lines from a ``progress`` event: iteration, speed, time left (and the time budget left,
    ``budget_left_s``, in a run with a time budget); then the losses."""
    iteration, total = progress.get("iteration"), progress.get("total")
    budgetLeft = formatDuration(max(0.0, float(progress["budget_left_s"]))) if progress.get("budget_left_s") is not None else ""
    if total:
        parts = [_("Iteration {iteration} / {total}").format(iteration=iteration, total=total)]
    elif budgetLeft:  # a run with a time budget and no iteration count ends at the budget
        parts = [_("Iteration {iteration}, training until the time budget").format(iteration=iteration)]
    else:  # a continuous run (live loop) has no end
        parts = [_("Iteration {iteration}, training until stopped").format(iteration=iteration)]
    if progress.get("it_per_s"):
        parts.append(_("{speed:.2f} it/s").format(speed=float(progress["it_per_s"])))
    eta = formatDuration(progress.get("eta_s"))
    if eta and eta != budgetLeft:  # the engine's eta is at most the budget left: say it once
        parts.append(_("about {eta} left").format(eta=eta))
    if budgetLeft:
        parts.append(_("time budget: {left} left").format(left=budgetLeft))
    text = " · ".join(parts)
    losses = progress.get("losses") or {}
    if losses:
        text += "\n" + _("Losses") + ": " + ", ".join(f"{name} {float(value):.3g}" for name, value in losses.items())
    return text


def finishedText(runId: str, finished: Optional[dict]) -> str:
    """What the panel says when run ``runId`` has finished; ``finished`` is the engine's ``finished``
    event (None if it was not seen). A run the time budget ended says so, with the minutes used."""
    review = _("Select a case, then 'Next uncertain region' to review where the network is unsure.")
    if finished and finished.get("stopped_by") == "time_budget":
        used, budget = formatDuration(finished.get("budget_used_s")), formatDuration(finished.get("time_budget_s"))
        return _("Finished run {run}: stopped at its time budget ({used} of {budget}, prediction included).").format(
            run=runId, used=used or "?", budget=budget or "?") + " " + review
    return _("Finished run {run}.").format(run=runId) + " " + review


def regionClassText(region: dict, classNames=()) -> Optional[str]:
    """The class a region is about (regions.json ``about_class``): its name from dataset.json's
    ``labels`` (``classNames[c]``), "possibly missed structure" for 0 (uncertain where nothing was
    predicted), None when the region does not say (older runs) or the class is unknown."""
    about = region.get("about_class")
    if about is None:
        return None
    about = int(about)
    if about == 0:
        return _("possibly missed structure")
    return str(classNames[about]) if 0 < about < len(classNames) else _("class {index}").format(index=about)


def regionText(index: int, regions: list, classNames=()) -> str:
    """ "Region 2 of 7 (myocardium): 1.35 ml, mean uncertainty 0.62" for ``regions[index]``;
    ``classNames``: the workspace's class list (background first) naming ``about_class``."""
    if not regions:
        return _("No uncertain regions for this case.")
    if index < 0 or index >= len(regions):
        return _("{count} uncertain regions: click 'Next uncertain region'.").format(count=len(regions))
    region = regions[index]
    text = _("Region {k} of {n}").format(k=index + 1, n=len(regions))
    about = regionClassText(region, classNames)
    if about:
        text += f" ({about})"
    details = []
    if region.get("volume_ml") is not None:
        details.append(_("{volume:.2f} ml").format(volume=float(region["volume_ml"])))
    if region.get("mean_uncertainty") is not None:
        details.append(_("mean uncertainty {value:.2f}").format(value=float(region["mean_uncertainty"])))
    return text + (": " + ", ".join(details) if details else "")


def caseStateText(labelled: bool, reviewedRegions: int, hasResult: bool, newerPredictionWaiting: bool) -> str:
    """The case table's state column: "labelled", "3 regions reviewed", "predicted" or "unlabelled",
    plus "newer prediction waiting" when one was kept back from an edited prediction."""
    if labelled:
        text = _("labelled")
    elif reviewedRegions:
        text = _("{count} regions reviewed").format(count=reviewedRegions) if reviewedRegions != 1 else _("1 region reviewed")
    else:
        text = _("predicted") if hasResult else _("unlabelled")
    if newerPredictionWaiting:
        text += " · " + _("newer prediction waiting")
    return text


def engineStatusText(status: Optional[dict]) -> str:
    """The "torch / device" status line from ``SemiSupSegLogic.engineStatus()``."""
    if not status:
        return _("PyTorch: not checked yet")
    if status.get("error"):
        return _("PyTorch: could not check ({error})").format(error=status["error"])
    if not status.get("torch"):
        return _("PyTorch is not installed: it will be offered when you click Train.")
    if status.get("cuda"):
        text = _("PyTorch {version} · GPU: {device}").format(version=status["torch"], device=status.get("device", "cuda"))
    elif status.get("mps"):  # a Mac: --device auto trains on its Apple GPU
        text = _("PyTorch {version} · GPU: {device}").format(version=status["torch"], device=MPS_DESCRIPTION)
    else:
        text = _("PyTorch {version} · CPU only (no CUDA GPU): training works but is slow").format(version=status["torch"])
    if status.get("missing"):
        text += " · " + _("missing: {packages}").format(packages=", ".join(status["missing"]))
    return text


def methodEntries(listing) -> list:
    """[(name, description)] from the engine's method listing: a dict name -> {"description", ...}
    (`semisupseg methods --json`), a list of such dicts with "name", or a list of names."""
    if isinstance(listing, dict):
        return [(str(name), str((info or {}).get("description", ""))) for name, info in listing.items()]
    entries = []
    for item in listing or []:
        if isinstance(item, dict):
            entries.append((str(item["name"]), str(item.get("description", ""))))
        else:
            entries.append((str(item), ""))
    return entries


def classNamesFromSegments(segmentNamesByCase: dict) -> tuple:
    """(class names, problems) from the segment names of each labelled case.

    Names are compared case-insensitively, in the order of the first case; "background" is class 0
    and not a segment. A problem names the case that differs and how.
    """
    classNames, problems = [], []
    reference = None
    for caseName, names in segmentNamesByCase.items():
        names = [n for n in names if n.strip().lower() != "background"]
        folded = [n.strip().lower() for n in names]
        if len(set(folded)) != len(folded):
            problems.append(_("{case}: two segments have the same name; rename one.").format(case=caseName))
        if reference is None:
            reference, classNames = (caseName, set(folded)), list(names)
            continue
        if set(folded) != reference[1]:
            problems.append(_("{case} has segments [{names}] but {reference} has [{expected}]: use the same segment names in every labelled case.").format(
                case=caseName, names=", ".join(names), reference=reference[0], expected=", ".join(classNames)))
    return classNames, problems


def trainingConfig(parameters) -> dict:
    """Worker configuration (engine config keys) from the parameter node; 0 / -1 = engine default."""
    config = {"method": parameters.method, "device": parameters.device, "seed": int(parameters.seed)}
    if getattr(parameters, "keepTraining", False):
        config["iterations"] = 0  # continuous: until Stop (the engine's open-ended schedule)
    elif parameters.iterations > 0:
        config["iterations"] = int(parameters.iterations)
    if parameters.batchLabelled > 0:
        config["batch_labelled"] = int(parameters.batchLabelled)
    if parameters.batchUnlabelled >= 0:
        config["batch_unlabelled"] = int(parameters.batchUnlabelled)
    if parameters.predictEvery > 0:
        config["predict_every"] = int(parameters.predictEvery)
    budget = float(getattr(parameters, "timeBudgetMin", 0) or 0)  # whole minutes in the panel
    if budget > 0:  # the engine stops training early enough for the checkpoint and prediction to fit
        config["time_budget_min"] = int(budget) if budget.is_integer() else budget
    if getattr(parameters, "largestStructureOnly", False):
        config["postprocess"] = "largest_foreground"
    if getattr(parameters, "averageFlips", False):
        config["tta"] = "flips"
    if getattr(parameters, "sliceBySlice", False):
        config["network"] = "unet2d"  # the engine's slice-wise 2D U-Net (networks/slice_unet.py)
    patch = [int(parameters.patchX), int(parameters.patchY), int(parameters.patchZ)]
    if any(patch):
        config["patch_size"] = patch
    return config


# nnU-Net's threshold for a 2D configuration: the thickest axis at least 3x the finest spacing.
THIN_SLAB_RATIO = 3.0


def thinSlabHint(spacing, sliceBySlice: bool) -> Optional[str]:
    """A suggestion to train slice by slice when the cases' median ``spacing`` (x, y, z mm) is a
    thin slab and the option is off; None otherwise (isotropic scans, option already on)."""
    if sliceBySlice or not spacing or min(spacing) <= 0 or max(spacing) < THIN_SLAB_RATIO * min(spacing):
        return None
    return _("These scans are thin slabs ({x:.1f} x {y:.1f} x {z:.1f} mm voxels). On such scans (cardiac cine MRI) "
             "'Segment slice by slice' (Advanced) with the supervised method reached a better result in the same CPU "
             "time; with DyCON it has not been shown to.").format(
                 x=spacing[0], y=spacing[1], z=spacing[2])


def validateTrainingInputs(workspaceDir, cases: list, patch=(0, 0, 0), sliceBySlice: bool = False) -> list:
    """Every reason Train cannot start, as sentences that say what to do; [] when it can.
    ``sliceBySlice``: the patch is checked for the 2D network that option trains."""
    problems = []
    if not isPathSet(workspaceDir):
        problems.append(_("Choose a workspace folder (Cases section): the images, labels and runs are written there."))
    if not cases:
        problems.append(_("Add volumes to the case table ('Add scene volumes' or 'Add folder of scans...')."))
    for case in cases:
        if not case.hasImage:
            problems.append(_("{case} has no image data.").format(case=case.name))
        if case.labelled and not case.hasSegmentation:
            problems.append(_("{case} is marked labelled but has no segmentation: choose one in the table or mark it unlabelled.").format(case=case.name))
        elif case.labelled and not [n for n in case.segmentNames if n.strip().lower() != "background"]:
            problems.append(_("{case}: its segmentation has no segments; paint the structures in Segment Editor.").format(case=case.name))
    if cases and not any((case.labelled and case.hasSegmentation) or case.reviewedRegions for case in cases):
        problems.append(_("Mark at least one case that has a segmentation as labelled ('Mark as labelled'), or accept a region of one in Review."))
    labelled = {case.name: case.segmentNames for case in cases if case.labelled and case.hasSegmentation}
    problems += classNamesFromSegments(labelled)[1]
    # The engine plans the 3D pooling from the median spacing of the cases (thin slabs pool z fewer
    # times); the 2D network's rule does not depend on it.
    spacing = medianSpacing([case.spacing for case in cases if case.hasImage])
    patchProblem = patchSizeProblem(patch, spacing=spacing, sliceBySlice=sliceBySlice)
    if patchProblem:
        problems.append(patchProblem)
    return problems


def listVolumeFiles(folder) -> list:
    """Volume files directly in ``folder`` (not sub-folders), sorted; segmentation files skipped."""
    files = []
    for entry in sorted(os.listdir(folder)):
        lower = entry.lower()
        path = os.path.join(folder, entry)
        if entry.startswith(".") or not os.path.isfile(path) or lower.endswith(".seg.nrrd"):
            continue
        if lower.endswith(VOLUME_FILE_EXTENSIONS):
            files.append(path)
    return files


def segmentNamesOf(segmentationNode) -> list:
    if segmentationNode is None:
        return []
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def isAlive(node) -> bool:
    """A node reference that still points into the scene (removed nodes keep a Python wrapper)."""
    return node is not None and node.GetScene() is not None
