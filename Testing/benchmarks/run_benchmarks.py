"""``make bench``: run the benchmark scripts, keep their JSON lines, regenerate docs/benchmarks.md.

    .venv/bin/python Testing/benchmarks/run_benchmarks.py [--only NAME[,NAME]] [--quick] [-- ARGS]
    .venv/bin/python Testing/benchmarks/run_benchmarks.py --ingest FILE.jsonl   (lines from a direct run)
    .venv/bin/python Testing/benchmarks/run_benchmarks.py --render-only
    .venv/bin/python Testing/benchmarks/run_benchmarks.py --merge gpu_bench.jsonl   (the GPU kit's records)

Each benchmark ``bench_<name>.py`` prints one JSON record per measurement on stdout (see
bench_common.py). The lines of the latest run are written to ``.bench/results/<name>.jsonl``
(gitignored). ``docs/benchmarks.md`` carries every record it shows, in an HTML comment inside
each generated block, so regenerating it on another machine (a GPU box with an empty .bench)
merges the new records with the old ones instead of dropping them: a new record replaces an old
one with the same (benchmark, table, device kind, key). Text between ``<!-- notes:NAME:start -->``
and ``<!-- notes:NAME:end -->`` is hand-written and kept as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_common as bc  # noqa: E402

DOC = bc.REPO / "docs" / "benchmarks.md"
RESULTS = bc.BENCH_DIR / "results"

# Order of the sections; each is Testing/benchmarks/bench_<name>.py.
BENCHMARKS = ["train_step", "inference", "first_overlay", "la", "acdc", "uncertainty_errors", "annotation_loop",
              "time_to_quality"]
TITLES = {
    "train_step": "Training step: iterations/s and peak memory, DyCON vs mean teacher and every method, optimisations",
    "inference": "Inference: seconds per volume (probabilities + entropy, MC dropout)",
    "first_overlay": "Time to the first overlay (train start -> first prediction with entropy maps)",
    "la": "LA2018 development protocol: supervised, mean teacher, DyCON and the companion methods",
    "acdc": "ACDC development protocol: several classes (RV, myocardium, LV) in thin-slab cine MRI",
    "uncertainty_errors": "Does the uncertainty map find the errors? (AUROC, top-5 regions vs random boxes)",
    "annotation_loop": "Simulated annotator on LA: does correcting the uncertain regions save annotation effort?",
    "time_to_quality": "Time to quality on the CPU: held-out LA Dice after a Train click with a time budget",
    "gpu_kit": "GPU kit (gpu_bench.py): environment, parts, DyCON for a fixed wall budget, the targets",
}
# Sections filled only by merged records (gpu_bench.py, docs/gpu.md): rendered once they have some.
MERGED_ONLY = ["gpu_kit"]
SECTIONS = BENCHMARKS + MERGED_ONLY
QUICK_ARGS = {name: ["--quick"] for name in BENCHMARKS}
META = ("benchmark", "table", "key", "machine", "device_kind", "command", "date")
NOTES_RE = re.compile(r"<!-- notes:(?P<name>[\w-]+):start -->\n(?P<body>.*?)<!-- notes:(?P=name):end -->", re.S)
DATA_RE = re.compile(r"<!-- records\n(?P<body>.*?)\n-->", re.S)


# --------------------------------------------------------------------------- running
def run_benchmark(name: str, extra: List[str], quick: bool = False) -> List[dict]:
    """Run bench_<name>.py, echo its log, return its records (stdout JSON lines)."""
    script = HERE / f"bench_{name}.py"
    bc.log(f"=== {name}: {script.name} {' '.join(extra)}")
    process = subprocess.run([sys.executable, str(script), *extra], stdout=subprocess.PIPE, text=True)
    records = parse_lines(process.stdout)
    folder = RESULTS / "quick" if quick else RESULTS  # smoke-test figures never replace real ones
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if process.returncode != 0:
        bc.log(f"{name} exited with {process.returncode}; its {len(records)} records are kept")
    return records


def parse_lines(text: str) -> List[dict]:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "benchmark" in rec and "table" in rec:
                records.append(rec)
    return records


# --------------------------------------------------------------------------- merging
def merged_records(paths: List[Path], allow_dry_run: bool = False) -> List[dict]:
    """Records of gpu_bench.py output files (JSON lines, or one JSON list), checked before merging.

    A record needs every META field; ``dry_run`` records (tiny sizes on a CPU) are refused unless
    ``allow_dry_run``, so a smoke test can never replace a measured row. ValueError names the
    file and the problem.
    """
    records: List[dict] = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such file (the gpu_bench.jsonl that came back from $OUT)")
        text = Path(path).read_text()
        found = json.loads(text) if text.lstrip().startswith("[") else parse_lines(text)
        if not found:
            raise ValueError(f"{path}: no benchmark records in it")
        for rec in found:
            missing = [k for k in META if k not in rec]
            if missing:
                raise ValueError(f"{path}: record {rec.get('key')!r} lacks {missing}")
            if rec.get("dry_run") and not allow_dry_run:
                raise ValueError(f"{path}: holds --dry-run records (tiny sizes), which never go into the document")
        records.extend(found)
    return records


def record_id(rec: dict) -> tuple:
    return (rec["benchmark"], rec["table"], rec.get("device_kind", "cpu"), rec.get("key", ""))


def records_in_doc(text: str) -> List[dict]:
    out = []
    for match in DATA_RE.finditer(text):
        out.extend(parse_lines(match.group("body")))
    return out


def merge(old: List[dict], new: List[dict]) -> List[dict]:
    merged: Dict[tuple, dict] = {record_id(r): r for r in old}
    for rec in new:
        merged.pop(record_id(rec), None)
        merged[record_id(rec)] = rec
    return list(merged.values())


# --------------------------------------------------------------------------- rendering
def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def is_status_only(rec: dict) -> bool:
    """A record that says why something was not measured (no numeric figure)."""
    figures = [v for k, v in rec.items() if k not in META and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return "status" in rec and not figures


def render_table(records: List[dict]) -> List[str]:
    """A markdown table of records. Values shared by every row (command, machine, date, and any
    column with one value) are stated once above it; records that only carry a status (not run,
    not implemented) become bullet points under it."""
    measured = [r for r in records if not is_status_only(r)]
    status_only = [r for r in records if is_status_only(r)]
    columns: List[str] = []
    for rec in measured:
        for key in rec:
            if key not in META and key not in columns:
                columns.append(key)
    shared = {}
    for field in ["command", "machine", "date"] + columns:
        values = [json.dumps(r.get(field), sort_keys=True) for r in measured]
        if measured and len(set(values)) == 1 and (field in META or measured[0].get(field) is not None):
            if field not in META and len(measured) == 1:
                continue  # a single row keeps its figures in the table
            shared[field] = measured[0].get(field)
    columns = [c for c in columns if c not in shared]
    columns += [f for f in ("machine", "date", "command") if f not in shared and measured]
    lines = []
    for field in ("command", "machine", "date"):
        if field in shared:
            lines.append(f"- {field}: `{shared[field]}`" if field == "command" else f"- {field}: {shared[field]}")
    common = [f"{k} = {fmt(v)}" for k, v in shared.items() if k not in META]
    if common:
        lines.append("- every row: " + "; ".join(common))
    if measured:
        lines.append("")
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for rec in measured:
            lines.append("| " + " | ".join(fmt(rec.get(c)) for c in columns) + " |")
    lines.append("")
    for rec in status_only:
        label = rec.get("setting") or rec.get("optimisation") or rec.get("key")
        extra = f" ({rec.get('optimisation')})" if rec.get("optimisation") and rec.get("setting") else ""
        lines.append(f"- {fmt(label)}{extra}: {fmt(rec['status'])} - {rec.get('machine')}, {rec.get('date')}, "
                     f"`{rec.get('command')}`")
    if status_only:
        lines.append("")
    return lines


def render_block(name: str, records: List[dict]) -> List[str]:
    lines = [f"<!-- bench:{name}:start (generated by run_benchmarks.py; edits here are overwritten) -->"]
    if not records:
        lines.append("_No results yet: run `.venv/bin/python Testing/benchmarks/run_benchmarks.py --only "
                     f"{name}`._")
    for kind in ("gpu", "cpu"):
        of_kind = [r for r in records if r.get("device_kind", "cpu") == kind]
        tables: Dict[str, List[dict]] = {}
        for rec in of_kind:
            tables.setdefault(rec["table"], []).append(rec)
        for table, rows in tables.items():
            lines.append(f"#### {table} ({kind.upper()})")
            lines.extend(render_table(rows))
    lines.append("<!-- records")
    lines.extend(json.dumps(r, sort_keys=False) for r in records)
    lines.append("-->")
    lines.append(f"<!-- bench:{name}:end -->")
    return lines


def notes_block(name: str, notes: Dict[str, str], default: str = "") -> List[str]:
    body = notes.get(name, default + "\n" if default else "")
    return [f"<!-- notes:{name}:start -->", body.rstrip("\n"), f"<!-- notes:{name}:end -->"]


def render_document(records: List[dict], notes: Dict[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python Testing/benchmarks/run_benchmarks.py`, options `--only NAME`,",
        "`--quick`); each table says which machine, command and date produced it. Raw records of the latest",
        "run are in `.bench/results/` (not versioned); the records shown here are kept in this file so that",
        "runs on different machines (CPU here, a GPU elsewhere) add up. Hand-written notes sit between",
        "`notes` markers and survive regeneration.",
        "",
    ]
    lines += notes_block("summary", notes, "_(summary notes)_")
    lines.append("")
    for name in SECTIONS:
        if name in MERGED_ONLY and not any(r["benchmark"] == name for r in records):
            continue
        lines.append(f"## {name}: {TITLES[name]}")
        lines.append("")
        lines += notes_block(f"{name}-intro", notes)
        lines.append("")
        lines += render_block(name, [r for r in records if r["benchmark"] == name])
        lines.append("")
        lines += notes_block(name, notes)
        lines.append("")
    lines.append("## Notes")
    lines.append("")
    lines += notes_block("general", notes)
    lines.append("")
    return "\n".join(lines)


def regenerate(new_records: List[dict]) -> None:
    text = DOC.read_text() if DOC.exists() else ""
    notes = {m.group("name"): m.group("body") for m in NOTES_RE.finditer(text)}
    records = merge(records_in_doc(text), new_records)
    records.sort(key=lambda r: SECTIONS.index(r["benchmark"]) if r["benchmark"] in SECTIONS else 99)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_name(f".{DOC.name}.tmp")
    tmp.write_text(render_document(records, notes))
    tmp.replace(DOC)
    bc.log(f"wrote {DOC} ({len(records)} records)")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description="Run the benchmarks and regenerate docs/benchmarks.md.")
    p.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(BENCHMARKS))
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (figures are then not representative)")
    p.add_argument("--ingest", nargs="*", type=Path, help="add records from JSON-lines files, run nothing")
    p.add_argument("--render-only", action="store_true", help="regenerate docs/benchmarks.md from what it holds")
    p.add_argument("--merge", nargs="+", type=Path, metavar="FILE",
                   help="add the records of gpu_bench.py (gpu_bench.jsonl files; docs/gpu.md), run nothing")
    p.add_argument("--allow-dry-run", action="store_true", help="with --merge: accept --dry-run records (tests)")
    args = p.parse_args(argv)
    new: List[dict] = []
    if args.merge:
        try:
            new = merged_records(args.merge, args.allow_dry_run)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    elif args.ingest:
        for path in args.ingest:
            new.extend(parse_lines(path.read_text()))
    elif not args.render_only:
        names = [n.strip() for n in args.only.split(",")] if args.only else BENCHMARKS
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            p.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
        for name in names:
            new.extend(run_benchmark(name, (QUICK_ARGS[name] if args.quick else []) + extra, args.quick))
    if args.quick and not args.ingest:
        bc.log("--quick: figures are smoke-test sizes; docs/benchmarks.md is not updated")
        return 0
    regenerate(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
