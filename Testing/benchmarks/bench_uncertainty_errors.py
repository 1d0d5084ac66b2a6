"""Does the map point at the errors? Each uncertainty source as a score of "this voxel is wrong", and its regions.

On a trained run whose held-out cases have ground truth (the DyCON run of bench_la.py when it
exists, else a short CPU-scale DyCON run on the LA development protocol trained here), every
held-out case is predicted here, in this process, with the run's final networks, once per
uncertainty source (semisupseg.inference.uncertainty_sources: entropy, mutual_information
(MC dropout), disagreement (student vs teacher), flip_tta). The errors are those of the plain
prediction the annotator sees (argmax of the inference networks' mean softmax), on the image grid;
with --tta flips, that prediction is the engine's with config tta "flips" (the mean over the trained
flips), and the entropy source is that mean's entropy (column ``prediction``).
Per source and case:
  - AUROC of the map for "this voxel is wrong" (rank-based, ties one half; pooled over cases on a
    random subsample of --pooled-voxels voxels per case) and for far errors only (errors farther
    than 3 mm from the predicted boundary, against every other voxel);
  - the top-5 regions as the engine finds them on that map (inference.predictor.uncertain_regions,
    the run's region settings): the share of the case's errors and far errors inside the union of
    their boxes, the share of the volume the boxes cover, against boxes of the same sizes centred
    on random voxels of the predicted boundary band (within 2 voxels of a label change: where a
    careful annotator would look anyway; mean of --draws draws) and placed anywhere;
  - every region's extent along the image axes (mm) and whether its jump target lies in it;
  - the seconds the source took for the case (on top of nothing: each source predicts anew).
Summary rows pool the error shares over cases, weighted by each case's error count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
import bench_la  # noqa: E402

BENCHMARK = "uncertainty_errors"


def find_run(workspace: Path) -> Path | None:
    """The newest finished DyCON run of bench_la.py; a full-resolution GPU run (gpufull-*) when there is one."""
    runs = [d for d in (workspace / "runs").glob("*-dycon-it*") if bc.run_finished(d)]
    runs.sort(key=lambda d: (d.name.startswith("gpufull"), (d / "events.jsonl").stat().st_mtime))
    return runs[-1] if runs else None


def train_short_run(workspace: Path, iterations: int, threads) -> Path:
    config = bench_la.run_config(bench_la.CPU_SETTING, "dycon", 8, iterations, "auto", bench_la.DEFAULT_SEED)
    run_id = bench_la.run_id_for(bench_la.CPU_SETTING, "dycon", "unet3d", 8, iterations)
    code, _events, _wall = bc.train_subprocess(workspace, config, run_id, threads=threads)
    if code != 0:
        raise RuntimeError(f"training {run_id} failed with exit code {code}")
    return workspace / "runs" / run_id


def top_boxes(regions: list, k: int) -> list:
    ranked = sorted(regions, key=lambda r: r.get("rank", 0))[:k]
    return [(r["bbox_voxels"]["min"], r["bbox_voxels"]["max"]) for r in ranked]


def boxes_around(centres: np.ndarray, boxes: list, shape, rng) -> list:
    """Boxes of the given sizes centred on random rows of ``centres`` (N, 3), shifted inside ``shape``."""
    placed = []
    for lo, hi in boxes:
        size = np.array(hi) - np.array(lo) + 1
        centre = centres[rng.integers(len(centres))]
        start = np.clip(centre - size // 2, 0, np.maximum(np.array(shape) - size, 0))
        placed.append((start.tolist(), (start + size - 1).tolist()))
    return placed


FAR_MM = 3.0  # an error farther than this from the predicted boundary is a "far" error


def far_from_boundary(pred: np.ndarray, spacing) -> np.ndarray:
    """Voxels farther than FAR_MM from the predicted boundary (Euclidean, in mm)."""
    from scipy import ndimage
    from semisupseg.inference.regions import boundary_band

    edge = boundary_band(pred, 1)
    if not edge.any():
        return np.ones(pred.shape, dtype=bool)
    return ndimage.distance_transform_edt(~edge, sampling=spacing) > FAR_MM


# Cached maps of a source whose definition changed get a new file name: flip_tta's flips became
# the trained ones (none, x, y, x+y) on 2026-11-28; files without the tag hold the z-flip set.
CACHE_TAGS = {"flip_tta": "-xy"}


class CasePredictor:
    """The run's networks on one prepared case, with the sliding-window settings of the run."""

    def __init__(self, method, config: dict, num_classes: int, device):
        from semisupseg.config import sliding_window_overlap

        self.method, self.config, self.num_classes, self.device = method, config, num_classes, device
        self.overlap = sliding_window_overlap(config, device)

    def __call__(self, networks, image, mc_samples: int):
        from semisupseg.inference.sliding_window import predict_probabilities

        return predict_probabilities(networks, image, tuple(self.config["patch_size"]), self.num_classes,
                                     overlap=self.overlap, device=self.device,
                                     sw_batch_size=int(self.config["sw_batch_size"]), mc_samples=mc_samples)


def region_figures(regions, masks, errors, far, band_voxels, top: int, draws: int, rng) -> dict:
    """Error capture of the top regions' boxes against boundary-random and anywhere-random boxes."""
    boxes = top_boxes(regions, top)
    out = {"regions": len(regions),
           "max_extent_mm": max((max(r["extent_mm"]) for r in regions), default=0.0),
           "targets_inside": int(sum(bool(m[tuple(np.array(r["center_voxel"]) - lo)])
                                     for r, (lo, m) in zip(regions, masks))),
           "targets_total": len(regions)}
    if not boxes:
        return out
    covered = np.zeros(errors.shape, dtype=bool)
    for lo, hi in boxes:
        covered[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] = True
    out["box_volume_share"] = float(covered.mean())
    out["errors_in_top"] = bc.fraction_in_boxes(errors, boxes)
    out["far_errors_in_top"] = bc.fraction_in_boxes(far & errors, boxes)
    out["errors_in_random"] = float(np.mean([bc.fraction_in_boxes(errors, bc.random_boxes_like(boxes, errors.shape, rng))
                                             for _ in range(draws)]))
    if len(band_voxels):
        placed = [boxes_around(band_voxels, boxes, errors.shape, rng) for _ in range(draws)]
        out["errors_in_boundary"] = float(np.mean([bc.fraction_in_boxes(errors, b) for b in placed]))
        out["far_errors_in_boundary"] = float(np.mean([bc.fraction_in_boxes(far & errors, b) for b in placed]))
    return out


def oracle_figures(errors: np.ndarray, pred: np.ndarray, band_voxels, reference, region_cfg: dict, top: int,
                   draws: int, rng) -> dict:
    """What boxes could hold if the errors were known: the top-k boxes of side max_extent_mm
    placed greedily on the true error map (centres anywhere, no overlap: the engine's
    ``error_boxes`` placement fed the truth), against boundary-random boxes of the same sizes.
    It bounds the ratio any uncertainty map can reach with boxes of that size on this prediction."""
    from semisupseg.inference.regions import find_uncertain_regions

    regions = find_uncertain_regions(np.ones(errors.shape, np.float32), pred, reference, threshold=0.5,
                                     min_volume_mm3=0.0, max_regions=top, placement="error_boxes",
                                     max_extent_mm=region_cfg.get("max_extent_mm", 20.0),
                                     error_probability=errors.astype(np.float32), class_weights={})
    boxes = top_boxes(regions, top)
    placed = [boxes_around(band_voxels, boxes, errors.shape, rng) for _ in range(draws)] if len(band_voxels) else []
    return {"errors_in_top": bc.fraction_in_boxes(errors, boxes),
            "errors_in_boundary": float(np.mean([bc.fraction_in_boxes(errors, b) for b in placed])) if placed else float("nan")}


def display_tint(entropy: np.ndarray, errors: np.ndarray) -> dict:
    """What the Slicer module tints (its per-case display threshold, SemiSupSegLib.results_loader):
    the share of the volume and the share of the case's errors under the tint."""
    sys.path.insert(0, str(bc.REPO / "SemiSupSeg"))
    from SemiSupSegLib.results_loader import displayThreshold  # Qt-free: reads only numpy

    tinted = entropy > displayThreshold(entropy)
    return {"display_threshold": float(displayThreshold(entropy)), "tinted_share": float(tinted.mean()),
            "errors_under_tint": float(errors[tinted].sum() / max(int(errors.sum()), 1))}


def analyse_case(prepared, truth: np.ndarray, predictor: CasePredictor, sources, region_cfg, args, rng):
    """Per-source figures of one case, and the pooled-AUROC samples {source: (scores, errors, far)}."""
    import time

    import torch
    from semisupseg.inference.predictor import maps_on_reference, uncertain_regions
    from semisupseg.inference.regions import boundary_band
    from semisupseg.inference.flip_averaging import flip_averaged
    from semisupseg.inference.uncertainty import normalised_entropy
    from semisupseg.inference.uncertainty_sources import source_map

    image = torch.from_numpy(np.ascontiguousarray(prepared.image))
    reference = prepared.reference
    pred = errors = far = band = pick = None
    row, samples = {"case": prepared.id}, {}
    for source in sources:
        engine_tta = source == "entropy" and args.tta == "flips"  # the engine's prediction with config tta
        tag = "-tta" if engine_tta else CACHE_TAGS.get(source, "")
        cache = args.cache_dir / f"{prepared.id}-{source}{tag}.npz" if args.cache_dir else None
        if cache is not None and cache.exists():  # region variants re-use the maps (--region-config)
            stored = np.load(cache)
            value_ref, probs_ref, seconds = stored["value"], stored["probs"], float(stored["seconds"])
        else:
            started = time.perf_counter()
            if engine_tta:  # what predict_cases writes with "tta": "flips": the flip mean and its entropy
                probs = flip_averaged(lambda v: predictor(predictor.method.inference_networks(), v, 0)[0], image)
                value = normalised_entropy(probs)
            else:
                value, probs = source_map(source, predictor.method, image, predictor, mc_samples=args.mc_samples)
            value_ref = maps_on_reference(value[None].float(), prepared, renormalise=False)[0]
            probs_ref = maps_on_reference(probs, prepared, renormalise=True)
            seconds = time.perf_counter() - started
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cache, value=value_ref.astype(np.float16), probs=probs_ref.astype(np.float16), seconds=seconds)
        value_ref = value_ref.astype(np.float32)
        probs_ref = probs_ref.astype(np.float32)
        if pred is None:  # entropy (first) fixes the plain prediction and its errors
            pred = probs_ref.argmax(0).astype(np.int64)
            errors = pred != truth
            far = errors & far_from_boundary(pred, reference.GetSpacing())
            band = np.argwhere(boundary_band(pred, 2))
            pick = rng.choice(errors.size, size=min(args.pooled_voxels, errors.size), replace=False)
            row.update(voxels=int(errors.size), error_voxels=int(errors.sum()), far_error_voxels=int(far.sum()))
            # its own generator: the other columns' random boxes stay those of runs without the oracle
            row["oracle"] = oracle_figures(errors, pred, band, reference, region_cfg, args.top, args.draws,
                                           np.random.default_rng(1))
        # Regions rank by expected errors of the shown prediction: 1 - p(pred) under the source's
        # probabilities for the entropy map (= 1 - max_c p_c: what the engine does) or with --rank-by
        # probs (flip_tta: the flip average's chance that the plain label is wrong); the map itself
        # otherwise (--rank-by map).
        by_probs = args.rank_by == "probs" or (args.rank_by == "auto" and source == "entropy")
        wrong = 1.0 - np.take_along_axis(probs_ref, pred[None], axis=0)[0] if by_probs else value_ref
        regions, masks = uncertain_regions(value_ref, pred, reference, region_cfg, wrong, return_masks=True,
                                           num_classes=probs_ref.shape[0])
        figures = {"seconds": round(seconds, 2), "auroc": bc.auroc(value_ref, errors),
                   "auroc_far": bc.auroc(value_ref, far) if far.any() else float("nan"),
                   **region_figures(regions, masks, errors, far, band, args.top, args.draws, rng)}
        if source == "entropy":
            figures.update(display_tint(value_ref, errors))
        row[source] = figures
        samples[source] = (value_ref.ravel()[pick], errors.ravel()[pick], far.ravel()[pick])
    return row, samples


def pooled_share(rows, source: str, key: str, weight: str):
    """Share pooled over cases, weighted by each case's count ``weight`` (e.g. error voxels)."""
    pairs = [(r[source][key], r[weight]) for r in rows if key in r.get(source, {}) and r[weight] > 0
             and np.isfinite(r[source][key])]
    den = sum(w for _v, w in pairs)
    return round(sum(v * w for v, w in pairs) / den, 4) if den else None


def summary_record(source, rows, samples, args, common, device) -> dict:
    scores = np.concatenate([s[source][0] for s in samples])
    errors = np.concatenate([s[source][1] for s in samples])
    far = np.concatenate([s[source][2] for s in samples])
    top = pooled_share(rows, source, "errors_in_top", "error_voxels")
    boundary = pooled_share(rows, source, "errors_in_boundary", "error_voxels")
    oracle = pooled_share(rows, "oracle", "errors_in_top", "error_voxels")
    oracle_boundary = pooled_share(rows, "oracle", "errors_in_boundary", "error_voxels")
    return bc.record(
        BENCHMARK, "sources", f"{common['run']}:{source}", device, source=source, **common,
        auroc_pooled=round(bc.auroc(scores, errors), 4),
        auroc_far_pooled=round(bc.auroc(scores, far), 4) if far.any() else None,
        seconds_per_case=round(float(np.mean([r[source]["seconds"] for r in rows])), 2),
        top_k=args.top,
        box_volume_share=round(float(np.mean([r[source].get("box_volume_share", 0.0) for r in rows])), 4),
        errors_in_top=top, errors_in_boundary_boxes=boundary,
        errors_in_random_boxes=pooled_share(rows, source, "errors_in_random", "error_voxels"),
        top_over_boundary=round(top / boundary, 3) if top is not None and boundary else None,
        oracle_errors_in_top=oracle,
        tinted_share=round(float(np.mean([r[source]["tinted_share"] for r in rows])), 4)
        if all("tinted_share" in r[source] for r in rows) else None,
        errors_under_tint=pooled_share(rows, source, "errors_under_tint", "error_voxels"),
        oracle_over_boundary=round(oracle / oracle_boundary, 3) if oracle is not None and oracle_boundary else None,
        far_errors_in_top=pooled_share(rows, source, "far_errors_in_top", "far_error_voxels"),
        far_errors_in_boundary_boxes=pooled_share(rows, source, "far_errors_in_boundary", "far_error_voxels"),
        max_region_extent_mm=round(max(r[source]["max_extent_mm"] for r in rows), 2),
        regions_per_case_min=min(r[source]["regions"] for r in rows),
        targets_inside=f"{sum(r[source]['targets_inside'] for r in rows)}/{sum(r[source]['targets_total'] for r in rows)}",
        draws=args.draws, pooled_voxels_per_case=args.pooled_voxels,
    )


def main(argv=None) -> int:
    from semisupseg.inference.uncertainty_sources import SOURCES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a run folder (default: the DyCON run of bench_la.py)")
    p.add_argument("--iterations", type=int, default=bench_la.CPU_SETTING["iterations"],
                   help="iterations of the DyCON run trained here when bench_la.py has left none")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the fallback training run")
    p.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, from {','.join(SOURCES)}")
    p.add_argument("--mc-samples", type=int, default=4, help="MC-dropout passes for mutual_information (default 4)")
    p.add_argument("--top", type=int, default=5, help="regions per case (default 5)")
    p.add_argument("--draws", type=int, default=20, help="random box placements per case (default 20)")
    p.add_argument("--pooled-voxels", type=int, default=250_000, help="voxels per case in the pooled AUROC")
    p.add_argument("--cases", type=int, help="only the first N held-out cases")
    p.add_argument("--truth", type=Path, help="folder of <case>.nii.gz ground truth (default: the cases' own labels)")
    p.add_argument("--region-config", type=json.loads, default={},
                   help="JSON overriding the run's region settings, e.g. '{\"max_extent_mm\": 30}' (a variant)")
    p.add_argument("--variant", default="", help="name of the region variant in the record keys")
    p.add_argument("--tta", default="off", choices=["off", "flips"],
                   help="flips: the entropy source is the engine's prediction with config tta 'flips' (the "
                        "flip-averaged probabilities, their entropy; errors are that prediction's); name a --variant")
    p.add_argument("--rank-by", default="auto", choices=["auto", "probs", "map"],
                   help="expected errors that rank regions: 1 - p(plain label) under the source's probabilities "
                        "(probs; flip_tta's are the flip average) or the source's map (map); auto: probs for "
                        "entropy, map for the others")
    p.add_argument("--no-cache", action="store_true", help="predict again instead of reusing cached maps")
    p.add_argument("--quick", action="store_true", help="3 held-out cases, 5 draws")
    args = p.parse_args(argv)
    if args.quick:
        args.draws, args.cases = 5, 3
    root = bc.la_root()
    device = bc.resolve_device("auto")
    if root is None and args.run is None:
        bc.emit(bc.record(BENCHMARK, "status", "skipped", device, status="skipped: LA2018 folder absent"))
        return 0
    run_dir = args.run or find_run(bc.la_workspace(root))
    if run_dir is None:
        bc.log("no finished DyCON run of bench_la.py: training a short one")
        run_dir = train_short_run(bc.la_workspace(root), 4 if args.quick else args.iterations, args.threads)
    run_dir = Path(run_dir).resolve()

    from semisupseg.data.io import read_image, to_array
    from semisupseg.data.preprocess import prepare_case
    from semisupseg.inference.run_loader import load_run
    from semisupseg.training.case_split import split_cases

    method, config, spec, torch_device = load_run(run_dir)
    args.cache_dir = None if args.no_cache else bc.BENCH_DIR / "uncertainty_errors" / "maps" / run_dir.name
    region_cfg = {**config["regions"], **args.region_config}
    predictor = CasePredictor(method, config, spec.num_classes, torch_device)
    # entropy goes first: its probabilities are the plain prediction whose errors every source is scored on
    # (flip_tta's are the flip average, which labels some voxels differently)
    sources = ["entropy"] + [s for s in args.sources.split(",") if s and s != "entropy"]
    held = split_cases(spec, config["split"]).held_out[: args.cases]
    rng = np.random.default_rng(0)
    rows, samples = [], []
    for case in held:
        prepared = prepare_case(case, spec.modality, target_spacing=config["target_spacing"], with_label=False)
        truth_path = args.truth / f"{case.id}.nii.gz" if args.truth else case.label
        truth = to_array(read_image(truth_path)).astype(np.int64)
        row, sample = analyse_case(prepared, truth, predictor, sources, region_cfg, args, rng)
        rows.append(row)
        samples.append(sample)
        bc.log(f"{case.id}: " + "; ".join(
            f"{s} AUROC {row[s]['auroc']:.3f} top {row[s].get('errors_in_top', float('nan')):.3f} "
            f"bnd {row[s].get('errors_in_boundary', float('nan')):.3f} ({row[s]['seconds']:.0f} s)" for s in sources))
    run_key = run_dir.name + (f"+{args.variant}" if args.variant else "")
    common = {"run": run_key, "method": config["method"], "cases": len(rows),
              "iterations": bc.trained_iterations(run_dir, config["iterations"]),
              "regions_changed": json.dumps(args.region_config, separators=(",", ":")) if args.region_config else "run's own",
              "rank_by": args.rank_by, "prediction": "flip mean (tta flips)" if args.tta == "flips" else "plain"}
    per_case = bc.BENCH_DIR / "uncertainty_errors" / f"{run_key}-sources.json"
    per_case.parent.mkdir(parents=True, exist_ok=True)
    per_case.write_text(json.dumps(rows, indent=1, default=float))  # per-case figures stay out of the docs table
    bc.log(f"per-case figures: {per_case}")
    for source in sources:
        bc.emit(summary_record(source, rows, samples, args, {**common, "per_case": str(per_case.relative_to(bc.REPO))},
                               device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
