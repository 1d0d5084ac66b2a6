"""``semisupseg evaluate --pred DIR --truth DIR [--classes 1 2] [--lcc] [--json]``.

Prints a table (per case and class, then the mean) followed by the HD95/ASD definitions, or
the full report as JSON with ``--json``. Bad folders raise ``InputError``; the main CLI turns
that into exit code 2 (so does ``python -m semisupseg.evaluation.cli`` here).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Sequence, TextIO

from ..errors import InputError
from .metrics import evaluate_folders

__all__ = ["add_evaluate_parser", "run_evaluate", "format_table", "main"]

_COLUMNS = ("dice", "iou", "hd95_mm", "asd_mm")
_HEADINGS = ("Dice", "IoU", "HD95 mm", "ASD mm")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="folder of predicted label maps (<case>.nii.gz, .nrrd, .mha)")
    parser.add_argument("--truth", required=True, help="folder of ground-truth label maps with the same file names")
    parser.add_argument(
        "--classes", type=int, nargs="+", default=None, help="foreground labels to score (default: all found)"
    )
    parser.add_argument(
        "--lcc", action="store_true", help="keep only the largest connected component of each predicted class"
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command to ``subparsers``; its ``func`` default is ``run_evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="Dice, IoU, HD95 and ASD (mm) of predicted label maps against ground truth",
        description=__doc__.splitlines()[0],
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_evaluate)
    return parser


def _row(case: str, label: str, metrics: dict, case_width: int) -> str:
    values = "".join(f"{metrics[c]:>10.4f}" if c in ("dice", "iou") else f"{metrics[c]:>10.2f}" for c in _COLUMNS)
    return f"{case:<{case_width}}  {label:>5}{values}"


def format_table(report: dict) -> str:
    """Human-readable table of an ``evaluate_folders`` report, with the metric definitions."""
    case_width = max([len("mean")] + [len(case) for case in report["cases"]])
    lines = [f"{'case':<{case_width}}  {'class':>5}" + "".join(f"{h:>10}" for h in _HEADINGS)]
    for case, per_class in report["cases"].items():
        lines += [_row(case, label, metrics, case_width) for label, metrics in per_class.items()]
    lines.append("-" * len(lines[0]))
    mean_labels = [str(c) for c in report["classes"]] + (["all"] if len(report["classes"]) > 1 else [])
    lines += [_row("mean", label, report["mean"][label], case_width) for label in mean_labels]
    lines.append(f"{len(report['cases'])} case(s){', largest connected component only' if report['lcc'] else ''}.")
    lines += [""] + [textwrap.fill(text, width=100) for text in report["definitions"].values()]
    return "\n".join(lines) + "\n"


def run_evaluate(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the ``evaluate`` command; returns the exit code (0). Raises InputError on bad input."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    report = evaluate_folders(args.pred, args.truth, classes=args.classes, lcc=args.lcc)
    if args.json:
        out.write(json.dumps(report, indent=1) + "\n")
    else:
        for message in report["warnings"]:
            err.write(f"warning: {message}\n")
        out.write(format_table(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m semisupseg.evaluation.cli``): exit 2 on bad input."""
    parser = argparse.ArgumentParser(prog="semisupseg evaluate", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_evaluate(args)
    except InputError as error:
        sys.stderr.write(f"error: {error.message}\n" + (f"hint: {error.hint}\n" if error.hint else ""))
        return 2


if __name__ == "__main__":
    sys.exit(main())
