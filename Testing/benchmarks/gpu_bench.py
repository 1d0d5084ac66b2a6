"""Every GPU figure of docs/benchmarks.md from one command, within one device call of at most 540 s.

On the GPU machine (see docs/gpu.md for the whole procedure):

    python3 Testing/benchmarks/gpu_bench.py --wheels .gpu_wheels          # records to $OUT

Here, before (network needed once) and after:

    .venv/bin/python Testing/benchmarks/gpu_bench.py --fetch-wheels      # monai, SimpleITK, tqdm -> .gpu_wheels
    .venv/bin/python Testing/benchmarks/gpu_bench.py --dry-run           # the whole kit on the CPU, tiny sizes
    .venv/bin/python Testing/benchmarks/run_benchmarks.py --merge PATH/gpu_bench.jsonl

The kit runs its parts (gpu_parts.py) one after another, each in its own process with its own
time limit, and the whole under ``--budget`` seconds (default 540): a part that runs out is
stopped (its process group is killed) and recorded as timed out with what it had finished, and a
part that no longer fits is recorded as skipped. Synthetic data are made on the GPU machine's CPU
cores by a background process (gpu_data.py) while the first part warms up.

Output (``--out``, default ``$OUT`` when set, else ``<BENCH_DIR>/gpu/out``):
  gpu_bench.jsonl   every record, rewritten atomically after each one (run_benchmarks.py --merge);
  gpu_bench.log     the log of the kit and of every process it started.
The last lines printed are a table of the parts and of the issue's targets.

The GPU machine has PyTorch, numpy and scipy but not MONAI or SimpleITK: ``--wheels DIR``
installs the wheels in DIR (those not importable already) into a temporary folder with pip
(``--no-index --no-deps``) and puts it on the path of every process the kit starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections import deque
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_common as bc  # noqa: E402
import gpu_data  # noqa: E402
import gpu_parts  # noqa: E402

ENGINE_ROOT = bc.REPO / "SemiSupSeg"
RECORDS_NAME = "gpu_bench.jsonl"
LOG_NAME = "gpu_bench.log"
DEFAULT_BUDGET_S = 540.0
DRY_RUN_BUDGET_S = 240.0  # expected about 2 minutes on 2 busy cores; the rest is slack for CI
CARRY_LIMIT_BYTES = 64 * 2**20
WHEEL_DISTRIBUTIONS = ("monai", "SimpleITK", "tqdm")  # what the GPU machine lacks (tqdm: cheap insurance)
REQUIRED_MODULES = ("monai", "SimpleITK")

# Order and time limits (s) of the parts. The last part, compile, takes whatever time is left
# (at least MIN_LAST_S): its Inductor compile is the one step whose length nobody can promise.
PARTS = ["step", "inference", "first_overlay", "train_budget", "compile"]
LIMITS = {"step": 170, "inference": 80, "first_overlay": 120, "train_budget": 100, "compile": None}
DRY_RUN_LIMITS = {"step": 80, "inference": 50, "first_overlay": 60, "train_budget": 60, "compile": None}
MIN_LAST_S = {"gpu": 30.0, "dry": 10.0}
BUDGET_OVERHEAD_S = {"gpu": 50.0, "dry": 30.0}  # train_budget: start-up, predict and Dice around the training
SAFETY_S = 3.0


class InputError(Exception):
    """A problem the user fixes (bad option, missing folder): message and hint, exit code 2."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


# =========================================================================== records and log
class Kit:
    """The records of one kit run, the output folder and the log."""

    def __init__(self, out: Path, dry_run: bool, command: str):
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.dry_run = dry_run
        self.command = command
        self.started = bc.now_iso()
        self.records: List[dict] = []
        self.machine: Optional[str] = None  # as the workers describe it (their GPU), see own_record
        self.log_file = open(out / LOG_NAME, "a", encoding="utf-8")

    def log(self, message: str) -> None:
        line = f"[gpu_bench {time.strftime('%H:%M:%S')}] {message}"
        print(line, file=sys.stderr, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def add(self, rec: dict, part: str) -> dict:
        """Stamp ``rec`` with the kit's command, run and part, keep it, rewrite the records file."""
        rec = {**rec, "command": self.command, "kit_run": self.started, "part": part, "dry_run": self.dry_run}
        self.machine = self.machine or rec.get("machine")
        self.records.append(rec)
        print(json.dumps(rec), flush=True)
        self.write()
        return rec

    def write(self) -> None:
        path = self.out / RECORDS_NAME
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        os.replace(tmp, path)

    def own_record(self, table: str, key: str, device: str, **figures) -> dict:
        """A gpu_kit record made here. Its machine is the one a worker described: asking CUDA for the
        GPU's name here would hold a CUDA context (memory on the GPU) in this process all run long."""
        rec = bc.record("gpu_kit", table, key, "cpu", **figures)
        rec["machine"] = self.machine or bc.machine_description(device)
        rec["device_kind"] = bc.device_kind(device)
        return rec

    def status(self, part: str, device: str, status: str, seconds: float, limit_s: Optional[float],
               records: int) -> None:
        self.add(self.own_record("parts", part, device, status=status, seconds=round(seconds, 1),
                                 limit_s=None if limit_s is None else round(limit_s), records=records), part)


def kit_command(argv: List[str]) -> str:
    """How the kit was started, as someone would retype it from the repository root."""
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(bc.REPO))
    except ValueError:
        shown = "python3"
    return " ".join([shown, "Testing/benchmarks/gpu_bench.py"] + [shlex.quote(a) for a in argv])


# =========================================================================== wheels and size
def wheel_packages(wheel: Path) -> List[str]:
    """Top-level packages of a wheel (folders with an __init__.py at the wheel's root)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    return sorted({n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/__init__.py")})


def install_wheels(folder: Path, site: Path, log) -> List[dict]:
    """pip-install each wheel of ``folder`` whose packages are not importable yet into ``site``."""
    if not folder.is_dir():
        raise InputError(f"--wheels {folder}: no such folder.",
                         "Fetch them here with `gpu_bench.py --fetch-wheels` and carry .gpu_wheels (docs/gpu.md).")
    results = []
    for wheel in sorted(folder.glob("*.whl")):
        packages = wheel_packages(wheel)
        if packages and all(importlib.util.find_spec(p) is not None for p in packages):
            results.append({"wheel": wheel.name, "status": "already importable, not installed"})
            continue
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--upgrade", "--target", str(site), str(wheel)]
        process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        status = "installed" if process.returncode == 0 else f"pip failed: {process.stdout.strip()[-300:]}"
        log(f"wheel {wheel.name}: {status}")
        results.append({"wheel": wheel.name, "status": status})
    if site.is_dir():
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
    return results


def travel_size(carry: List[str]) -> Dict[str, int]:
    """Bytes that a device call sends: tracked files, untracked files git does not ignore, carried paths."""
    def listed(*args) -> List[Path]:
        out = subprocess.run(["git", "ls-files", "-z", *args], cwd=bc.REPO, stdout=subprocess.PIPE, check=True).stdout
        return [bc.REPO / name for name in out.decode().split("\0") if name]

    def size(paths) -> int:
        return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())

    sizes = {"tracked": size(listed()), "untracked": size(listed("--others", "--exclude-standard"))}
    for path in carry:
        root = bc.REPO / path
        sizes[path] = size(root.rglob("*")) if root.is_dir() else size([root])
    sizes["total"] = sum(sizes.values())
    return sizes


def fetch_wheels(folder: Path, python: str) -> int:
    """Download the wheels the GPU machine lacks (versions of this environment) for CPython ``python``."""
    from importlib.metadata import version

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()  # one version of each: two would stop the install there
    pins = [f"{name}=={version(name)}" for name in WHEEL_DISTRIBUTIONS]
    platforms = [arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for arg in ("--platform", tag)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
               "--implementation", "cp", *platforms, "-d", str(folder), *pins]
    print("+ " + " ".join(shlex.quote(c) for c in command), file=sys.stderr)
    code = subprocess.run(command).returncode
    print_size_report([str(folder.relative_to(bc.REPO)) if folder.is_relative_to(bc.REPO) else str(folder)])
    return code


def print_size_report(carry: List[str]) -> None:
    sizes = travel_size(carry)
    for name, value in sizes.items():
        print(f"{name:>12}: {value / 2**20:7.1f} MiB", file=sys.stderr)
    verdict = "fits" if sizes["total"] <= CARRY_LIMIT_BYTES else "DOES NOT FIT"
    print(f"{verdict} the 64 MiB a device call may carry", file=sys.stderr)


# =========================================================================== running the parts
def child_env(site: Optional[Path]) -> dict:
    paths = ([str(site)] if site else []) + [str(HERE), str(ENGINE_ROOT)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def stop_group(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """End the process group the kit started for ``process`` (its leader and whatever it started,
    e.g. a training process or a pool): SIGTERM, then SIGKILL to what is left after ``grace_s``.

    The leader is reaped only here (or later), so its id still names this group when it is signalled.
    """
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()  # reap the leader once it has exited
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return  # nobody left in the group
            time.sleep(0.1)


def pump(stream, sink: "queue.Queue", tag: str) -> None:
    for line in iter(stream.readline, ""):
        sink.put((tag, line.rstrip("\n")))
    sink.put((tag, None))


class PartRunner:
    """Runs the kit's parts under one deadline and records every part's outcome."""

    def __init__(self, kit: Kit, device: str, env: dict, deadline: float, limits: dict, spec: dict,
                 scale: float = 1.0):
        """``limits`` (s) are for the default budget; ``scale`` (a larger budget / the default) stretches them."""
        self.kit, self.device, self.env, self.deadline, self.limits, self.spec = kit, device, env, deadline, limits, spec
        self.scale = scale
        self.current: Optional[subprocess.Popen] = None

    def limit_for(self, part: str) -> float:
        left = self.deadline - time.monotonic() - SAFETY_S
        own = self.limits.get(part)
        return left if own is None else min(float(own) * self.scale, left)

    def run(self, part: str) -> str:
        limit = self.limit_for(part)
        minimum = MIN_LAST_S["dry" if self.kit.dry_run else "gpu"]
        if limit < minimum:
            status = f"skipped: {max(limit, 0):.0f} s left of the kit's budget"
            self.kit.status(part, self.device, status, 0.0, limit, 0)
            return status
        spec = {**self.spec, "limit_s": limit}
        if part == "train_budget":
            overhead = BUDGET_OVERHEAD_S["dry" if self.kit.dry_run else "gpu"]
            spec["budget_s"] = max(1.0, min(spec["sizes"]["budget"]["budget_s"], limit - overhead))
        return self.run_process(part, spec, limit)

    def run_process(self, part: str, spec: dict, limit: float) -> str:
        self.kit.log(f"part {part}: limit {limit:.0f} s")
        started = time.monotonic()
        process = self.current = subprocess.Popen(self.worker_command(part, spec), stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True, env=self.env, cwd=bc.REPO,
                                                  start_new_session=True)
        lines: "queue.Queue" = queue.Queue()
        for stream, tag in ((process.stdout, "out"), (process.stderr, "err")):
            threading.Thread(target=pump, args=(stream, lines, tag), daemon=True).start()
        count, tail, open_streams, timed_out = 0, deque(maxlen=8), 2, False
        while open_streams:
            remaining = started + limit - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            try:
                tag, line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
            elif tag == "err":
                tail.append(line)
                self.kit.log_file.write(line + "\n")
                print(line, file=sys.stderr, flush=True)
            else:
                count += self.take(line, part)
        if timed_out:
            self.kit.log(f"part {part}: time limit {limit:.0f} s reached, stopping it")
        stop_group(process)
        process.wait()
        self.current = None
        seconds = time.monotonic() - started
        status = self.outcome(process.returncode, timed_out, limit, count, tail)
        self.kit.status(part, self.device, status, seconds, limit, count)
        return status

    @staticmethod
    def worker_command(part: str, spec: dict) -> List[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--worker", part, "--spec", json.dumps(spec)]

    def take(self, line: str, part: str) -> int:
        """A record line of the worker (anything else on its stdout goes to the log)."""
        try:
            rec = json.loads(line) if line.startswith("{") else None
        except json.JSONDecodeError:
            rec = None
        if not (isinstance(rec, dict) and "benchmark" in rec and "table" in rec):
            self.kit.log_file.write(line + "\n")
            return 0
        self.kit.add(rec, part)
        return 1

    @staticmethod
    def outcome(code: int, timed_out: bool, limit: float, count: int, tail) -> str:
        if timed_out:
            return f"timed out after {limit:.0f} s ({count} records kept)"
        if code == 0:
            return "measured"
        last = next((line for line in reversed(tail) if line.strip()), "")
        return f"failed: exit code {code}: {last[-300:]}"

    def stop_current(self) -> None:
        if self.current is not None:
            stop_group(self.current, grace_s=2.0)


# =========================================================================== targets
def find(records: List[dict], benchmark: str, table: str, key_part: str = "", **fields) -> List[dict]:
    return [r for r in records if r["benchmark"] == benchmark and r["table"] == table and key_part in r["key"]
            and all(r.get(k) == v for k, v in fields.items())]


def first_value(rows: List[dict], field: str):
    values = [r[field] for r in rows if isinstance(r.get(field), (int, float)) and not isinstance(r.get(field), bool)]
    return values[0] if values else None


def targets(records: List[dict], parts_run: Optional[List[str]] = None) -> List[dict]:
    """The issue's targets, each with the measured value, whether it is met, and where it comes from.

    With ``parts_run`` (a ``--parts`` call), only the targets fed by those parts: an empty row for a
    part that was not run would replace, when merged, the value an earlier full run measured.
    """
    step = find(records, "train_step", "step", method="dycon")
    ratio_rows = find(records, "train_step", "step", method="dycon / mean_teacher")
    faster = [r for r in find(records, "train_step", "optimisations") if "fp32" not in r["key"]]
    best = [v for v in [first_value(step, "it_per_s")] + [r.get("it_per_s") for r in faster]
            if isinstance(v, (int, float))]
    overlay = find(records, "first_overlay", "first_overlay")
    la = find(records, "inference", "per_volume", setting="LA size")
    large = find(records, "inference", "per_volume", setting="large")
    budget = find(records, "gpu_kit", "train_budget")
    rows = [
        ("DyCON step at the LA setting, best of bf16 / +channels-last / +cudnn.benchmark / +compile", ">= 10 it/s",
         max(best) if best else None, lambda v: v >= 10, "step, compile"),
        ("DyCON step / mean-teacher step", "<= 1.25", first_value(ratio_rows, "time_ratio"), lambda v: v <= 1.25, "step"),
        ("FeCL extra peak memory (DyCON - mean teacher)", "< 1024 MiB", first_value(ratio_rows, "fecl_extra_mem_mb"),
         lambda v: v < 1024, "step"),
        ("default training peak memory (DyCON step, max_memory_allocated)", "< 16384 MiB",
         first_value(step, "peak_mem_mb"), lambda v: v < 16384, "step"),
        ("train start -> every first overlay (10 x 256x256x100)", "< 60 s", first_value(overlay, "all_overlays_s"),
         lambda v: v < 60, "first_overlay"),
        ("inference, LA-sized volume (probabilities + entropy)", "< 1 s", first_value(la, "total_s"),
         lambda v: v < 1, "inference"),
        ("inference, 512x512x300", "< 5 s", first_value(large, "total_s"), lambda v: v < 5, "inference"),
        ("DyCON fixed-budget run: held-out synthetic Dice", "no target (regression watch)",
         first_value(budget, "held_out_dice"), None, "train_budget"),
    ]
    ran = set(PARTS if parts_run is None else parts_run)
    return [{"target": name, "goal": goal, "value": value,
             "met": None if value is None or check is None else bool(check(value)), "source": source}
            for name, goal, value, check, source in rows if ran & {p.strip() for p in source.split(",")}]


def summary_lines(records: List[dict]) -> List[str]:
    lines = ["", "part           status"]
    for r in find(records, "gpu_kit", "parts"):
        lines.append(f"{r['key']:<14} {r['status']} ({r['seconds']} s, {r['records']} records)")
    lines += ["", "target                                                       goal         value      met"]
    for r in find(records, "gpu_kit", "targets"):
        value = "-" if r.get("value") is None else f"{r['value']:.4g}"
        lines.append(f"{r['target'][:60]:<60} {r['goal'][:12]:<12} {value:<10} {r.get('met')}")
    return lines


# =========================================================================== the run
def resolve_device(name: str, dry_run: bool) -> str:
    if dry_run:
        return "cpu" if name == "auto" else name
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            raise InputError("PyTorch sees no CUDA GPU here.",
                             "Run the kit on the GPU machine (docs/gpu.md), or use --dry-run to test it on the CPU.")
        return "cuda"
    return name


def start_data_process(kit: Kit, env: dict, data: Dict[str, dict], dry_run: bool) -> subprocess.Popen:
    processes = 1 if dry_run else max(2, min(8, (os.cpu_count() or 2) // 2))
    gpu_data.clear_markers()
    command = [sys.executable, str(Path(__file__).resolve()), "--prepare-data", json.dumps(data),
               "--processes", str(processes)]
    kit.log(f"making the synthetic data in the background ({processes} processes)")
    return subprocess.Popen(command, stdout=kit.log_file, stderr=kit.log_file, env=env, cwd=bc.REPO,
                            start_new_session=True)


def run_kit(args, argv: List[str]) -> int:
    started = time.monotonic()
    budget = args.budget or (DRY_RUN_BUDGET_S if args.dry_run else DEFAULT_BUDGET_S)
    deadline = started + budget
    out = Path(args.out or os.environ.get("OUT") or bc.BENCH_DIR / "gpu" / "out").resolve()
    kit = Kit(out, args.dry_run, kit_command(argv))
    kit.log(f"budget {budget:.0f} s, records to {out / RECORDS_NAME}")
    site = Path(os.environ.get("TMPDIR", "/tmp")) / f"semisupseg-gpu-site-{os.getpid()}" if args.wheels else None
    wheels = install_wheels(Path(args.wheels), site, kit.log) if args.wheels else []
    missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    device = resolve_device(args.device, args.dry_run)
    chosen = [p.strip() for p in args.parts.split(",")] if args.parts else PARTS
    if missing:
        for part in chosen:
            kit.status(part, device, f"skipped: {', '.join(missing)} not importable (carry the wheels for this "
                       f"Python {sys.version_info[0]}.{sys.version_info[1]}: docs/gpu.md)", 0.0, None, 0)
        return finish(kit, 2)
    env = child_env(site)
    data_sets = gpu_parts.data_specs(args.dry_run, chosen)
    data = start_data_process(kit, env, data_sets, args.dry_run)
    spec = {"device": device, "dry_run": args.dry_run, "sizes": gpu_parts.sizes(args.dry_run),
            "data_sets": list(data_sets), "wheels": "; ".join(f"{w['wheel']}: {w['status']}" for w in wheels) or None}
    default_budget = DRY_RUN_BUDGET_S if args.dry_run else DEFAULT_BUDGET_S
    runner = PartRunner(kit, device, env, deadline, DRY_RUN_LIMITS if args.dry_run else LIMITS, spec,
                        scale=max(1.0, budget / default_budget))
    run_parts(kit, runner, chosen, data, device)
    failed = [r for r in find(kit.records, "gpu_kit", "parts") if r["status"] != "measured"]
    kit.log(f"done in {time.monotonic() - started:.0f} s of {budget:.0f}; {len(failed)} part(s) not fully measured")
    return finish(kit, 0 if not failed else 3)


def run_parts(kit: Kit, runner: PartRunner, chosen: List[str], data: subprocess.Popen, device: str) -> None:
    """Each part in turn, the data process's row once it has ended, and the targets at the end,
    also when the kit is interrupted (SIGTERM, Ctrl-C): what was measured is never lost."""
    data_recorded = False
    done: List[str] = []
    try:
        for part in chosen:
            runner.run(part)
            done.append(part)
            if not data_recorded and data.poll() is not None:
                data_recorded = record_data(kit, device, data)
    except KeyboardInterrupt:
        kit.log("interrupted: stopping the running part; the records so far are kept")
        runner.stop_current()
        for part in chosen[len(done):]:
            kit.status(part, device, "not finished: the kit was interrupted", 0.0, None, 0)
    finally:
        runner.stop_current()
        if not data_recorded:
            if data.poll() is None:
                stop_group(data, grace_s=1.0)
            record_data(kit, device, data)
        for row in targets(kit.records, chosen):
            kit.add(kit.own_record("targets", row["target"], device, **row), "targets")


def record_data(kit: Kit, device: str, data: subprocess.Popen) -> bool:
    """The data process's row: each data set's own seconds (the process ran beside the parts)."""
    code = data.poll()
    status = "measured" if code == 0 else f"failed: exit code {code} (see {LOG_NAME})"
    made = gpu_data.made_so_far()
    seconds = sum(v for v in made.values() if isinstance(v, (int, float)))
    kit.add(kit.own_record("parts", "data", device, status=status, seconds=round(seconds, 1), limit_s=None,
                           records=0, data_sets=", ".join(f"{k} {v}" + (" s" if v != "failed" else "")
                                                          for k, v in made.items())), "data")
    return True


def finish(kit: Kit, code: int) -> int:
    for line in summary_lines(kit.records):
        print(line, flush=True)
    kit.log_file.close()
    return code


def parse_args(argv: List[str]):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for gpu_bench.jsonl and gpu_bench.log (default $OUT, else .bench/gpu/out)")
    p.add_argument("--dry-run", action="store_true", help="the whole kit on the CPU with tiny sizes (a few minutes)")
    p.add_argument("--budget", type=float, help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f}, "
                   f"dry run {DRY_RUN_BUDGET_S:.0f}); a larger one stretches the parts' own limits alike")
    p.add_argument("--wheels", help="folder of wheels to install first (MONAI, SimpleITK, tqdm; docs/gpu.md)")
    p.add_argument("--device", default="auto", help="auto (cuda; cpu with --dry-run), cuda, cuda:N or cpu")
    p.add_argument("--parts", help="comma-separated subset of: " + ", ".join(PARTS))
    p.add_argument("--fetch-wheels", nargs="?", const=".gpu_wheels", metavar="DIR",
                   help="download the wheels the GPU machine lacks into DIR (default .gpu_wheels), then exit")
    p.add_argument("--python", default="3.12", help="with --fetch-wheels: the GPU machine's Python (default 3.12; "
                   "3.11-3.13 share SimpleITK's abi3 wheel, 3.10 needs its own)")
    p.add_argument("--check-size", nargs="*", metavar="PATH", help="print what a device call would carry, then exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--prepare-data", help=argparse.SUPPRESS)
    p.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [x for x in (args.parts or "").split(",") if x.strip() and x.strip() not in PARTS]
    if unknown:
        raise InputError(f"--parts names unknown part(s) {unknown}.", f"Choose from: {', '.join(PARTS)}.")
    return args


def interrupt(signum, frame) -> None:
    """SIGTERM (the device call's own limit, a person) ends the kit like Ctrl-C: records are kept."""
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        if args.worker:
            return gpu_parts.main_worker(args.worker, args.spec)
        if args.prepare_data:
            return gpu_data.prepare_all(json.loads(args.prepare_data), args.processes)
        if args.fetch_wheels:
            return fetch_wheels((bc.REPO / args.fetch_wheels).resolve(), args.python)
        if args.check_size is not None:
            print_size_report(args.check_size)
            return 0
        signal.signal(signal.SIGTERM, interrupt)
        return run_kit(args, argv)
    except InputError as err:
        print(f"error: {err.message}" + (f"\nhint: {err.hint}" if err.hint else ""), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
