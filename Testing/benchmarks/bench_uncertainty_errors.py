"""Does the uncertainty map find the errors? AUROC for voxel errors, and error capture of the top regions.

On a trained run whose held-out cases have ground truth (the DyCON run of bench_la.py when it
exists, else a short CPU-scale DyCON run on the LA development protocol trained here), for every
held-out case:
  - error = (predicted label != true label) per voxel, on the image grid the maps are written on;
  - AUROC of the normalised-entropy map as a score for "this voxel is wrong", over all voxels of
    the case (rank-based, ties as one half; bench_common.auroc), and pooled over the held-out cases
    on a random subsample of voxels (--pooled-voxels per case);
  - the share of the case's error voxels inside the union of the bounding boxes of the top-5
    regions of regions.json, against boxes of the same sizes placed at random (mean of --draws
    draws) (a) anywhere in the volume and (b) centred on a random voxel of the predicted boundary
    band (within 2 voxels of a label change; where a careful annotator would look anyway);
  - the same with the regions' own voxels instead of their boxes (components recomputed as the
    engine finds them), against the same shapes shifted to random positions: boxes of large,
    sprawling regions cover most of the volume and then say little.
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


def region_masks(unc: np.ndarray, regions: list, threshold: float, k: int) -> list:
    """The voxel masks of the top-k regions, cropped to their boxes: [(lo, mask (box-shaped bool))].

    regions.json keeps boxes, not masks; the components are recomputed exactly as the engine
    finds them (u > the region's own ``threshold`` when it records one, else the configured one;
    26-connected) and matched by box and voxel count.
    """
    from scipy import ndimage

    labelled = {}  # threshold -> (components, sizes)
    out = []
    for region in sorted(regions, key=lambda r: r.get("rank", 0))[:k]:
        t = float(region.get("threshold", threshold))
        if t not in labelled:
            components, _ = ndimage.label(unc > t, structure=np.ones((3, 3, 3), dtype=bool))
            labelled[t] = (components, np.bincount(components.ravel()))
        components, sizes = labelled[t]
        lo, hi = region["bbox_voxels"]["min"], region["bbox_voxels"]["max"]
        box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
        # The recorded threshold is rounded (6 decimals), so sizes may differ by a few voxels.
        candidates = [int(lab) for lab in np.unique(components[box]) if lab > 0]
        if not candidates:
            continue
        best = min(candidates, key=lambda lab: abs(int(sizes[lab]) - region["voxels"]))
        if abs(int(sizes[best]) - region["voxels"]) <= 0.02 * region["voxels"] + 2:
            out.append((np.array(lo), components[box] == best))
    return out


def errors_in_masks(errors: np.ndarray, placed: list) -> float:
    covered = np.zeros(errors.shape, dtype=bool)
    for lo, mask in placed:
        view = covered[tuple(slice(a, a + n) for a, n in zip(lo, mask.shape))]
        view |= mask
    total = int(errors.sum())
    return float((errors & covered).sum() / total) if total else float("nan")


def shifted_masks(masks: list, shape, rng) -> list:
    """The same region shapes at uniformly random positions fully inside the volume."""
    out = []
    for _lo, mask in masks:
        start = [int(rng.integers(0, max(n - m, 0) + 1)) for n, m in zip(shape, mask.shape)]
        out.append((np.array(start), mask))
    return out


def analyse_case(case_id, run_dir: Path, truth_dir: Path, regions: list, args, rng, threshold: float) -> dict:
    from semisupseg.data.io import read_image, to_array
    from semisupseg.inference.regions import boundary_band

    pred = to_array(read_image(run_dir / "predictions" / f"{case_id}.nii.gz")).astype(np.int64)
    unc = to_array(read_image(run_dir / "uncertainty" / f"{case_id}.nii.gz")).astype(np.float32)
    truth = to_array(read_image(truth_dir / f"{case_id}.nii.gz")).astype(np.int64)
    errors = pred != truth
    out = {"case": case_id, "voxels": int(errors.size), "error_voxels": int(errors.sum()), "error_rate": float(errors.mean()),
           "auroc_entropy": bc.auroc(unc, errors)}
    mi_path = run_dir / "mutual_information" / f"{case_id}.nii.gz"
    if mi_path.exists():
        out["auroc_mi"] = bc.auroc(to_array(read_image(mi_path)), errors)
    pick = rng.choice(errors.size, size=min(args.pooled_voxels, errors.size), replace=False)
    sample = (unc.ravel()[pick], errors.ravel()[pick])
    boxes = top_boxes(regions, args.top)
    out["regions"] = len(boxes)
    if boxes:
        covered = np.zeros(errors.shape, dtype=bool)
        for lo, hi in boxes:
            covered[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] = True
        out["box_volume_share"] = float(covered.mean())
        out["errors_in_top_regions"] = bc.fraction_in_boxes(errors, boxes)
        out["errors_in_random_boxes"] = float(np.mean(
            [bc.fraction_in_boxes(errors, bc.random_boxes_like(boxes, errors.shape, rng)) for _ in range(args.draws)]))
        masks = region_masks(unc, regions, threshold, args.top)
        out["region_threshold"] = float(regions[0].get("threshold", threshold)) if regions else threshold
        if masks:
            out["region_voxel_share"] = float(sum(m.sum() for _, m in masks) / errors.size)
            out["errors_in_top_region_voxels"] = errors_in_masks(errors, masks)
            out["errors_in_shifted_region_voxels"] = float(np.mean(
                [errors_in_masks(errors, shifted_masks(masks, errors.shape, rng)) for _ in range(args.draws)]))
        band = np.argwhere(boundary_band(pred, 2))
        if len(band):
            out["errors_in_boundary_boxes"] = float(np.mean(
                [bc.fraction_in_boxes(errors, boxes_around(band, boxes, errors.shape, rng)) for _ in range(args.draws)]))
    return out, sample


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a run folder (default: the DyCON run of bench_la.py)")
    p.add_argument("--iterations", type=int, default=bench_la.CPU_SETTING["iterations"],
                   help="iterations of the DyCON run trained here when bench_la.py has left none "
                        "(default: bench_la's CPU default)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the fallback training run")
    p.add_argument("--top", type=int, default=5, help="regions per case (default 5)")
    p.add_argument("--draws", type=int, default=20, help="random box placements per case (default 20)")
    p.add_argument("--pooled-voxels", type=int, default=250_000, help="voxels per case in the pooled AUROC")
    p.add_argument("--repredict", action="store_true",
                   help="first re-run `semisupseg predict` on the held-out cases (maps and regions.json from the "
                        "current engine; regions.json then lists only those cases)")
    p.add_argument("--quick", action="store_true", help="3 held-out cases, 5 draws")
    args = p.parse_args(argv)
    if args.quick:
        args.draws = 5
    root = bc.la_root()
    device = bc.resolve_device("auto")
    if root is None and args.run is None:
        bc.emit(bc.record(BENCHMARK, "status", "skipped", device, status="skipped: LA2018 folder absent"))
        return 0
    workspace = bc.la_workspace(root) if root is not None else None
    run_dir = args.run or find_run(workspace)
    if run_dir is None:
        bc.log("no finished DyCON run of bench_la.py: training a short one")
        run_dir = train_short_run(workspace, 4 if args.quick else args.iterations, args.threads)
    run_dir = Path(run_dir).resolve()
    config = json.loads((run_dir / "config.json").read_text())
    from semisupseg.data.dataset import load_dataset
    from semisupseg.training.case_split import split_cases

    spec = load_dataset(run_dir.parent.parent)
    held = [c.id for c in split_cases(spec, config["split"]).held_out]
    if args.quick:
        held = held[:3]
    if args.repredict:
        import subprocess

        command = bc.semisupseg_command() + ["predict", "--run", str(run_dir), "--cases", *held]
        bc.log(f"re-predicting {len(held)} held-out cases of {run_dir.name}")
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    truth_dir = (root / "labelsTr") if root is not None else run_dir.parent.parent / "labelsTr"
    regions = json.loads((run_dir / "regions.json").read_text())
    rng = np.random.default_rng(0)
    rows, scores, labels = [], [], []
    for case_id in held:
        row, (s, y) = analyse_case(case_id, run_dir, truth_dir, regions["cases"].get(case_id, []), args, rng,
                                   float(config["regions"]["threshold"]))
        rows.append(row)
        scores.append(s)
        labels.append(y)
        bc.log(f"{case_id}: AUROC {row['auroc_entropy']:.3f}, errors in top-{args.top} "
               f"{row.get('errors_in_top_regions', float('nan')):.3f} vs random {row.get('errors_in_random_boxes', float('nan')):.3f}")
    method = config["method"]
    common = {"run": run_dir.name, "method": method, "iterations": config["iterations"], "cases": len(rows)}
    per_case = bc.BENCH_DIR / "uncertainty_errors" / f"{run_dir.name}.json"
    per_case.parent.mkdir(parents=True, exist_ok=True)
    per_case.write_text(json.dumps(rows, indent=1))  # per-case figures stay out of the docs table
    bc.log(f"per-case figures: {per_case}")
    total_errors = sum(r["error_voxels"] for r in rows)
    with_regions = [r for r in rows if "errors_in_top_regions" in r]

    def pooled(key):
        # error-weighted: the share of all held-out error voxels captured
        num = sum(r[key] * r["error_voxels"] for r in with_regions if key in r)
        den = sum(r["error_voxels"] for r in with_regions if key in r)
        return round(num / den, 4) if den else None

    bc.emit(bc.record(
        BENCHMARK, "summary", run_dir.name, device, **common,
        auroc_entropy_pooled=round(bc.auroc(np.concatenate(scores), np.concatenate(labels)), 4),
        auroc_entropy_case_mean=round(float(np.nanmean([r["auroc_entropy"] for r in rows])), 4),
        auroc_entropy_case_min=round(float(np.nanmin([r["auroc_entropy"] for r in rows])), 4),
        error_rate=round(total_errors / sum(r["voxels"] for r in rows), 5),
        top_k=args.top, cases_with_regions=len(with_regions),
        box_volume_share=round(float(np.mean([r["box_volume_share"] for r in with_regions])), 4) if with_regions else None,
        errors_in_top_regions=pooled("errors_in_top_regions"),
        errors_in_random_boxes=pooled("errors_in_random_boxes"),
        errors_in_boundary_boxes=pooled("errors_in_boundary_boxes"),
        cases_with_region_masks=sum(1 for r in with_regions if "region_voxel_share" in r),
        region_voxel_share=round(float(np.nanmean([r.get("region_voxel_share", np.nan) for r in with_regions])), 4)
        if any("region_voxel_share" in r for r in with_regions) else None,
        errors_in_top_region_voxels=pooled("errors_in_top_region_voxels"),
        errors_in_shifted_region_voxels=pooled("errors_in_shifted_region_voxels"),
        draws=args.draws, pooled_voxels_per_case=args.pooled_voxels,
        per_case=str(per_case.relative_to(bc.REPO)),
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
