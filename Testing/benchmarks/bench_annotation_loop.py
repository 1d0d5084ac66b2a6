"""Does correcting the uncertain regions save annotation effort? A simulated annotator on LA (issue 13).

The live loop of the product, run by a simulated annotator whose "correction" is the ground truth
inside the voxels it reviews. Every step uses the engine's own paths: ``semisupseg train`` (called
in this process through ``semisupseg.cli.main``, so torch is imported once; events go to
``<run>/events.jsonl`` and a log file) with ``--init-from`` the previous round's run (warm start),
``semisupseg predict --cases ...`` for the maps, ``regions.json`` and case scores the annotator
sees, and partial labels ``labels/<id>.partial.nii.gz`` (uint8 on the image grid, 255 = not
annotated, ``"ignore_label": 255`` in dataset.json: the file ``SemiSupSegLib.region_corrections``
writes from Slicer).

Protocol (LA2018 development protocol, CPU scale of bench_la: 1.25 mm grid, U-Net widths 8-128,
patch 64x64x48, batch 2+2, the default method DyCON):
  - start: cases 1-4 fully labelled; a start model is trained once per seed and shared by all five
    strategies of that seed (they all see the same first predictions; sharing it is honest: the
    strategies differ only from the first review on);
  - candidate pool: ``--candidates`` cases drawn (per seed) from the pool 9-64 (CPU budget: every
    candidate is predicted every round, since the engine's case order and the case-level strategy
    need all their scores); held out: the first ``--held-out`` cases of 65-80 (the same for every
    seed, so seeds pair by case);
  - each round, per strategy: the annotator reviews, training continues warm for
    ``--round-iterations`` iterations, the candidates and held-out cases are predicted, held-out
    Dice (foreground classes, on the image grid) is measured.

Strategies (same budget, same seeds):
  1. ``uncertain_regions``: the ``--cases-per-round`` candidates first in the engine's case order
     (regions.json ``meta.case_order``), in each the engine's regions' boxes in rank order until
     ``--budget-fraction`` of the case's voxels are newly reviewed;
  2. ``boundary_random``: as many random candidates, boxes of the same sizes (the engine's regions'
     boxes of that case, in order) centred on random voxels of the predicted boundary band (within
     2 voxels of a predicted label change; anywhere when nothing is predicted), same budget (the
     strong, foreground-aware baseline of nnActive);
  3. ``random_boxes``: as 2, the boxes placed uniformly at random inside the volume;
  4. ``uncertain_case``: the candidate with the highest engine case score (not yet fully labelled)
     is fully labelled (MONAI Label's active learning);
  5. ``random_case``: a random candidate not yet fully labelled is fully labelled;
  6. ``no_review`` (control, not in the issue's list): nothing is reviewed, training goes on the same
     way. On LA most of the Dice gain of a round comes from the round's training itself; the
     control measures that part, so the strategies' differences are read against it.
Region strategies review the whole box of each region (the Slicer Accept region takes the
uncertain voxels of the box grown by 3 mm; a box is what can be moved to a random place
unchanged). Cost, cumulative over rounds: voxels reviewed (newly annotated), and voxels edited
(prediction != truth inside the newly reviewed voxels, with the prediction the annotator saw).
Random choices come from numpy Generators seeded by (seed, strategy, round): reproducible.

CPU budget (the whole benchmark within 2 hours on the 2-core development CPU, ``--threads 1``).
Pieces measured on LA with this script's ``--measure`` (table ``pieces``; 2026-11-27, AMD EPYC
2 cores, load average 2.3): t = 4.49 s per DyCON training iteration (median), o = 11.4 s of fixed
cost per training call (startup, preparing its 8 cases; about 15 s with the 4 + C cases a round
prepares), p = 2.45 s to predict one pool case and 2.58 s one held-out case (probabilities,
entropy, regions, case score, files), plus about 3 s of annotation (reading and writing labels)
per round. Per seed: start S*t + o + (C+H)*p, then per round and strategy N*t + o + (C+H)*p + 3.
With S = 60, N = 10, R = 4, C = 6, H = 8 and 2 seeds:
  start  60 x 4.5 + 15 + 14 x 2.5 = 320 s,
  round  10 x 4.5 + 15 + 14 x 2.5 + 3 = 98 s, x 4 rounds x 6 strategies (5 + the control) = 2352 s,
  total  2 x (320 + 2352) = 5344 s = 89 minutes,
which leaves a factor 1.35 for a machine shared with other jobs. Measured (2026-11-27, this CPU):
seed 1337 took 2203 s for the start and the five strategies at load average 3 to 4, and 2119 s
(35 minutes) for the start and all six strategies at load average 2 to 2.5. Shared honestly: one start model per seed for all five strategies (they start from
the same predictions), and every candidate's prediction is made once per round and serves both
the case order and the annotator. These are small numbers: 10 warm iterations per round move the
model little, so the differences between strategies are small against the noise; the paired
table says how small.

``--smoke``: the same pipeline on a tiny synthetic workspace (semisupseg.data.synthetic; supervised
method, tiny network, 2 rounds, 2 iterations a round) in well under 2 minutes; records go to the
table ``smoke`` and never replace the LA rows.

Outputs: records (stdout JSON lines, ``run_benchmarks.py --only annotation_loop``), the per-round
files under ``.bench/annotation_loop/<setting>-s<seed>/``, and the plot of held-out Dice against
cumulative edited voxels (one line per strategy) at ``.bench/annotation_loop/<setting>-dice_vs_edited.png``
(``--plot`` moves it).

Files: the simulated annotator (strategies, boxes, label files) is ``annotation_simulator.py``, the
paired comparisons, the target and the plot are ``annotation_loop_report.py``; this file runs the
rounds and the engine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
import bench_la  # noqa: E402
from annotation_loop_report import BENCHMARK, emit_comparisons, plot, table_name  # noqa: E402
from annotation_simulator import (  # noqa: E402
    NOT_ANNOTATED,
    STRATEGIES,
    Review,
    annotate,
    foreground_dice,
    read_labels,
    write_json_atomic,
)

START_LABELLED = (1, 4)  # LA protocol positions


# --------------------------------------------------------------------------- the data a benchmark runs on
@dataclass
class Source:
    """Where the cases come from: images and ground truth per id, and the protocol's roles."""

    name: str  # setting name in the record keys ("cpu" on LA, "smoke")
    images: Dict[str, Path]
    truth: Dict[str, Path]
    labels: dict  # dataset.json "labels"
    modality: dict  # dataset.json "modality"
    start_labelled: List[str]
    pool: List[str]
    held_out: List[str]
    variant: str = ""  # --variant: its own folders, record keys and tables


def la_source(root: Path) -> Source:
    from semisupseg.data.dataset import load_dataset

    spec = load_dataset(root)
    cases = spec.cases
    ids = [c.id for c in cases]
    raw = json.loads((root / "dataset.json").read_text())
    return Source(
        name=bench_la.CPU_SETTING["name"],
        images={c.id: c.image for c in cases},
        truth={c.id: c.label for c in cases},
        labels=raw["labels"],
        modality=raw.get("modality", {"0": spec.modality}),
        start_labelled=ids[START_LABELLED[0] - 1 : START_LABELLED[1]],
        pool=ids[bench_la.UNLABELLED[0] - 1 : bench_la.UNLABELLED[1]],
        held_out=ids[bench_la.HELD_OUT[0] - 1 : bench_la.HELD_OUT[1]],
    )


def synthetic_source(folder: Path) -> Source:
    """A tiny synthetic workspace (2 labelled, 4 pool, 2 held out); its truth/ has every case's label."""
    from semisupseg.data.synthetic import generate_synthetic_workspace

    if not (folder / "dataset.json").exists():
        generate_synthetic_workspace(folder, n_labelled=2, n_unlabelled=4, n_test=2, size=(48, 48, 32),
                                     spacing=(1.5, 1.5, 2.0), seed=3)
    raw = json.loads((folder / "dataset.json").read_text())
    ids = [c["id"] for c in raw["cases"]]
    return Source(name="smoke", images={i: folder / "images" / f"{i}.nii.gz" for i in ids},
                  truth={i: folder / "truth" / f"{i}.nii.gz" for i in ids}, labels=raw["labels"],
                  modality=raw["modality"], start_labelled=ids[:2], pool=ids[2:6], held_out=ids[6:8])


# --------------------------------------------------------------------------- settings
def la_config(args, iterations: int, seed: int) -> dict:
    """bench_la's CPU-scale configuration for the default method, with this benchmark's split
    (``--engine-defaults``: the engine's own CPU defaults instead of bench_la's fixed grid and patch)."""
    config = bench_la.run_config(bench_la.CPU_SETTING, args.method, 4, iterations, args.device, seed)
    if args.engine_defaults:
        for key in bench_la.ENGINE_DECIDES:
            config.pop(key)
    return finish_config(config)


def smoke_config(args, iterations: int, seed: int) -> dict:
    """Smallest honest configuration: a narrow U-Net on 32^3 patches, supervised (one network)."""
    config = {"method": args.method, "network": "unet3d", "network_options": {"widths": [4, 8, 16, 32, 64]},
              "iterations": iterations, "device": args.device, "seed": seed, "patch_size": [32, 32, 32],
              "batch_labelled": 2, "batch_unlabelled": 0 if args.method == "supervised" else 2,
              "target_spacing": None}
    return finish_config(config)


def finish_config(config: dict) -> dict:
    # Every case with a label file (full or partial) is labelled, held_out comes from dataset.json,
    # the rest of the workspace is the unlabelled stream. Predictions are made by `predict` on the
    # cases the benchmark needs (the run's own final prediction would also predict cases 1-4).
    config["split"] = {}
    config["predict_cases"] = "none"
    config["checkpoint_every"] = 1000
    config["log_every"] = 5
    return config


# --------------------------------------------------------------------------- workspaces
def make_workspace(folder: Path, source: Source, candidates: List[str], held_out: List[str]) -> Path:
    """A workspace whose images link to the source's; cases 1-4 labelled with their truth (linked)."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, paths in (("images", source.images), ("truth", source.truth)):
        (folder / kind).mkdir(exist_ok=True)
        for case in source.start_labelled + candidates + held_out:
            link = folder / kind / f"{case}.nii.gz"
            if not link.exists():
                link.symlink_to(Path(paths[case]).resolve())
    (folder / "labels").mkdir(exist_ok=True)
    cases = [{"id": c, "image": f"images/{c}.nii.gz",
              "label": f"truth/{c}.nii.gz" if c in source.start_labelled else None}
             for c in source.start_labelled + candidates + held_out]
    write_json_atomic(folder / "dataset.json", {"name": f"annotation-loop-{folder.name}", "labels": source.labels,
                                                "modality": source.modality, "ignore_label": NOT_ANNOTATED,
                                                "cases": cases, "held_out": held_out})
    return folder


# --------------------------------------------------------------------------- the engine, in this process
def engine(argv: List[str], log_path: Path) -> None:
    """``semisupseg <argv>`` in this process; its JSON events and log go to ``log_path``."""
    from semisupseg.cli import main as cli_main

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = cli_main(argv)
    if code != 0:
        raise RuntimeError(f"semisupseg {' '.join(argv[:1])} exited with {code}; see {log_path}")


def train(workspace: Path, config: dict, run_id: str, init_from: Optional[Path]) -> Path:
    run_dir = workspace / "runs" / run_id
    if bc.run_finished(run_dir):
        return run_dir  # a killed benchmark restarted: the round's training is done
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config_path = workspace / "configs" / f"{run_id}.json"
    write_json_atomic(config_path, config)
    argv = ["train", "--workspace", str(workspace), "--config", str(config_path), "--run-id", run_id]
    if init_from is not None:
        argv += ["--init-from", str(init_from)]
    engine(argv, workspace / "logs" / f"{run_id}.log")
    return run_dir


def predict(run_dir: Path, cases: List[str]) -> dict:
    """The engine's maps, regions and case scores of ``cases``; returns regions.json's content."""
    from semisupseg.inference.regions import read_regions_json

    engine(["predict", "--run", str(run_dir), "--cases", *cases], run_dir / "predict.log")
    return read_regions_json(run_dir / "regions.json")


def prediction_seconds(run_dir: Path) -> List[float]:
    return [float(e["seconds"]) for e in bc.run_events(run_dir) if e.get("event") == "prediction"]


def iteration_seconds(run_dir: Path) -> Optional[float]:
    """Median seconds per iteration of the run's training (its progress events)."""
    rates = [float(e["it_per_s"]) for e in bc.run_events(run_dir) if e.get("event") == "progress" and e.get("it_per_s")]
    return round(1.0 / float(np.median(rates)), 3) if rates else None


# --------------------------------------------------------------------------- one seed
def held_out_dice(run_dir: Path, workspace: Path, held_out: List[str], classes) -> Dict[str, float]:
    out = {}
    for case in held_out:
        pred = read_labels(run_dir / "predictions" / f"{case}.nii.gz")[0]
        truth = read_labels(workspace / "truth" / f"{case}.nii.gz")[0]
        out[case] = foreground_dice(pred, truth, classes)
    return out


def strategy_rng(seed: int, strategy: str, round_index: int) -> np.random.Generator:
    """Reproducible choices: one stream per (seed, strategy, round)."""
    return np.random.default_rng([seed, STRATEGIES.index(strategy), round_index])


def choose_cases(source: Source, args, seed: int) -> tuple:
    rng = np.random.default_rng([seed, 99])
    candidates = [source.pool[i] for i in sorted(rng.choice(len(source.pool), size=min(args.candidates, len(source.pool)),
                                                            replace=False))]
    return candidates, source.held_out[: args.held_out]


def run_seed(source: Source, args, seed: int, make_config, device: str) -> List[dict]:
    """Start model, then every strategy's rounds; returns the per-round rows (also emitted).

    A strategy that ran to its end with these settings is not run again: its rows, kept in
    ``<seed folder>/rows.json``, are emitted again (so ``--seeds A,B`` after a finished A runs only
    B, and ``--strategies X`` adds X to a finished seed). A strategy killed half-way starts again
    (its label files are of some later round than its first).
    """
    base = bc.BENCH_DIR / BENCHMARK / f"{source.name}-s{seed}"
    done = finished_strategies(base, args)
    candidates, held_out = choose_cases(source, args, seed)
    classes = [int(k) for k in source.labels if int(k) > 0]
    start = None
    rows = []
    for strategy in args.strategies:
        if strategy in done:
            bc.log(f"seed {seed}: {strategy} finished earlier ({base / 'rows.json'}); its records are reused")
            for rec in done[strategy]:
                bc.emit(rec)
            rows.extend(done[strategy])
            continue
        if start is None:
            start = start_model(source, args, seed, make_config, base, candidates, held_out, classes)
        shutil.rmtree(base / strategy, ignore_errors=True)
        mine = run_strategy(source, args, seed, make_config, device, base, strategy, start, candidates, held_out, classes)
        rows.extend(mine)
        done[strategy] = mine
        write_json_atomic(base / "rows.json", {"settings": seed_settings(args), "strategies": done})
    return rows


@dataclass
class Start:
    run: Path
    regions: dict  # the start model's regions.json (maps of the candidates and held-out cases)
    dice: Dict[str, float]
    seconds: float


def start_model(source, args, seed, make_config, base, candidates, held_out, classes) -> Start:
    """The seed's start model (cases 1-4), shared by its strategies, and its predictions."""
    start_ws = make_workspace(base / "start", source, candidates, held_out)
    run = train(start_ws, make_config(args, args.start_iterations, seed), f"start-it{args.start_iterations}", None)
    started = time.perf_counter()
    regions = predict(run, candidates + held_out)
    # training seconds from the run's own events: the same figure when a finished start model is reused
    trained = bc.training_finished(run)
    seconds = float(trained.get("total_seconds", trained["seconds"])) + time.perf_counter() - started
    dice = held_out_dice(run, start_ws, held_out, classes)
    bc.log(f"seed {seed}: start model held-out Dice {np.mean(list(dice.values())):.4f} ({seconds:.0f} s)")
    return Start(run, regions, dice, seconds)


def run_strategy(source, args, seed, make_config, device, base, strategy, start: Start, candidates, held_out,
                 classes) -> List[dict]:
    ws = make_workspace(base / strategy, source, candidates, held_out)
    previous, doc = start.run, start.regions
    totals = {"reviewed": 0, "edited": 0, "seconds": start.seconds}
    rows = [emit_round(source, args, seed, strategy, 0, Review(), totals, start.dice, {}, device)]
    for round_index in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        review = annotate(strategy, ws, previous, doc, candidates, args,
                          strategy_rng(seed, strategy, round_index), ws / "history" / f"round{round_index}")
        t1 = time.perf_counter()
        run_dir = train(ws, make_config(args, args.round_iterations, seed + round_index), f"round{round_index}",
                        previous)
        t2 = time.perf_counter()
        doc = predict(run_dir, candidates + held_out)
        t3 = time.perf_counter()
        dice = held_out_dice(run_dir, ws, held_out, classes)
        totals["reviewed"] += review.reviewed
        totals["edited"] += review.edited
        totals["seconds"] += t3 - t0
        timing = {"annotate_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1), "predict_s": round(t3 - t2, 1),
                  "s_per_iteration": iteration_seconds(run_dir),
                  "s_per_prediction": round(float(np.median(prediction_seconds(run_dir) or [np.nan])), 2)}
        rows.append(emit_round(source, args, seed, strategy, round_index, review, totals, dice, timing, device))
        previous = run_dir
    return rows


def seed_settings(args) -> dict:
    """What makes a finished strategy's rows valid for this invocation."""
    return {**settings_figures(args), "rounds": args.rounds, "threads": None}


def finished_strategies(base: Path, args) -> Dict[str, List[dict]]:
    """{strategy: rows} of the strategies of this seed that finished with these settings."""
    path = base / "rows.json"
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    return dict(saved.get("strategies", {})) if saved.get("settings") == seed_settings(args) else {}


def emit_round(source, args, seed, strategy, round_index, review: Review, totals, dice, timing, device) -> dict:
    per_case = bc.BENCH_DIR / BENCHMARK / f"{source.name}-s{seed}" / strategy / "dice" / f"round{round_index}.json"
    write_json_atomic(per_case, dice)
    rec = bc.record(
        BENCHMARK, table_name(source, "rounds"), f"{source.name}|{args.method}|s{seed}|{strategy}|r{round_index}",
        device, strategy=strategy, seed=seed, round=round_index, held_out_dice=round(float(np.mean(list(dice.values()))), 4),
        cum_reviewed_voxels=totals["reviewed"], cum_edited_voxels=totals["edited"],
        reviewed_voxels=review.reviewed, edited_voxels=review.edited, reviewed_cases=",".join(review.cases),
        boxes=review.boxes, fallback_placements=review.fallback_placements,
        wall_s=round(totals["seconds"], 1), **timing, **settings_figures(args), engine=args.engine_version,
    )
    bc.emit(rec)
    bc.log(f"s{seed} {strategy} round {round_index}: Dice {rec['held_out_dice']:.4f}, reviewed {totals['reviewed']}, "
           f"edited {totals['edited']}")
    return rec


def engine_version() -> str:
    """The engine's commit, '+changes' when its files differ from it (others edit it while a benchmark runs;
    this process imports it once, at its start)."""
    import subprocess

    def git(*argv) -> str:
        done = subprocess.run(["git", "-C", str(bc.REPO), *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" +changes" if git("status", "--porcelain", "--", "SemiSupSeg/semisupseg") else "")


def settings_figures(args) -> dict:
    return {"method": args.method, "start_iterations": args.start_iterations, "round_iterations": args.round_iterations,
            "candidates": args.candidates, "held_out_cases": args.held_out, "cases_per_round": args.cases_per_round,
            "budget_fraction": args.budget_fraction, "threads": args.threads,
            **({"engine_defaults": True} if args.engine_defaults else {})}


# --------------------------------------------------------------------------- measuring the pieces
def measure_pieces(source: Source, args, make_config, device: str) -> None:
    """Seconds per training iteration, per pool-case and per held-out-case prediction (the budget's inputs)."""
    base = bc.BENCH_DIR / BENCHMARK / f"{source.name}-measure"
    candidates, held_out = choose_cases(source, args, args.seeds[0])
    ws = make_workspace(base, source, candidates[:2], held_out[:2])
    if (ws / "runs" / "measure").exists():
        shutil.rmtree(ws / "runs" / "measure")
    t0 = time.perf_counter()
    run_dir = train(ws, make_config(args, args.measure_iterations, args.seeds[0]), "measure", None)
    t1 = time.perf_counter()
    predict(run_dir, candidates[:2])
    t2 = time.perf_counter()
    predict(run_dir, held_out[:2])
    t3 = time.perf_counter()
    per_iteration = iteration_seconds(run_dir)
    overhead = (t1 - t0) - args.measure_iterations * (per_iteration or 0.0)
    bc.emit(bc.record(BENCHMARK, table_name(source, "pieces"), f"{source.name}|{args.method}|threads{args.threads}",
                      device, method=args.method, threads=args.threads, iterations=args.measure_iterations,
                      s_per_iteration=per_iteration, train_call_overhead_s=round(overhead, 1),
                      s_per_pool_prediction=round((t2 - t1) / 2, 2), s_per_held_out_prediction=round((t3 - t2) / 2, 2),
                      load_average=bc.load_average()))


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1337,7", help="comma-separated seeds (each: its own start model and rounds)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated, from " + ",".join(STRATEGIES))
    p.add_argument("--method", help="training method (default: the engine's default, dycon; --smoke: supervised)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--start-iterations", type=int, default=60)
    p.add_argument("--round-iterations", type=int, default=10)
    p.add_argument("--candidates", type=int, default=6, help="pool cases the annotator may review (drawn per seed)")
    p.add_argument("--held-out", type=int, default=8, help="held-out cases scored each round (first of 65-80)")
    p.add_argument("--cases-per-round", type=int, default=2, help="cases a region strategy reviews per round")
    p.add_argument("--budget-fraction", type=float, default=0.02,
                   help="voxels newly reviewed per reviewed case and round, as a share of the case's voxels")
    p.add_argument("--max-boxes", type=int, default=50, help="placements a random region strategy may use per case")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (OMP_NUM_THREADS)")
    p.add_argument("--device", default="auto")
    p.add_argument("--plot", type=Path, help="PNG path (default .bench/annotation_loop/<setting>-dice_vs_edited.png)")
    p.add_argument("--measure", action="store_true", help="only measure the pieces of a round (the budget's inputs)")
    p.add_argument("--measure-iterations", type=int, default=6)
    p.add_argument("--engine-defaults", action="store_true",
                   help="train with the engine's CPU defaults (grid >= 1.6 mm, automatic patch) instead of bench_la's "
                        "1.25 mm grid and 64x64x48 patch")
    p.add_argument("--variant", help="name of a variant of the protocol: its folders, record keys and plot are "
                                     "<setting>-<variant>, so the main rows stay")
    p.add_argument("--smoke", "--quick", action="store_true", dest="smoke",
                   help="the whole pipeline on a tiny synthetic workspace (supervised, 2 rounds, 2 iterations)")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        p.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    if args.smoke:
        args.method = args.method or "supervised"
        args.rounds, args.start_iterations, args.round_iterations = min(args.rounds, 2), 4, 2
        args.candidates, args.held_out, args.cases_per_round = 4, 2, 1
        args.measure_iterations = 2
    args.method = args.method or "dycon"
    args.engine_version = engine_version()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported (engine() imports it)
    import torch

    torch.set_num_threads(args.threads)
    device = bc.resolve_device(args.device)
    if args.smoke:
        source, make_config = synthetic_source(bc.BENCH_DIR / BENCHMARK / "smoke-data"), smoke_config
    else:
        root = bc.la_root()
        if root is None:
            bc.log("LA2018 not found (../shared/datasets/LA2018 or $SEMISUPSEG_LA2018): skipped")
            bc.emit(bc.record(BENCHMARK, "status", "skipped", device, status="skipped: LA2018 folder absent"))
            return 0
        source, make_config = la_source(root), la_config
    if args.variant:
        source.name, source.variant = f"{source.name}-{args.variant}", args.variant
    if args.measure:
        measure_pieces(source, args, make_config, device)
        return 0
    rows = []
    for seed in args.seeds:
        rows.extend(run_seed(source, args, seed, make_config, device))
    emit_comparisons(source, args, rows, device)
    path = plot(rows, args.plot or bc.BENCH_DIR / BENCHMARK / f"{source.name}-dice_vs_edited.png")
    if path is not None:
        bc.log(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
