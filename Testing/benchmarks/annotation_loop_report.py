"""The annotation-loop benchmark's comparisons and plot (``bench_annotation_loop.py``).

Paired held-out Dice of the uncertain regions against each other strategy at the last round
(cases x seeds, ``bench_la.paired_difference``), issue 13's target per seed (strategy 1 reaches
strategy 2's final Dice with at most half its edited voxels), and the plot of held-out Dice against
cumulative edited voxels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
import bench_la  # noqa: E402
from annotation_simulator import STRATEGIES  # noqa: E402

BENCHMARK = "annotation_loop"


def table_name(source, table: str) -> str:
    """The record table of ``source``: ``smoke_<table>`` for the smoke data, ``<table>_<variant>`` for a variant."""
    name = table if not source.name.startswith("smoke") else f"smoke_{table}"
    return f"{name}_{source.variant}" if source.variant else name


def per_case_dice(source, seed: int, strategy: str, round_index: int) -> Dict[str, float]:
    path = bc.BENCH_DIR / BENCHMARK / f"{source.name}-s{seed}" / strategy / "dice" / f"round{round_index}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def emit_comparisons(source, args, rows: List[dict], device: str) -> None:
    """Paired held-out Dice at the last round (cases x seeds) and the issue's target per seed."""
    seeds = sorted({r["seed"] for r in rows})
    last = args.rounds
    for strategy in args.strategies:
        if strategy == "uncertain_regions" or "uncertain_regions" not in args.strategies:
            continue
        ours, theirs = {}, {}
        for seed in seeds:
            ours.update({f"s{seed}:{c}": v for c, v in per_case_dice(source, seed, "uncertain_regions", last).items()})
            theirs.update({f"s{seed}:{c}": v for c, v in per_case_dice(source, seed, strategy, last).items()})
        figures = bench_la.paired_difference(ours, theirs)
        edited = {s: float(np.mean([r["cum_edited_voxels"] for r in rows if r["strategy"] == s and r["round"] == last]))
                  for s in ("uncertain_regions", strategy)}
        bc.emit(bc.record(BENCHMARK, table_name(source, "paired"), f"{source.name}|{args.method}|{strategy}|r{last}|"
                          + ",".join(map(str, seeds)), device, ours="uncertain_regions", versus=strategy, round=last,
                          seeds=",".join(map(str, seeds)), **{k: round(v, 4) if isinstance(v, float) else v
                                                             for k, v in figures.items()},
                          mean_cum_edited_ours=round(edited["uncertain_regions"]), mean_cum_edited_versus=round(edited[strategy])))
    for seed in seeds:
        target = target_figures([r for r in rows if r["seed"] == seed])
        if target:
            bc.emit(bc.record(BENCHMARK, table_name(source, "target"), f"{source.name}|{args.method}|s{seed}", device,
                              seed=seed, **target))


def target_figures(rows: List[dict]) -> Optional[dict]:
    """Issue 13's target: strategy 1 reaches strategy 2's final Dice with at most half its edited voxels.

    ratio = (cumulative edited voxels of strategy 1 at its first round with Dice >= strategy 2's
    final Dice) / (strategy 2's final cumulative edited voxels); met when ratio <= 0.5.
    """
    ours = sorted([r for r in rows if r["strategy"] == "uncertain_regions"], key=lambda r: r["round"])
    theirs = sorted([r for r in rows if r["strategy"] == "boundary_random"], key=lambda r: r["round"])
    if not ours or not theirs:
        return None
    goal, cost = theirs[-1]["held_out_dice"], theirs[-1]["cum_edited_voxels"]
    reached = next((r for r in ours if r["round"] > 0 and r["held_out_dice"] >= goal), None)
    ratio = reached["cum_edited_voxels"] / cost if reached and cost else None
    return {"boundary_random_final_dice": goal, "boundary_random_edited": cost,
            "uncertain_regions_final_dice": ours[-1]["held_out_dice"],
            "uncertain_regions_round_reaching": reached["round"] if reached else None,
            "uncertain_regions_edited_then": reached["cum_edited_voxels"] if reached else None,
            "edited_ratio": round(ratio, 3) if ratio is not None else None,
            "target_met": bool(ratio is not None and ratio <= 0.5)}


def plot(rows: List[dict], path: Path) -> Optional[Path]:
    """Held-out Dice against cumulative edited voxels, one line per strategy (mean over seeds per round)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        bc.log("matplotlib is not installed: no plot")
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for strategy in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == strategy]
        if not mine:
            continue
        rounds = sorted({r["round"] for r in mine})
        edited = [np.mean([r["cum_edited_voxels"] for r in mine if r["round"] == k]) for k in rounds]
        dice = [np.mean([r["held_out_dice"] for r in mine if r["round"] == k]) for k in rounds]
        axes.plot(edited, dice, marker="o", label=strategy)
    axes.set_xlabel("cumulative edited voxels (mean over seeds)")
    axes.set_ylabel("held-out Dice (mean over seeds)")
    axes.set_xscale("symlog", linthresh=1000)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
