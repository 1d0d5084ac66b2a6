"""``semisupseg``: train, predict, evaluate, methods, devices, synth, demo.

Exit codes (the worker protocol): 0 finished or cancelled, 2 bad input (one message naming the
problem and a hint, as an ``error`` event; no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import List, Optional

from .errors import InputError
from .events import EventWriter, log


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a method on a workspace (JSON-lines events on stdout)")
    p.add_argument("--workspace", required=True, type=Path, help="folder with dataset.json (workspace or MSD layout)")
    p.add_argument("--config", type=Path, help="JSON configuration (keys of semisupseg.config.DEFAULTS)")
    p.add_argument("--run-id", help="name of the run folder under <workspace>/runs (default: time + method)")
    p.add_argument("--resume", action="store_true", help="continue the run (--run-id, else the latest) from last.pt")
    p.add_argument("--method", help="override the configured method (see `semisupseg methods`)")
    p.add_argument("--iterations", type=int, help="override the planned number of iterations")
    p.add_argument("--continuous", action="store_true",
                   help="train until stopped (STOP file, SIGTERM, SIGINT): iterations 0; new labels join as they come")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from the final weights of RUN (a run folder or a run id of this workspace)")
    p.add_argument("--device", help="auto (CUDA GPU, else Apple GPU, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="finish within MINUTES, final checkpoint and prediction included (training stops early "
                        "enough); without --iterations it trains until the budget")


def run_train(args) -> int:
    from .training.distributed import Distributed
    from .training.trainer import train_workspace

    if args.continuous and args.iterations is not None:
        raise InputError("--continuous and --iterations contradict each other.",
                         "Give --continuous to train until stopped, or --iterations N for a run of N iterations.")
    if args.init_from and args.resume:
        raise InputError("--init-from starts a new run from another run's weights; --resume continues a run.",
                         "Leave out one of them.")
    iterations = 0 if args.continuous else args.iterations
    overrides = {"method": args.method, "iterations": iterations, "device": args.device, "seed": args.seed,
                 "init_from": args.init_from, "time_budget_min": args.time_budget}
    state = train_workspace(args.workspace, args.config, overrides, args.run_id, args.resume, args.events)
    if state == "finished":
        Distributed.from_environment().exit_helper_rank()  # torchrun: ranks > 0 end here (distributed.py)
    return 0


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="write label maps, entropy maps and regions for a trained run")
    p.add_argument("--run", required=True, type=Path, help="<workspace>/runs/<run-id>")
    p.add_argument("--cases", nargs="*", help="case ids (default: all cases of the workspace)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default: the run's last.pt)")
    p.add_argument("--mc-dropout", type=int, default=None, metavar="K", help="also write the MC-dropout mutual information (K passes)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--tta", choices=["off", "flips"],
                   help="average over the trained x / y flips (flips) or not (off); default: the run's config")
    p.add_argument("--postprocess", choices=["off", "largest_foreground"],
                   help="keep only the largest connected group of predicted structures (largest_foreground) "
                        "or not (off); default: the run's config")


def run_predict(args) -> int:
    from .data.preprocess import prepare_case
    from .data.validate import validate_dataset
    from .inference.predictor import predict_cases
    from .inference.run_loader import load_run

    method, config, spec, device = load_run(args.run, args.checkpoint, args.device)
    cases = spec.cases
    if args.cases:
        by_id = {c.id: c for c in spec.cases}
        unknown = [c for c in args.cases if c not in by_id]
        if unknown:
            raise InputError(f"Unknown case ids {unknown}.", f"Cases of this workspace: {', '.join(list(by_id)[:10])}...")
        cases = [by_id[c] for c in args.cases]
    validate_dataset(spec, cases=cases, require_labelled=False)
    args.events.attach(Path(args.run) / "events.jsonl")
    args.events.emit("started", run=Path(args.run).name, command="predict", device=str(device), cases=len(cases))
    prepared = [prepare_case(c, spec.modality, config["target_spacing"], with_label=False) for c in cases]
    if args.tta:
        config = {**config, "tta": args.tta}
    if args.postprocess:
        config = {**config, "postprocess": args.postprocess}
    predict_cases(method.inference_networks(), prepared, Path(args.run), config, spec.num_classes, device, args.events,
                  round_name="predict", mc_samples=args.mc_dropout)
    args.events.emit("finished", command="predict")
    return 0


def add_methods_parser(sub) -> None:
    p = sub.add_parser("methods", help="list the training methods and their options")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run_methods(args) -> int:
    from .methods import METHODS

    listing = {name: {"description": cls.description, "uses_unlabelled": cls.uses_unlabelled, "options": cls.defaults}
               for name, cls in sorted(METHODS.items())}
    if args.json:
        print(json.dumps(listing, indent=1))
    else:
        for name, info in listing.items():
            print(f"{name:22s} {info['description']}")
            for key, value in info["options"].items():
                print(f"{'':24s}{key} = {value}")
    return 0


def add_devices_parser(sub) -> None:
    p = sub.add_parser("devices", help="which device --device auto trains on, and how it is described")
    p.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")


def run_devices(args) -> int:
    from .training.devices import available_devices

    info = available_devices()
    if args.json:
        print(json.dumps(info))
    else:
        print(f"auto: {info['description']}")
        for description in info["cuda"]:
            print(f"cuda: {description}")
        print(f"mps: {info['mps_description'] if info['mps'] else 'not available'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .demo import add_demo_parser
    from .data.synthetic_cli import add_synth_parser
    from .evaluation.cli import add_evaluate_parser
    from .server.cli import add_serve_parser

    parser = argparse.ArgumentParser(prog="semisupseg", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"semisupseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_predict_parser(sub)
    add_evaluate_parser(sub)
    add_methods_parser(sub)
    add_devices_parser(sub)
    add_synth_parser(sub)
    add_demo_parser(sub)
    add_serve_parser(sub)
    return parser


def dispatch(args) -> int:
    from .demo import run_demo
    from .data.synthetic_cli import run_synth
    from .evaluation.cli import run_evaluate
    from .server.cli import run_serve

    handlers = {"train": run_train, "predict": run_predict, "evaluate": run_evaluate, "methods": run_methods,
                "synth": run_synth, "demo": run_demo, "serve": run_serve, "devices": run_devices}
    return handlers[args.command](args)


def main(argv: Optional[List[str]] = None) -> int:
    from .training.devices import enable_mps_operator_fallback

    enable_mps_operator_fallback()  # macOS: before anything imports torch (PyTorch reads it then)
    args = build_parser().parse_args(argv)
    events = args.events = EventWriter()
    try:
        return int(dispatch(args) or 0)
    except InputError as err:
        events.emit("error", message=err.message, hint=err.hint)
        log(f"error: {err.message}" + (f"\nhint: {err.hint}" if err.hint else ""))
        return 2
    except KeyboardInterrupt:
        events.emit("cancelled", message="interrupted")
        return 0
    except Exception as err:  # an internal error: report it, keep the traceback for the log
        traceback.print_exc(file=sys.stderr)
        events.emit("error", message=f"internal error: {type(err).__name__}: {err}",
                    hint="This is a bug in semisupseg; the traceback is in the worker log (stderr).")
        return 1
    finally:
        events.close()


if __name__ == "__main__":
    sys.exit(main())
