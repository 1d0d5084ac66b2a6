"""Time to the first overlay: ``semisupseg train`` start -> first ``prediction`` event with entropy maps.

The annotator's first feedback comes from the configuration's early prediction round
(``first_prediction_at = N``: after iteration N the trainer predicts every case with the
configured sliding window - overlap ``sw_overlap`` (0.25 on the CPU), window = the training patch - writes
label map, entropy map and regions.json per case, then trains on). This benchmark starts
``semisupseg train`` as a subprocess (what the Slicer module does) on 10 synthetic volumes of
256x256x100 voxels (0.8 x 0.8 x 1.0 mm, generated once into .bench/first_overlay/workspace by
``semisupseg.data.synthetic``; 2 labelled, 8 unlabelled) and measures, from the moment the
process is started:
  started_s          the ``started`` event (workspace read, volumes normalised/resampled)
  first_progress_s   the first training iteration done
  first_overlay_s    the first ``prediction`` event of the early round (one case's maps written)
  all_overlays_s     the last of the 10 ``prediction`` events of that round (every case has maps)
The training is then stopped (SIGTERM: checkpoint, exit 0). Targets: CPU < 5 min, GPU < 60 s
(stated against all_overlays_s, the stricter of the two).

Settings: CPU - DyCON, U-Net widths 8-128, patch 64x64x48, batch 2+2, volumes resampled to a
2x coarser grid (1.6 x 1.6 x 2.0 mm, so 128x128x50 voxels), first_prediction_at 10.
GPU - DyCON, full-width U-Net, the GPU default patch and batch, native grid, first_prediction_at 50.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

BENCHMARK = "first_overlay"
SIZE = (256, 256, 100)
SPACING = (0.8, 0.8, 1.0)
N_LABELLED, N_UNLABELLED = 2, 8


def workspace(size, n_cases: int) -> Path:
    """The synthetic workspace (generated once; regenerated when size or count differ)."""
    from semisupseg.data.synthetic import generate_synthetic_workspace

    ws = bc.BENCH_DIR / "first_overlay" / f"workspace_{'x'.join(map(str, size))}_{n_cases}"
    if not (ws / "dataset.json").is_file():
        bc.log(f"generating {n_cases} synthetic volumes of {size} in {ws} (once)")
        n_l = min(N_LABELLED, n_cases)
        generate_synthetic_workspace(ws, n_labelled=n_l, n_unlabelled=n_cases - n_l, n_test=0,
                                     size=size, spacing=SPACING, seed=7)
    return ws


def config_for(device: str, first_at: int, spacing) -> dict:
    on_gpu = device.startswith("cuda")
    config = {
        "method": "dycon",
        "device": device,
        "iterations": 100000,  # stopped after the early round; the plan only sets the schedule
        "first_prediction_at": first_at,
        "predict_every": 0,
        "checkpoint_every": 0,
        "reload_every": 0,
        "log_every": 1,
        "predict_cases": "all",
    }
    if not on_gpu:
        config.update({"network_options": {"widths": [8, 16, 32, 64, 128]}, "patch_size": [64, 64, 48],
                       "batch_labelled": 2, "batch_unlabelled": 2})
    if spacing:
        config["target_spacing"] = list(spacing)
    return config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--first-at", type=int, help="first_prediction_at (CPU default 10, GPU 50)")
    p.add_argument("--spacing", type=float, nargs=3, help="target_spacing mm (CPU default 1.6 1.6 2.0; GPU: native)")
    p.add_argument("--native", action="store_true", help="keep the native 0.8 x 0.8 x 1.0 mm grid on CPU too")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the training process (default: one per core)")
    p.add_argument("--quick", action="store_true", help="3 small volumes, first round after 2 iterations")
    args = p.parse_args(argv)
    device = bc.resolve_device(args.device)
    on_gpu = device.startswith("cuda")
    size, cases = (SIZE, args.cases) if not args.quick else ((96, 96, 48), 3)
    first_at = args.first_at or (2 if args.quick else 50 if on_gpu else 10)
    spacing = args.spacing or (None if on_gpu or args.native else [2 * s for s in SPACING])
    if args.quick:
        spacing = None
    ws = workspace(size, cases)
    config = config_for(device, first_at, spacing)
    run_id = f"first-overlay-{'gpu' if on_gpu else 'cpu'}"
    shutil.rmtree(ws / "runs" / run_id, ignore_errors=True)

    marks = {}
    round_name = f"iteration {first_at}"

    def watch(event: dict, seconds: float) -> bool:
        kind = event.get("event")
        if kind == "started" and "started_s" not in marks:
            marks["started_s"] = seconds
            marks["patch"] = "x".join(map(str, event.get("patch_size", [])))
        elif kind == "progress" and "first_progress_s" not in marks:
            marks["first_progress_s"] = seconds
        elif kind == "progress" and event.get("iteration") == first_at:
            marks["round_start_s"] = seconds
            marks["it_per_s"] = event.get("it_per_s")
        elif kind == "prediction" and event.get("round") == round_name:
            marks.setdefault("first_overlay_s", seconds)
            marks["all_overlays_s"] = seconds
            marks["predicted"] = marks.get("predicted", 0) + 1
            marks.setdefault("case_seconds", []).append(event.get("seconds", 0.0))
            marks["has_entropy"] = bool(event.get("uncertainty"))
        elif kind == "regions" and event.get("round") == round_name:
            return True  # the whole early round is written: stop training
        return False

    code, events, wall = bc.train_subprocess(ws, config, run_id, on_event=watch, threads=args.threads)
    target = 60.0 if on_gpu else 300.0
    figures = {k: round(v, 1) if k.endswith("_s") and k != "it_per_s" else v for k, v in marks.items() if k != "case_seconds"}
    if marks.get("case_seconds"):
        figures["predict_s_per_case"] = round(sum(marks["case_seconds"]) / len(marks["case_seconds"]), 1)
    grid = "native" if not spacing else "x".join(f"{s:g}" for s in spacing) + " mm"
    bc.emit(bc.record(
        BENCHMARK, "first_overlay", f"{'quick' if args.quick else 'default'}|{grid}|first{first_at}", device,
        volumes=f"{cases} x {'x'.join(map(str, size))}", training_grid=grid, first_prediction_at=first_at,
        target_s=target, met=bool(marks.get("all_overlays_s", float("inf")) < target and marks.get("predicted") == cases),
        exit_code=code, threads=args.threads or "default", **figures,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
