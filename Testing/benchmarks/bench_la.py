"""LA2018 benchmark: every method (default: supervised, mean teacher, DyCON) on the development protocol.

Protocol (../shared/datasets/LA2018/README.md, "la-dev"): labelled = the first N cases of
dataset.json (N = 4 or 8), unlabelled = cases 9-64, held out = cases 65-80 (16 volumes, never
trained on). Each method trains with ``semisupseg train`` (a subprocess, the real CLI) and
predicts every case with its final networks (the teacher for mean teacher and DyCON: no
best-checkpoint selection). Predictions are scored with ``evaluation.metrics.evaluate_folders``
against labelsTr on
  - held_out:     cases 65-80 (generalisation),
  - transductive: cases 9-64, the unlabelled cases themselves (what an annotator receives).

Settings:
  - CPU scale (default): 1.25 mm grid, U-Net widths 8-128, patch 64x64x48, batch 2+2, a modest
    number of iterations (--iterations). Figures are for the CPU-scale models only.
  - --gpu-full: the literature-comparable setting: original 0.625 mm grid, full-width U-Net
    (16-256), patch 112x112x80, batch 4+4, 6000 iterations, plus one V-Net DyCON row.

Runs go to .bench/la/workspace/runs/<run-id>; a finished run is reused (--retrain to redo it).
Skips (one JSON "skipped" record) when the LA2018 folder is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

DEFAULT_SEED = 1337

BENCHMARK = "la"
CPU_SETTING = {
    "name": "cpu",
    "target_spacing": [1.25, 1.25, 1.25],
    "network": "unet3d",
    "network_options": {"widths": [8, 16, 32, 64, 128]},
    "patch_size": [64, 64, 48],
    "batch_labelled": 2,
    "batch_unlabelled": 2,
    # 300: each run under the 20-minute budget with both cores (DyCON 16.8 min, predictions of all
    # 80 cases included; docs/benchmarks.md); 80 iterations left DyCON far behind supervised-only.
    "iterations": 300,
    # The dual-network method builds a second, ResNet-34-encoder network itself: narrow it to the
    # same 8..128 channels as the U-Net so the comparison is at equal width.
    "method_options": {"dual_uncertainty": {"resnet_base_width": 8}},
}
GPU_FULL_SETTING = {
    "name": "gpufull",
    "target_spacing": None,
    "network": "unet3d",
    "network_options": {},
    "patch_size": [112, 112, 80],
    "batch_labelled": 4,
    "batch_unlabelled": 4,
    "iterations": 6000,
    "method_options": {},
}
HELD_OUT = (65, 80)
# What a Train click leaves to the engine (its CPU grid of at least 1.6 mm, automatic patch and batch):
# benchmarks that measure the engine's own defaults drop these keys from CPU_SETTING's run config.
ENGINE_DECIDES = ("target_spacing", "network_options", "patch_size", "batch_labelled", "batch_unlabelled",
                  "method_options")
UNLABELLED = (9, 64)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="supervised,mean_teacher,dycon", help="comma-separated method names")
    p.add_argument("--labelled", default="8", help="labelled case counts, comma-separated (e.g. 8 or 4,8)")
    p.add_argument("--iterations", type=int, help="training iterations (CPU default 300, --gpu-full 6000)")
    p.add_argument("--gpu-full", action="store_true", help="literature-comparable full-resolution setting (GPU)")
    p.add_argument("--no-vnet", action="store_true", help="with --gpu-full: skip the V-Net DyCON row")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"training seed; runs with another seed than "
                   f"{DEFAULT_SEED} get their own run folders and rows (suffix -sSEED)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for training (default: one per core); "
                   "1 is about twice as fast on a 2-core machine shared with other jobs")
    p.add_argument("--retrain", action="store_true", help="train again even if a finished run exists")
    p.add_argument("--quick", action="store_true", help="smoke test: 4 iterations, DyCON only")
    return p.parse_args(argv)


def run_config(setting: dict, method: str, labelled: int, iterations: int, device: str, seed: int) -> dict:
    return {
        "method": method,
        "method_options": dict(setting["method_options"].get(method, {})),
        "network": setting["network"],
        "network_options": setting["network_options"],
        "iterations": iterations,
        "device": device,
        "seed": seed,
        "patch_size": setting["patch_size"],
        "batch_labelled": setting["batch_labelled"],
        "batch_unlabelled": setting["batch_unlabelled"] if method != "supervised" else 0,
        "target_spacing": setting["target_spacing"],
        "split": {"labelled": labelled, "unlabelled": f"{UNLABELLED[0]}-{UNLABELLED[1]}",
                  "held_out": f"{HELD_OUT[0]}-{HELD_OUT[1]}"},
        "predict_cases": "all",
        "checkpoint_every": 25,  # a killed benchmark resumes (see train_and_score) and loses little
        "log_every": 10,
    }


# What makes two runs the same experiment: a finished run is reused only if these match.
RUN_IDENTITY_KEYS = ("method", "method_options", "network", "network_options", "iterations", "seed", "patch_size",
                     "batch_labelled", "batch_unlabelled", "target_spacing", "split", "augmentation")
# Keys that configurations gained after some runs were saved: what those runs trained with.
KEYS_ADDED_LATER = {"augmentation": "standard"}


def run_id_for(setting: dict, method: str, network: str, labelled: int, iterations: int,
               seed: int = DEFAULT_SEED) -> str:
    net = "" if network == "unet3d" else f"-{network}"
    return f"{setting['name']}-l{labelled}-{method}{net}-it{iterations}{seed_suffix(seed, '-')}"


def seed_suffix(seed: int, separator: str) -> str:
    """Nothing for the default seed (the names of earlier runs and rows stay valid), else e.g. ``-s7``."""
    return "" if seed == DEFAULT_SEED else f"{separator}s{seed}"


def _differs(saved, asked) -> bool:
    """Whether a saved (resolved) config value contradicts the asked one. None asks for the
    engine's automatic choice, and the engine adds keys of its own to a dict (network_options
    gains the spacing's pooling on thin slabs): neither is a difference."""
    if asked is None:
        return False
    if isinstance(asked, dict) and isinstance(saved, dict):
        return any(_differs(saved.get(key), value) for key, value in asked.items())
    return saved != asked


def check_reusable(run_dir: Path, config: dict) -> None:
    """Refuse to score a finished run that was trained with another configuration than ``config``."""
    saved_path = run_dir / "config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    saved = {**KEYS_ADDED_LATER, **saved}
    differ = [key for key in RUN_IDENTITY_KEYS if key in config and _differs(saved.get(key), config[key])]
    if differ:
        details = ", ".join(f"{key}: run has {saved.get(key)!r}, asked {config[key]!r}" for key in differ)
        raise SystemExit(f"{run_dir.name} was trained with another configuration ({details}). "
                         f"Pass --retrain to train it again, or remove {run_dir}.")


def trained_threads(events: list, fallback):
    """Intra-op threads the run was trained with, from its first "started" event ("cpu (x86_64, 2 threads)")."""
    started = next((e for e in events if e.get("event") == "started"), {})
    match = re.search(r"(\d+) threads?\)", str(started.get("device", "")))
    return int(match.group(1)) if match else fallback


def case_ids(workspace: Path, first: int, last: int) -> list:
    """Case ids at 1-based positions first..last of dataset.json (the protocol's numbering)."""
    from semisupseg.data.dataset import load_dataset

    cases = load_dataset(workspace).cases
    return [c.id for c in cases[first - 1 : last]]


def evaluate_subset(run_dir: Path, truth_dir: Path, ids: list) -> dict:
    """evaluate_folders on the run's predictions of ``ids`` only (symlinked into a temp folder)."""
    from semisupseg.evaluation.metrics import evaluate_folders

    with tempfile.TemporaryDirectory(dir=bc.BENCH_DIR) as tmp:
        missing = []
        for case in ids:
            source = run_dir / "predictions" / f"{case}.nii.gz"
            if source.exists():
                os.symlink(source, Path(tmp) / source.name)
            else:
                missing.append(case)
        if missing:
            raise RuntimeError(f"{run_dir.name}: no prediction for {len(missing)} cases, e.g. {missing[:3]}")
        return evaluate_folders(tmp, truth_dir, classes=[1])


def metric_figures(result: dict) -> dict:
    import numpy as np

    mean = result["mean"]["1"]
    dices = [c["1"]["dice"] for c in result["cases"].values()]
    return {
        "dice": round(mean["dice"], 4),
        "dice_sd": round(float(np.std(dices)), 4),
        "iou": round(mean["iou"], 4),
        "hd95_mm": round(mean["hd95_mm"], 2),
        "asd_mm": round(mean["asd_mm"], 2),
        "cases": len(dices),
    }


def paired_difference(ours: dict, theirs: dict) -> dict:
    """Paired comparison of per-case Dice {case: dice} on the cases both hold.

    mean_diff = mean(ours - theirs); ci95 = mean_diff -/+ t(0.975, n-1) * sd(diff, ddof=1) / sqrt(n)
    (Student's t interval of the mean paired difference); wins = cases where ours is higher.
    Paired, because case difficulty varies far more (Dice SD ~0.1) than methods do.
    """
    import numpy as np
    from scipy import stats

    cases = sorted(set(ours) & set(theirs))
    diff = np.array([ours[c] - theirs[c] for c in cases], dtype=np.float64)
    n = diff.size
    mean = float(diff.mean()) if n else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean_diff": mean, "ci95_low": mean - half, "ci95_high": mean + half,
            "wins": int((diff > 0).sum()), "cases": n}


def case_scores_path(run_id: str, group: str) -> Path:
    return bc.BENCH_DIR / "la" / "case_dice" / f"{run_id}-{group}.json"


def emit_paired(setting: dict, runs: list, device: str, seed: int = DEFAULT_SEED) -> None:
    """Each method against supervised-only and DyCON against mean teacher, per labelled count and group.

    ``runs``: (method, network, labelled, iterations, run_id) of this invocation.
    """
    import json

    baselines = [("supervised", None), ("mean_teacher", "dycon")]
    for group in ("held_out", "transductive"):
        for method, network, labelled, iterations, run_id in runs:
            for baseline, only in baselines:
                if method == baseline or (only and method != only):
                    continue
                base_id = run_id_for(setting, baseline, "unet3d", labelled, iterations, seed)
                ours, theirs = case_scores_path(run_id, group), case_scores_path(base_id, group)
                if not (ours.exists() and theirs.exists()):
                    continue
                figures = paired_difference(json.loads(ours.read_text()), json.loads(theirs.read_text()))
                key = (f"{setting['name']}|paired|{group}|l{labelled}|{method}|{network}|vs {baseline}|"
                       f"it{iterations}{seed_suffix(seed, '|')}")
                bc.emit(bc.record(BENCHMARK, f"{setting['name']}_paired_dice", key, device, group=group,
                                  labelled=labelled, method=method, network=network, versus=baseline,
                                  iterations=iterations, **{k: round(v, 4) if isinstance(v, float) else v
                                                            for k, v in figures.items()}))


def train_and_score(workspace, truth_dir, setting, method, network, labelled, iterations, args, device) -> None:
    config = run_config(setting, method, labelled, iterations, args.device, args.seed)
    config["network"] = network
    if network != "unet3d":
        config["network_options"] = {}
    run_id = run_id_for(setting, method, network, labelled, iterations, args.seed)
    run_dir = workspace / "runs" / run_id
    if run_dir.exists() and (args.retrain or not (run_dir / "checkpoints" / "last.pt").exists()):
        shutil.rmtree(run_dir)  # asked to redo it, or killed before its first checkpoint
    if run_dir.exists():
        check_reusable(run_dir, config)
    if not bc.run_finished(run_dir):
        # A run killed after a checkpoint continues from it (the engine's --resume) instead of
        # starting over; its "finished" event's total_seconds adds the earlier parts' time.
        resume = ["--resume"] if run_dir.exists() else []
        code, _events, wall = bc.train_subprocess(workspace, config, run_id, extra_args=resume, threads=args.threads)
        if code != 0:
            raise RuntimeError(f"semisupseg train exited with {code} for {run_id}")
    events = bc.run_events(run_dir)
    # Training's own events only: a later `semisupseg predict` on the run (bench_uncertainty_errors
    # --repredict) appends its own prediction and "finished" events to the same file.
    end = max(i for i, e in enumerate(events) if e.get("event") == "finished" and "iterations" in e)
    events = events[: end + 1]
    finished = events[-1]
    progress = [e for e in events if e.get("event") == "progress"]
    final_preds = [e for e in events if e.get("event") == "prediction" and e.get("round") == "final"]
    it_per_s = [p["it_per_s"] for p in progress[1:]] or [p["it_per_s"] for p in progress]
    timing = {
        "iterations": iterations,
        # Runs resumed from checkpoints written before total_seconds existed report their last part only.
        "run_seconds": round(float(finished.get("total_seconds", finished["seconds"])), 1),
        "it_per_s": round(float(sorted(it_per_s)[len(it_per_s) // 2]), 4) if it_per_s else None,
        "predict_s_per_case": round(sum(e["seconds"] for e in final_preds) / max(len(final_preds), 1), 2),
    }
    common = {
        "method": method,
        "network": network,
        "labelled": labelled,
        "setting": setting["name"],
        "patch": "x".join(map(str, config["patch_size"])),
        "spacing_mm": config["target_spacing"][0] if config["target_spacing"] else "native 0.625",
        "widths": "-".join(map(str, config["network_options"].get("widths", [16, 256])))
        if network == "unet3d" else "default",
        "run": run_id,
        "patch_batch": f"{config['batch_labelled']}+{config['batch_unlabelled']}",
        "threads": trained_threads(events, args.threads or "default"),
    }
    for group, (first, last) in (("held_out", HELD_OUT), ("transductive", UNLABELLED)):
        ids = case_ids(workspace, first, last)
        result = evaluate_subset(run_dir, truth_dir, ids)
        figures = metric_figures(result)
        scores_path = case_scores_path(run_id, group)
        scores_path.parent.mkdir(parents=True, exist_ok=True)
        scores_path.write_text(json.dumps({case: c["1"]["dice"] for case, c in result["cases"].items()}))
        key = f"{setting['name']}|{group}|l{labelled}|{method}|{network}|it{iterations}{seed_suffix(args.seed, '|')}"
        bc.emit(bc.record(BENCHMARK, f"{setting['name']}_{group}", key, device,
                          group=f"{group} ({first}-{last})", **common, **figures, **timing))
    return run_id


def main(argv=None) -> int:
    args = parse_args(argv)
    device = bc.resolve_device(args.device)
    root = bc.la_root()
    if root is None:
        bc.log("LA2018 not found (../shared/datasets/LA2018 or $SEMISUPSEG_LA2018): skipped")
        bc.emit(bc.record(BENCHMARK, "status", "skipped", device, status="skipped: LA2018 folder absent"))
        return 0
    setting = dict(GPU_FULL_SETTING if args.gpu_full else CPU_SETTING)
    iterations = args.iterations or setting["iterations"]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.quick:
        iterations, methods = 4, ["dycon"]
    if args.gpu_full and device == "cpu":
        bc.log("--gpu-full on a CPU-only machine: this would take days; refusing")
        bc.emit(bc.record(BENCHMARK, "status", "gpufull-skipped", device, status="skipped: --gpu-full needs a GPU"))
        return 0
    workspace = bc.la_workspace(root)
    truth_dir = root / "labelsTr"
    runs = []
    for labelled in [int(v) for v in args.labelled.split(",")]:
        for method in methods:
            run_id = train_and_score(workspace, truth_dir, setting, method, "unet3d", labelled, iterations, args, device)
            runs.append((method, "unet3d", labelled, iterations, run_id))
        if args.gpu_full and not args.no_vnet and not args.quick:
            run_id = train_and_score(workspace, truth_dir, setting, "dycon", "vnet", labelled, iterations, args, device)
            runs.append(("dycon", "vnet", labelled, iterations, run_id))
    emit_paired(setting, runs, device, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
