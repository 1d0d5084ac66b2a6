"""The ``semisupseg synth`` sub-command: write a synthetic workspace (demo, tests, trying things out).

The CLI registers it with ``add_synth_parser(subparsers)``; the parsed arguments go to
``run_synth(args)``, which returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys

from .synthetic import generate_synthetic_workspace


def add_synth_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``synth`` parser to an ``argparse`` sub-parser collection and return it.

    ``set_defaults(func=run_synth)`` lets the CLI dispatch with ``args.func(args)``.
    """
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic workspace (left-atrium-like volumes with labels)",
        description="Write a deterministic synthetic workspace: images/, labels/ for the labelled "
        "cases, truth/ with the ground truth of every case, and dataset.json (test cases are "
        "unlabelled there and listed under 'held_out').",
    )
    parser.add_argument("--out", required=True, help="workspace folder to create or overwrite")
    parser.add_argument("--labelled", type=int, default=4, help="cases with a label (default 4)")
    parser.add_argument("--unlabelled", type=int, default=8, help="cases without a label (default 8)")
    parser.add_argument("--test", type=int, default=4, help="held-out cases, unlabelled in dataset.json (default 4)")
    parser.add_argument("--size", type=int, nargs=3, default=(80, 80, 48), metavar=("X", "Y", "Z"),
                        help="volume size in voxels (default 80 80 48)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.5), metavar=("SX", "SY", "SZ"),
                        help="voxel spacing in mm (default 1 1 1.5)")
    parser.add_argument("--classes", type=int, default=2, choices=(2, 3),
                        help="2: atrium; 3: atrium and vessel (default 2)")
    parser.add_argument("--modality", default="MR", choices=("MR", "CT"), help="intensity model (default MR)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.set_defaults(func=run_synth)
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Generate the workspace; print one JSON line ``{"event": "finished", "workspace": ...}``.

    ``InputError`` propagates to the CLI, which reports it with exit code 2.
    """
    out = generate_synthetic_workspace(
        args.out,
        n_labelled=args.labelled,
        n_unlabelled=args.unlabelled,
        n_test=args.test,
        size=tuple(args.size),
        spacing=tuple(args.spacing),
        num_classes=args.classes,
        seed=args.seed,
        modality=args.modality,
    )
    total = args.labelled + args.unlabelled + args.test
    print(f"Wrote {total} synthetic cases to {out}", file=sys.stderr)
    print(json.dumps({"event": "finished", "workspace": str(out.resolve()), "cases": total}), flush=True)
    return 0
