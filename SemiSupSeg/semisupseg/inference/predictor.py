"""Writing a run's per-case outputs: label map, entropy map, optional mutual information, regions.

Used at the end of training (and on request during it) and by ``semisupseg predict``. Every map
is written on exactly the input image's grid (resampled back when training used another spacing),
atomically, and announced with a ``prediction`` event; ``regions.json`` ranks each case's
uncertain regions for "next uncertain region" in Slicer.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import SimpleITK as sitk
import torch

from ..config import sliding_window_overlap
from ..data.io import from_array, to_array, write_image_atomic
from ..data.preprocess import resample_like
from .label_maps import labels_and_confidence
from .regions import find_uncertain_regions, write_regions_json
from .scores import case_score, rank_cases
from .sliding_window import predict_probabilities
from .flip_averaging import flip_averaged
from .postprocess import removed_by_postprocess
from .uncertainty import normalised_entropy


def maps_on_reference(maps: torch.Tensor, prepared, renormalise: bool) -> np.ndarray:
    """(K, X, Y, Z) maps on the training grid -> (K, x, y, z) on the original image grid (linear).

    ``renormalise`` makes resampled class probabilities sum to 1 again.
    """
    probs_np = maps.numpy()
    reference = prepared.reference
    if tuple(probs_np.shape[1:]) == tuple(reference.GetSize()) and np.allclose(prepared.spacing, reference.GetSpacing()):
        return probs_np
    grid = sitk.Image(list(probs_np.shape[1:]), sitk.sitkFloat32)
    grid.SetSpacing(tuple(float(s) for s in prepared.spacing))
    grid.SetOrigin(reference.GetOrigin())
    grid.SetDirection(reference.GetDirection())
    channels = [to_array(resample_like(from_array(p.astype(np.float32), grid), reference, is_label=False)) for p in probs_np]
    stacked = np.stack(channels)
    if renormalise:
        stacked = stacked / np.clip(stacked.sum(0, keepdims=True), 1e-6, None)
    return stacked


def predict_cases(
    networks: List[torch.nn.Module],
    cases: list,
    run_dir: Path,
    config: dict,
    num_classes: int,
    device: torch.device,
    events,
    round_name: str = "final",
    iteration: Optional[int] = None,
    mc_samples: Optional[int] = None,
) -> dict:
    """Predict every prepared case; returns {case_id: score}. Networks are restored to their mode."""
    run_dir = Path(run_dir)
    mc = int(config["mc_dropout"] if mc_samples is None else mc_samples)
    region_cfg = config["regions"]
    modes = [net.training for net in networks]
    for net in networks:
        net.eval()  # the user's maps come from the deterministic network (decision D13)
    scores, regions = {}, {}
    autocast = torch.bfloat16 if (device.type == "cuda" and config.get("amp", "auto") != "off") else None
    try:
        for prepared in cases:
            started = time.perf_counter()
            image = torch.from_numpy(np.ascontiguousarray(prepared.image))

            def predict(volume, samples=0, case_id=prepared.id):
                return predict_probabilities(
                    networks,
                    volume,
                    tuple(config["patch_size"]),
                    num_classes,
                    overlap=sliding_window_overlap(config, device),
                    device=device,
                    sw_batch_size=int(config["sw_batch_size"]),
                    mc_samples=samples,
                    autocast_dtype=autocast,
                    on_notice=lambda message: events.emit("notice", case=case_id, message=message),
                )

            probs, mutual_info = predict(image, mc)
            if config.get("tta", "off") == "flips":  # MC dropout (if any) runs on the unflipped image only
                probs = flip_averaged(lambda volume: predict(volume)[0], image, first=probs)
            probs_ref = maps_on_reference(probs, prepared, renormalise=True)
            labelmap, top_probability = labels_and_confidence(probs_ref)
            removed = removed_by_postprocess(labelmap, config.get("postprocess", "off"))
            if removed.any():  # now background there: its expected error is 1 - p_background
                labelmap[removed] = 0
                top_probability[removed] = probs_ref[0][removed]
            entropy = normalised_entropy(torch.from_numpy(probs_ref)).numpy().astype(np.float32)
            outputs = write_case_maps(run_dir, prepared, labelmap, entropy, mutual_info)
            score = float(case_score(entropy, labelmap, num_classes))
            scores[prepared.id] = score
            wrong = 1.0 - top_probability  # expected-error estimate per voxel
            regions[prepared.id] = uncertain_regions(entropy, labelmap, prepared.reference, region_cfg, wrong,
                                                     num_classes=num_classes)
            events.emit(
                "prediction",
                case=prepared.id,
                score=round(score, 6),
                round=round_name,
                iteration=iteration,
                seconds=round(time.perf_counter() - started, 3),
                regions=len(regions[prepared.id]),
                **outputs,
            )
    finally:
        for net, mode in zip(networks, modes):
            net.train(mode)
    path = run_dir / "regions.json"
    meta = {"round": round_name, "iteration": iteration, "scores": scores,
            "case_order": rank_cases(scores, order="uncertainty"),
            "case_order_definition": "descending case score (see semisupseg.inference.scores.case_score)"}
    write_regions_json(path, regions, meta)
    events.emit("regions", path=str(path), round=round_name)
    return scores


def two_class_ceiling(num_classes: Optional[int]) -> float:
    """The highest normalised entropy H / ln C a voxel torn between two of C classes reaches: ln 2 / ln C
    (1 for two classes, 0.5 for four). Above it only voxels where three or more classes mix remain."""
    if num_classes is None or num_classes <= 2:
        return 1.0
    return math.log(2.0) / math.log(num_classes)


def region_thresholds(uncertainty: np.ndarray, region_cfg: dict, num_classes: Optional[int] = None) -> list:
    """Thresholds to try, strictest first: quantiles keeping max_fraction, 2x, 4x ... of the
    volume above them, never below ``threshold``, and finally ``threshold`` itself.

    A well-trained model is uncertain on a thin shell around the structure, well under
    ``max_fraction`` of the volume, so the fixed threshold applies at once; an early model is
    uncertain almost everywhere, and a quantile then keeps regions local instead of one region
    covering the whole volume. With ``num_classes`` > 2 the threshold is at most
    ``two_class_ceiling``: a threshold tuned on two classes (LA: 0.7) would otherwise keep only
    near three-way ties of a multi-class model.
    """
    base = min(float(region_cfg["threshold"]), two_class_ceiling(num_classes))
    fraction = float(region_cfg.get("max_fraction", 1.0))
    thresholds = []
    while fraction < 1.0:
        thresholds.append(max(base, float(np.quantile(uncertainty, 1.0 - fraction))))
        fraction *= 2
    thresholds.append(base)
    return list(dict.fromkeys(thresholds))  # in order, without repeats


def uncertain_regions(uncertainty: np.ndarray, labelmap: np.ndarray, reference, region_cfg: dict,
                      error_probability: Optional[np.ndarray] = None, return_masks: bool = False,
                      num_classes: Optional[int] = None):
    """Ranked regions at the strictest threshold that yields any (see ``region_thresholds``).

    ``error_probability`` (e.g. 1 - max_c p_c) ranks the regions by expected errors; None ranks
    by the map itself. ``num_classes``: C of a normalised-entropy map (caps the threshold).
    With ``return_masks``: (regions, [(lo, mask)]) as ``find_uncertain_regions``.
    """
    found = ([], []) if return_masks else []
    for threshold in region_thresholds(uncertainty, region_cfg, num_classes):
        found = find_uncertain_regions(
            uncertainty,
            labelmap,
            reference,
            threshold=threshold,
            min_volume_mm3=region_cfg["min_volume_mm3"],
            max_regions=region_cfg["max_regions"],
            boundary_weight=region_cfg.get("boundary_weight", 0.0),
            max_class_weight=region_cfg.get("max_class_weight", 10.0),
            max_extent_mm=region_cfg.get("max_extent_mm", 20.0),
            density_mm=region_cfg.get("density_mm", 6.0),
            error_probability=error_probability,
            return_masks=return_masks,
            placement=region_cfg.get("placement", "shell_pieces"),
        )
        regions = found[0] if return_masks else found
        if regions:
            for region in regions:
                region["threshold"] = round(threshold, 6)
            break
    return found


def write_case_maps(run_dir: Path, prepared, labelmap: np.ndarray, entropy: np.ndarray, mutual_info) -> dict:
    """Write the label map (uint8) and maps (float32) on the reference grid; returns their paths."""
    reference = prepared.reference
    out = {
        "segmentation": run_dir / "predictions" / f"{prepared.id}.nii.gz",
        "uncertainty": run_dir / "uncertainty" / f"{prepared.id}.nii.gz",
    }
    write_image_atomic(from_array(labelmap, reference), out["segmentation"])
    write_image_atomic(from_array(entropy, reference), out["uncertainty"])
    if mutual_info is not None:
        mi = maps_on_reference(mutual_info[None].float(), prepared, renormalise=False)[0]
        out["mutual_information"] = run_dir / "mutual_information" / f"{prepared.id}.nii.gz"
        write_image_atomic(from_array(mi.astype(np.float32), reference), out["mutual_information"])
    return {k: str(v) for k, v in out.items()}
