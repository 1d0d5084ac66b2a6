"""Time to quality: held-out Dice on LA after a Train click with a wall-time budget (issue 15).

What a user on a computer without an NVIDIA GPU gets from "train for T minutes": for each budget
T (default 5 and 20 minutes) one ``semisupseg train --time-budget T`` run on the LA development
protocol (8 labelled, cases 9-64 unlabelled, 65-80 held out) with the engine's own defaults (what
a Train click sends: on the CPU the 1.6 mm grid, U-Net 8-128, the automatic patch, batch 2+2, SGD
at 0.05; before 2026-11-28 the rows used ``bench_la.CPU_SETTING``, 1.25 mm grid and patch
64x64x48, and their variant names say so), which predicts the held-out cases at its end. The
engine stops training early enough for that prediction to fit the budget
(``semisupseg/training/time_budget.py``), so the run's wall time, from the process start to its
exit, is what the user waits. Each row: budget, wall time, iterations reached, why training
stopped, held-out Dice (``evaluate_folders``, class 1).

A *variant* is the same runs with configuration changes (``--variant NAME --set JSON``): every
lever of the issue (learning rate and schedule, optimiser, patch and batch, grid spacing, widths,
ramps) is one variant, compared with the ``default`` rows in the same table. Separate runs per
budget rather than checkpoints scored along one run: a run that knows its budget schedules
itself for it, and an intermediate prediction would take time from the training it measures.

Runs go to the LA benchmark's workspace (``.bench/la/workspace/runs/ttq-<variant>-...``); a
finished run is reused unless ``--retrain``, one killed half-way is trained again. ``--smoke`` runs the whole path on a small synthetic workspace with
tiny budgets (the test's size; its figures are not recorded in docs). Skips cleanly without
LA2018.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_common as bc  # noqa: E402
import bench_la  # noqa: E402

BENCHMARK = "time_to_quality"
LABELLED = 8
SMOKE_CONFIG = {"network_options": {"widths": [4, 8, 16, 32, 64]}, "patch_size": [32, 32, 16], "target_spacing": None,
                "split": {"labelled": 2, "unlabelled": "3-4", "held_out": "5-6"}, "checkpoint_every": 5}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", default="5,20", help="minutes, comma-separated (default 5,20)")
    p.add_argument("--variant", default="default", help="name of the configuration in the record keys")
    p.add_argument("--set", type=json.loads, default={}, dest="changes",
                   help="JSON merged into the run configuration, e.g. '{\"optimizer\": {\"lr\": 0.03}}' (a variant)")
    p.add_argument("--method", default="dycon")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=bench_la.DEFAULT_SEED)
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs (default: all cores, as a user has)")
    p.add_argument("--retrain", action="store_true", help="train again even when a finished run exists")
    p.add_argument("--smoke", action="store_true", help="synthetic data, budgets of seconds: the path, not figures")
    p.add_argument("--quick", action="store_true", help="same as --smoke (run_benchmarks.py --quick)")
    return p.parse_args(argv)


def run_config(args, minutes: float) -> dict:
    """The LA CPU-scale configuration with a time budget and the variant's changes.

    No iteration count: the run trains until the budget, as a Train click with a time budget does
    (``resolve_time_budget``: iterations 0, the schedules of a continuous run). An earlier version
    set 100 000 iterations, a finite run whose ramps (fractions of T) then never left 0.7 % of
    their end values: the semi-supervised losses were off in every budget row before 2026-11-28."""
    config = bench_la.run_config(bench_la.CPU_SETTING, args.method, LABELLED, None, args.device, args.seed)
    for key in bench_la.ENGINE_DECIDES:  # the LA benchmark's CPU scale fixes these; a Train click leaves them to the engine
        config.pop(key)
    config.update(time_budget_min=minutes, predict_cases="held_out")
    if args.smoke:
        config.update(SMOKE_CONFIG)
    config.update(args.changes)
    return config


def run_id_for(args, minutes: float) -> str:
    budget = f"{minutes:g}".replace(".", "p")
    return f"ttq-{args.variant}-{args.method}-{budget}min{bench_la.seed_suffix(args.seed, '-')}"


def train_with_budget(workspace: Path, args, minutes: float) -> tuple:
    """(run folder, wall seconds of the train process or None when reused)."""
    run_id = run_id_for(args, minutes)
    run_dir = workspace / "runs" / run_id
    if run_dir.exists() and (args.retrain or not bc.run_finished(run_dir)):
        shutil.rmtree(run_dir)  # a budget run killed half-way cannot be resumed with the same meaning
    if run_dir.exists():
        return run_dir, None
    code, _events, wall = bc.train_subprocess(workspace, run_config(args, minutes), run_id, threads=args.threads)
    if code != 0:
        raise RuntimeError(f"semisupseg train exited with {code} for {run_id}")
    return run_dir, wall


def score(run_dir: Path, workspace: Path, truth_dir: Path, held_out: list) -> dict:
    figures = bench_la.metric_figures(bench_la.evaluate_subset(run_dir, truth_dir, held_out))
    return {k: figures[k] for k in ("dice", "dice_sd", "hd95_mm", "cases")}


def record_for(args, minutes: float, run_dir: Path, wall, device: str, figures: dict) -> dict:
    events = bc.run_events(run_dir)
    finished = bc.training_finished(run_dir)
    started = [e for e in events if e.get("event") == "started"][0]
    config = json.loads((run_dir / "config.json").read_text())
    return bc.record(
        BENCHMARK, "budgets", f"{args.variant}|{args.method}|{minutes:g}min{bench_la.seed_suffix(args.seed, '|')}", device,
        variant=args.variant, seed=args.seed, changes=json.dumps(args.changes, separators=(",", ":")) if args.changes else "-",
        method=args.method, budget_min=minutes,
        wall_s=round(wall, 1) if wall is not None else "reused",
        run_s=round(float(finished.get("total_seconds", finished["seconds"])), 1),
        budget_used_s=finished.get("budget_used_s"), stopped_by=finished.get("stopped_by"),
        iterations=finished["iterations"], **figures,
        patch="x".join(map(str, config["patch_size"])), widths="-".join(map(str, config["network_options"].get("widths", []))),
        threads=args.threads or "default", device_in_run=started.get("device"), run=run_dir.name,
        load_average=bc.load_average(),
    )


def smoke_workspace() -> tuple:
    from semisupseg.data.synthetic import generate_synthetic_workspace

    workspace = bc.BENCH_DIR / "time_to_quality" / "smoke_workspace"
    if not (workspace / "dataset.json").is_file():
        generate_synthetic_workspace(workspace, n_labelled=2, n_unlabelled=2, n_test=2, size=(40, 40, 24), seed=3)
    return workspace, workspace / "truth"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.smoke = args.smoke or args.quick
    device = bc.resolve_device(args.device)
    if args.smoke:
        workspace, truth_dir = smoke_workspace()
        budgets = [0.25]
    else:
        root = bc.la_root()
        if root is None:
            bc.emit(bc.record(BENCHMARK, "status", "skipped", device, status="skipped: LA2018 folder absent"))
            return 0
        workspace, truth_dir = bc.la_workspace(root), root / "labelsTr"
        budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    held_out = bench_la.case_ids(workspace, 5, 6) if args.smoke else bench_la.case_ids(workspace, *bench_la.HELD_OUT)
    for minutes in budgets:
        started = time.perf_counter()
        run_dir, wall = train_with_budget(workspace, args, minutes)
        figures = score(run_dir, workspace, truth_dir, held_out)
        bc.log(f"{args.variant} {minutes:g} min: Dice {figures['dice']:.4f} "
               f"({time.perf_counter() - started:.0f} s with scoring)")
        bc.emit(record_for(args, minutes, run_dir, wall, device, figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
