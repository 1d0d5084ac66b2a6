"""``semisupseg demo``: the whole loop in one command, on synthetic data or on LA2018.

1. data: the project's synthetic generator (deterministic) or a given dataset folder;
2. DyCON training on the CPU within a time budget (CPU-scale settings below; the budget counts
   the prediction too, so the command ends within a few minutes whatever the machine);
3. label maps and entropy maps for every case, regions.json;
4. evaluation against the ground truth the user never gave the model (held-out cases);
5. an overview PNG (image, prediction outline, entropy heat map), whose path is printed.

Ctrl-C stops the training after the current iteration with a checkpoint; the demo then says so
and exits with 130, and the next ``semisupseg demo`` (``make demo``) resumes that run instead of
starting over. A finished demo run is replaced by a fresh one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from .config import save_json_atomic
from .events import log

# CPU-scale settings: a narrower U-Net (widths 8-128) so that a few hundred iterations fit in
# minutes on a 2-core machine (the full-width network is the GPU default). Grid, patch and
# learning rate are the engine's CPU defaults: the synthetic volumes (80x80x48 at 1x1x1.5 mm) and
# LA's crops train on the 1.6 mm grid (data/training_grid.py) with the automatic patch.
# DEMO_MINUTES bounds the whole run, its final prediction included (training/time_budget.py), so
# `make demo` ends within 5 minutes once the venv exists; `iterations` caps it on a fast machine.
DEMO_MINUTES = 4.0
SYNTHETIC_CONFIG = {
    "method": "dycon",
    "iterations": 200,
    "time_budget_min": DEMO_MINUTES,
    "network_options": {"widths": [8, 16, 32, 64, 128]},
    "batch_labelled": 2,
    "batch_unlabelled": 2,
    "log_every": 10,
    "checkpoint_every": 100,
}
# LA2018, development protocol (its README): 8 labelled, cases 9-64 unlabelled, 65-80 held out.
LA_CONFIG = {
    **SYNTHETIC_CONFIG,
    "split": {"labelled": 8, "unlabelled": "9-64", "held_out": "65-80"},
    "predict_cases": "held_out",
}


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="synthetic (or given) data -> DyCON training -> maps -> overview PNG")
    p.add_argument("--data", type=Path, help="dataset folder (default: generate synthetic data)")
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    p.add_argument("--iterations", type=int, help="at most this many training iterations (default 200)")
    p.add_argument("--minutes", type=float,
                   help=f"time budget of the run, prediction included (default {DEMO_MINUTES:g}; 0: none)")
    p.add_argument("--method", default="dycon", help="training method (default dycon)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def run_demo(args) -> int:
    from .data.synthetic import generate_synthetic_workspace
    from .training.trainer import train_workspace

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        workspace = out / "workspace"
        if not (workspace / "dataset.json").is_file():  # deterministic: an earlier demo's data is the same
            log(f"generating synthetic data in {workspace}")
            generate_synthetic_workspace(workspace, n_labelled=4, n_unlabelled=8, n_test=4, seed=0)
        truth_dir = workspace / "truth"
        config = dict(SYNTHETIC_CONFIG)
    else:
        workspace = args.data.resolve()
        truth_dir = workspace / "labelsTr" if (workspace / "labelsTr").is_dir() else None
        config = dict(LA_CONFIG)
    config["method"] = args.method
    config["device"] = args.device
    if args.iterations:
        config["iterations"] = args.iterations
    if args.minutes is not None:
        config["time_budget_min"] = args.minutes or None
    config_path = out / "demo_config.json"
    save_json_atomic(config, config_path)
    run_id = f"demo-{config['method']}"
    run_dir = workspace / "runs" / run_id
    cancelled_at = cancelled_iteration(run_dir)
    if cancelled_at is not None:
        log(f"resuming the demo run cancelled at iteration {cancelled_at} ({run_dir})")
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # the demo's own run folder, finished or never checkpointed: start afresh
    # A resumed run keeps its own configuration; this demo's iteration cap and budget still apply.
    overrides = {"iterations": config["iterations"], "time_budget_min": config.get("time_budget_min")} \
        if cancelled_at is not None else {}
    status = train_workspace(workspace, config_path, overrides, run_id, cancelled_at is not None, args.events)
    if status == "cancelled":
        log(f"demo cancelled; its checkpoint is kept in {run_dir / 'checkpoints'}. "
            "Run `make demo` (or `semisupseg demo` with the same options) again to resume it.")
        return 130
    summary = summarise(workspace, run_dir, truth_dir, out)
    print(json.dumps(summary, indent=1))
    log(f"overview image: {summary['overview_png']}")
    return 0


def cancelled_iteration(run_dir: Path) -> Optional[int]:
    """The iteration of a demo run that has a checkpoint but no ``finished`` event, else None."""
    events_path = run_dir / "events.jsonl"
    if not (run_dir / "checkpoints" / "last.pt").is_file() or not events_path.is_file():
        return None
    iteration = 0
    for line in events_path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # a line cut by the kill: the checkpoint, not the log, is what resumes
            continue
        if event.get("event") == "finished":
            return None
        if event.get("event") == "checkpoint":
            iteration = int(event.get("iteration", iteration))
    return iteration


def summarise(workspace: Path, run_dir: Path, truth_dir, out: Path) -> dict:
    """Evaluate against the ground truth (when known) and render the overview PNG."""
    from .data.dataset import load_dataset
    from .evaluation.metrics import evaluate_folders
    from .training.case_split import split_cases
    from .visualize import render_overview

    spec = load_dataset(workspace)
    config = json.loads((run_dir / "config.json").read_text())
    split = split_cases(spec, config["split"])
    predicted = sorted(p.name.split(".")[0] for p in (run_dir / "predictions").glob("*.nii.gz"))
    summary = {"workspace": str(workspace), "run": str(run_dir), "cases_predicted": len(predicted)}
    shown = [c for c in (split.held_out or split.unlabelled) if c.id in predicted][:3]
    rows = []
    for case in shown:
        truth = truth_dir / case.image.name if truth_dir is not None else None
        if truth is not None and not truth.exists():
            truth = truth_dir / f"{case.id}.nii.gz"
        rows.append((case.id, case.image, run_dir / "predictions" / f"{case.id}.nii.gz",
                     run_dir / "uncertainty" / f"{case.id}.nii.gz", truth if truth and truth.exists() else None))
    if truth_dir is not None and truth_dir.is_dir():
        result = evaluate_folders(run_dir / "predictions", truth_dir)
        held = {c.id for c in split.held_out}
        dice = {case: {cls: round(m["dice"], 4) for cls, m in values.items()} for case, values in result["cases"].items()}
        held_dice = [d for case, values in dice.items() if case in held for d in values.values()]
        summary["held_out_dice"] = {case: values for case, values in dice.items() if case in held}
        if held_dice:
            summary["held_out_mean_dice"] = round(sum(held_dice) / len(held_dice), 4)
        save_json_atomic(result, out / "evaluation.json")
        summary["evaluation_json"] = str(out / "evaluation.json")
    png = out / "overview.png"
    render_overview(rows, png)
    summary["overview_png"] = str(png)
    return summary
