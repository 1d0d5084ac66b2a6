"""Shared helpers of the benchmark scripts: records, machine description, subprocess training, AUROC.

Every benchmark script prints one JSON object per measurement on stdout (``emit``) and its log on
stderr; ``run_benchmarks.py`` collects the lines and writes ``docs/benchmarks.md``. A record
always has ``benchmark``, ``table`` (which table of the benchmark's section it belongs to),
``key`` (what it measures; a newer record with the same benchmark, table, device kind and key
replaces an older one), ``machine``, ``device_kind`` (cpu | gpu), ``command`` and ``date``, plus
its figures.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# gitignored: workspaces, runs and raw results of the benchmarks (SEMISUPSEG_BENCH_DIR moves it, for tests)
BENCH_DIR = Path(os.environ.get("SEMISUPSEG_BENCH_DIR") or REPO / ".bench")
LA_DEFAULT = REPO.parent / "shared" / "datasets" / "LA2018"


# --------------------------------------------------------------------------- machine and records
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() is empty on most Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: str = "cpu") -> str:
    """'NVIDIA H100 80GB HBM3 (GPU), <cpu> x 16 cores' or '<cpu>, 2 cores (CPU only)'."""
    cores = os.cpu_count() or 1
    cpu = f"{cpu_model()}, {cores} cores"
    if str(device).startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(torch.device(device))} (GPU); host {cpu}"
    return f"{cpu} (CPU only)"


def device_kind(device: str) -> str:
    return "gpu" if str(device).startswith("cuda") else "cpu"


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_average() -> Optional[float]:
    """1-minute load average (other processes competing for the cores), None if unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def invocation() -> str:
    """The command that reproduces this measurement, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO))
    except ValueError:
        script_text = str(script)
    return " ".join([".venv/bin/python", script_text] + [shlex.quote(a) for a in sys.argv[1:]])


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def record(benchmark: str, table: str, key: str, device: str, **figures) -> dict:
    """One measurement as a JSON-ready dict (see the module docstring)."""
    return {
        "benchmark": benchmark,
        "table": table,
        "key": key,
        "machine": machine_description(device),
        "device_kind": device_kind(device),
        "command": invocation(),
        "date": now_iso(),
        **figures,
    }


def emit(rec: dict) -> None:
    """Print one record as a JSON line on stdout (what run_benchmarks.py collects)."""
    print(json.dumps(rec, default=_json_default), flush=True)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- memory
def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Current resident set size from /proc/self/status (VmRSS), 0 when unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


# --------------------------------------------------------------------------- statistics
def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the binary labels ``positives``.

    Mann-Whitney form with mid-ranks for ties (sklearn is not a dependency):
        AUROC = (sum of the positives' ranks - n_p (n_p + 1) / 2) / (n_p * n_n)
    i.e. the probability that a random positive scores higher than a random negative, ties
    counting one half. NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positives).astype(bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = mid_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mid_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each group of ties
    mean_rank = ends - (counts - 1) / 2.0
    return mean_rank[inverse.ravel()]


def fraction_in_boxes(mask: np.ndarray, boxes: Sequence[tuple]) -> float:
    """Share of the True voxels of ``mask`` inside the union of boxes ((lo, hi) inclusive indices)."""
    total = int(mask.sum())
    if total == 0:
        return float("nan")
    covered = np.zeros(mask.shape, dtype=bool)
    for lo, hi in boxes:
        covered[tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))] = True
    return float((mask & covered).sum() / total)


def random_boxes_like(boxes: Sequence[tuple], shape: Sequence[int], rng: np.random.Generator) -> List[tuple]:
    """Boxes of the same sizes as ``boxes`` placed uniformly at random, fully inside ``shape``."""
    placed = []
    for lo, hi in boxes:
        size = [int(b) - int(a) + 1 for a, b in zip(lo, hi)]
        start = [int(rng.integers(0, max(n - s, 0) + 1)) for n, s in zip(shape, size)]
        placed.append((start, [a + s - 1 for a, s in zip(start, size)]))
    return placed


# --------------------------------------------------------------------------- LA2018 and training runs
def la_root() -> Optional[Path]:
    """The LA2018 folder (env SEMISUPSEG_LA2018 overrides ../shared/datasets/LA2018), or None."""
    root = Path(os.environ.get("SEMISUPSEG_LA2018", LA_DEFAULT))
    return root if (root / "dataset.json").is_file() and (root / "labelsTr").is_dir() else None


def la_workspace(root: Path) -> Path:
    """A workspace in .bench whose dataset.json, imagesTr and labelsTr point at the shared LA2018.

    Training writes ``<workspace>/runs``: it must not write into the shared, read-only dataset.
    """
    ws = BENCH_DIR / "la" / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    for name in ("imagesTr", "labelsTr"):
        link = ws / name
        if not link.exists():
            link.symlink_to(root.resolve() / name, target_is_directory=True)
    target = ws / "dataset.json"
    text = (root / "dataset.json").read_text()
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return ws


def semisupseg_command() -> List[str]:
    """The CLI next to this interpreter (the venv's console script), else ``python -m semisupseg``."""
    script = Path(sys.executable).parent / "semisupseg"
    return [str(script)] if script.exists() else [sys.executable, "-m", "semisupseg"]


def run_events(run_dir: Path) -> List[dict]:
    path = Path(run_dir) / "events.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def finished_events(run_dir: Path) -> list:
    """The run's 'finished' events, oldest first (a resumed or re-predicted run has several)."""
    return [e for e in run_events(run_dir) if e.get("event") == "finished"]


def run_finished(run_dir: Path) -> bool:
    return bool(finished_events(run_dir))


def training_finished(run_dir: Path) -> dict:
    """The last 'finished' event of training ({} if none): `predict` also finishes a run's log,
    without iterations or times."""
    trained = [e for e in finished_events(run_dir) if "iterations" in e]
    return trained[-1] if trained else {}


def trained_iterations(run_dir: Path, configured) -> int:
    """Iterations the run trained (its last training 'finished' event); ``configured`` when it has
    none. A time-budgeted run's config leaves ``iterations`` empty, so the config alone says nothing."""
    finished = training_finished(run_dir)
    return int(finished["iterations"]) if finished else configured


def train_subprocess(
    workspace: Path,
    config: dict,
    run_id: str,
    on_event: Optional[Callable[[dict, float], bool]] = None,
    extra_args: Iterable[str] = (),
    threads: Optional[int] = None,
) -> tuple:
    """Run ``semisupseg train`` in a subprocess; returns (return code, events, wall seconds).

    ``on_event(event, seconds_since_start)`` sees every JSON event as it arrives; returning True
    stops the run (SIGTERM: the engine checkpoints and exits 0).
    """
    config_path = BENCH_DIR / "configs" / f"{run_id}.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=1))
    command = semisupseg_command() + [
        "train", "--workspace", str(workspace), "--config", str(config_path), "--run-id", run_id, *extra_args,
    ]
    log("running " + " ".join(shlex.quote(c) for c in command))
    started = time.perf_counter()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(int(threads))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
    events = []
    stopping = False
    assert process.stdout is not None
    for line in process.stdout:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        elapsed = time.perf_counter() - started
        event["_bench_seconds"] = round(elapsed, 3)
        events.append(event)
        if event.get("event") == "progress":
            log(f"{run_id}: iteration {event.get('iteration')}/{event.get('total')} "
                f"({event.get('it_per_s')} it/s, {elapsed:.0f} s)")
        if on_event is not None and not stopping and on_event(event, elapsed):
            stopping = True
            process.terminate()
    code = process.wait()
    return code, events, time.perf_counter() - started

