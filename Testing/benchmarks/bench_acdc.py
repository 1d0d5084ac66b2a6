"""ACDC benchmark: several classes (RV, myocardium, LV) in thin-slab cine MRI, protocol "acdc-dev".

Protocol (../shared/datasets/ACDC/README.md): labelled = the first 14 volumes of dataset.json
(7 patients; --labelled 8 for 4), unlabelled = volumes 15-120 (9-120 with 8), held out = volumes
121-140 (10 patients, never trained on). Each method trains with ``semisupseg train`` (the real
CLI, a subprocess) on the native 1.5 x 1.5 x 5 mm grid with the engine's automatic choices
(patch, spacing-planned pooling and kernels, class-aware sampling: config.json records them),
within a wall-time budget (``--time-budget``, default 20 minutes, final prediction included: the
engine's time_budget_min), and predicts the held-out volumes with its final networks. Dice per
class and the mean over classes (a class never predicted scores 0), HD95/ASD in mm on the nominal
spacing (approximate: the sources lost each patient's real spacing; Dice is unaffected).
The ``pp_`` columns score the same predictions after the engine's ``postprocess:
largest_foreground`` (inference/postprocess.py; a config option, off by default), so both figures
come from one trained run.

Runs go to .bench/acdc/workspace/runs/<run-id>; a finished run is reused (--retrain to redo it).
Skips (one JSON "skipped" record) when the ACDC folder is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
import bench_la as bl  # noqa: E402  (run reuse checks, thread count, case positions)

BENCHMARK = "acdc"
ACDC_DEFAULT = bc.REPO.parent / "shared" / "datasets" / "ACDC"
CLASSES = {1: "RV", 2: "MYO", 3: "LV"}
HELD_OUT = (121, 140)
UNLABELLED_END = 120
CPU_SETTING = {
    "name": "cpu",
    "network_options": {"widths": [8, 16, 32, 64, 128]},  # as LA's CPU scale
    "batch_labelled": 2,
    "batch_unlabelled": 2,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="supervised", help="comma-separated method names (e.g. supervised,dycon)")
    p.add_argument("--labelled", default="14", help="labelled volume counts, comma-separated (14 or 8)")
    p.add_argument("--time-budget", type=float, default=20.0, help="minutes per run, final prediction included")
    p.add_argument("--iterations", type=int, help="stop at this many iterations (default: only the time budget)")
    p.add_argument("--schedule", default="constant", choices=["constant", "poly"],
                   help="learning-rate schedule (poly decays to 0 at --iterations, or without it at the time "
                        "budget: schedule_to_budget)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="supervised only: predict with the EMA of the weights at this decay (method option ema_decay)")
    p.add_argument("--tta", default="off", choices=["off", "flips"],
                   help="final prediction averaged over the trained x / y flips (the engine's tta)")
    p.add_argument("--augmentation", default="standard", choices=["standard", "strong"],
                   help="training augmentation (the engine's augmentation option)")
    p.add_argument("--network", default="unet3d", choices=["unet3d", "unet2d"],
                   help="unet3d (pooling planned from the spacing) or unet2d (a 2D U-Net run slice by slice)")
    p.add_argument("--patch", help="patch x,y,z (default: the engine's automatic patch, recorded in the row)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=bl.DEFAULT_SEED, help="training seed")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for training (1 on the shared 2-core machine)")
    p.add_argument("--retrain", action="store_true", help="train again even if a finished run exists")
    p.add_argument("--quick", action="store_true", help="smoke test: 4 iterations, supervised only")
    return p.parse_args(argv)


def acdc_root():
    """The ACDC folder (env SEMISUPSEG_ACDC overrides ../shared/datasets/ACDC), or None."""
    root = Path(os.environ.get("SEMISUPSEG_ACDC", ACDC_DEFAULT))
    return root if (root / "dataset.json").is_file() and (root / "labelsTr").is_dir() else None


def acdc_workspace(root: Path) -> Path:
    """A workspace under .bench whose images and labels link to the shared, read-only ACDC."""
    ws = bc.BENCH_DIR / "acdc" / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    for name in ("imagesTr", "labelsTr"):
        if not (ws / name).exists():
            (ws / name).symlink_to(root.resolve() / name, target_is_directory=True)
    text = (root / "dataset.json").read_text()
    if not (ws / "dataset.json").exists() or (ws / "dataset.json").read_text() != text:
        (ws / "dataset.json").write_text(text)
    return ws


def run_config(method: str, labelled: int, args) -> dict:
    s = CPU_SETTING
    return {
        "method": method,
        "method_options": {"ema_decay": args.ema} if args.ema and method == "supervised" else {},
        "network": args.network,
        "network_options": dict(s["network_options"]),
        "iterations": args.iterations,  # None: until the time budget
        "time_budget_min": args.time_budget,
        "device": args.device,
        "seed": args.seed,
        "patch_size": [int(v) for v in args.patch.split(",")] if args.patch else None,
        "optimizer": {"schedule": args.schedule},
        # poly with only a time budget: the engine paces the decay to end at the budget
        "schedule_to_budget": args.schedule == "poly" and not args.iterations,
        "batch_labelled": s["batch_labelled"],
        "batch_unlabelled": s["batch_unlabelled"] if method != "supervised" else 0,
        "split": {"labelled": labelled, "unlabelled": f"{labelled + 1}-{UNLABELLED_END}",
                  "held_out": f"{HELD_OUT[0]}-{HELD_OUT[1]}"},
        "predict_cases": "held_out",
        "tta": args.tta,
        "augmentation": args.augmentation,
        "checkpoint_every": 100,
        "log_every": 10,
    }


def run_id_for(method: str, labelled: int, args) -> str:
    its = f"-it{args.iterations}" if args.iterations else ""
    patch = f"-p{args.patch.replace(',', 'x')}" if args.patch else ""
    schedule = "-poly" if args.schedule == "poly" else ""
    tta = "-tta" if args.tta == "flips" else ""
    ema = f"-ema{args.ema:g}" if args.ema and method == "supervised" else ""
    augmentation = "-strong" if args.augmentation == "strong" else ""
    network = "-2d" if args.network == "unet2d" else ""
    return (f"cpu-l{labelled}-{method}{network}-b{args.time_budget:g}min{its}{patch}{schedule}{ema}{tta}{augmentation}"
            f"{bl.seed_suffix(args.seed, '-')}")


def evaluate_held_out(run_dir: Path, truth_dir: Path, ids: list, postprocess: str = "off") -> dict:
    """evaluate_folders on the run's predictions of ``ids`` for classes 1-3; ``postprocess``: the
    engine's own post-processing (inference/postprocess.py) applied to them first, which is what
    the run would have written with that config (it acts on the saved label map alone)."""
    from semisupseg.data.io import from_array, read_image, to_array, write_image_atomic
    from semisupseg.evaluation.metrics import evaluate_folders
    from semisupseg.inference.postprocess import postprocessed

    with tempfile.TemporaryDirectory(dir=bc.BENCH_DIR) as tmp:
        for case in ids:
            source = (run_dir / "predictions" / f"{case}.nii.gz").resolve()
            if not source.exists():
                raise RuntimeError(f"{run_dir.name}: no prediction for {case}")
            if postprocess == "off":
                os.symlink(source, Path(tmp) / source.name)
            else:
                image = read_image(source)
                cleaned = from_array(postprocessed(to_array(image), postprocess), image)
                write_image_atomic(cleaned, Path(tmp) / source.name)
        return evaluate_folders(tmp, truth_dir, classes=sorted(CLASSES))


def class_figures(result: dict) -> dict:
    """Per class: mean Dice, its minimum over cases, cases where the class was never predicted
    (Dice 0 with a non-empty truth), HD95; and the mean Dice over the three classes."""
    import numpy as np

    out = {}
    for c, name in CLASSES.items():
        dices = [case[str(c)]["dice"] for case in result["cases"].values()]
        out[f"dice_{name}"] = round(float(np.mean(dices)), 4)
        out[f"min_dice_{name}"] = round(float(np.min(dices)), 4)
        out[f"missed_{name}"] = int(sum(d == 0.0 for d in dices))
        out[f"hd95_mm_{name}"] = round(float(result["mean"][str(c)]["hd95_mm"]), 2)
    out["dice_mean"] = round(float(np.mean([out[f"dice_{n}"] for n in CLASSES.values()])), 4)
    out["cases"] = len(result["cases"])
    return out


def postprocessed_figures(result: dict) -> dict:
    """The Dice figures of ``class_figures`` as ``pp_`` columns: the same predictions after the
    config option ``postprocess: largest_foreground``, scored in the same row."""
    figures = class_figures(result)
    keys = [f"{kind}_{name}" for name in CLASSES.values() for kind in ("dice", "min_dice")] + ["dice_mean"]
    return {f"pp_{key}": figures[key] for key in keys}


def train_and_score(workspace: Path, truth_dir: Path, method: str, labelled: int, args, device: str) -> None:
    config = run_config(method, labelled, args)
    run_id = run_id_for(method, labelled, args)
    run_dir = workspace / "runs" / run_id
    if run_dir.exists() and (args.retrain or not bc.run_finished(run_dir)):
        shutil.rmtree(run_dir)  # a killed timed run is not resumed: its budget would not mean the same
    if run_dir.exists():
        bl.check_reusable(run_dir, config)
    else:
        code, _events, _wall = bc.train_subprocess(workspace, config, run_id, threads=args.threads)
        if code != 0:
            raise RuntimeError(f"semisupseg train exited with {code} for {run_id}")
    events = bc.run_events(run_dir)
    finished = bc.training_finished(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    progress = [e for e in events if e.get("event") == "progress"]
    losses = progress[-1]["losses"] if progress else {}
    ids = bl.case_ids(workspace, *HELD_OUT)
    figures = class_figures(evaluate_held_out(run_dir, truth_dir, ids))
    figures.update(postprocessed_figures(evaluate_held_out(run_dir, truth_dir, ids, "largest_foreground")))
    key = (f"cpu|held_out|l{labelled}|{method}|budget{args.time_budget:g}|it{args.iterations or 'budget'}|"
           f"patch {args.patch or 'auto'}{'|poly' if args.schedule == 'poly' else ''}"
           f"{f'|ema {args.ema:g}' if args.ema and method == 'supervised' else ''}"
           f"{'|tta flips' if args.tta == 'flips' else ''}"
           f"{'|augmentation strong' if args.augmentation == 'strong' else ''}"
           f"{'|unet2d' if args.network == 'unet2d' else ''}{bl.seed_suffix(args.seed, '|')}")
    bc.emit(bc.record(
        BENCHMARK, "cpu_held_out", key, device,
        method=method, labelled=labelled, group=f"held_out ({HELD_OUT[0]}-{HELD_OUT[1]})", run=run_id,
        patch="x".join(map(str, saved["patch_size"])),
        network=saved["network"],
        pooling=pooling_text(saved),
        widths="-".join(map(str, saved["network_options"]["widths"])),
        patch_batch=f"{saved['batch_labelled']}+{saved['batch_unlabelled']}",
        threads=bl.trained_threads(events, args.threads or "default"),
        iterations=finished.get("iterations"),
        schedule=saved["optimizer"]["schedule"],
        tta=saved.get("tta", "off"),
        ema_decay=saved["method_options"].get("ema_decay", "-"),
        augmentation=saved.get("augmentation", bl.KEYS_ADDED_LATER["augmentation"]),
        run_seconds=round(float(finished.get("total_seconds", finished.get("seconds", 0.0))), 1),
        stopped_by=finished.get("stopped_by"),
        final_loss=round(float(losses.get("loss", float("nan"))), 3),
        **figures,
    ))


def pooling_text(saved: dict) -> str:
    """Per level x y z pooling ("221 222 ..."); the slice-wise 2D U-Net pools x and y only."""
    if saved["network"] == "unet2d":
        return "221 221 221 221"
    return " ".join("".join(map(str, p)) for p in saved["network_options"].get("pool_sizes", [[2, 2, 2]] * 4))


def main(argv=None) -> int:
    args = parse_args(argv)
    device = bc.resolve_device(args.device)
    root = acdc_root()
    if root is None:
        bc.log("ACDC not found (../shared/datasets/ACDC or $SEMISUPSEG_ACDC): skipped")
        bc.emit(bc.record(BENCHMARK, "status", "skipped", device, status="skipped: ACDC folder absent"))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.quick:
        args.iterations, methods = 4, ["supervised"]
    workspace = acdc_workspace(root)
    for labelled in [int(v) for v in args.labelled.split(",")]:
        for method in methods:
            train_and_score(workspace, root / "labelsTr", method, labelled, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
