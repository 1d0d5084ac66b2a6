"""The parts of the GPU kit (``gpu_bench.py``): what each measures, at which sizes, in its own process.

``gpu_bench.py`` starts ``gpu_bench.py --worker PART --spec JSON`` for each part; the worker
calls ``run_part`` and prints one JSON record per measurement on stdout as soon as it has it
(``bench_common.emit``), so a part that is stopped at its time limit keeps what it finished.
Records use the benchmark, table and key of the CPU benchmark scripts where one measures the
same thing (a later GPU run of ``bench_train_step.py`` replaces them), and the ``gpu_kit``
section otherwise.

Parts (sizes for a GPU; ``--dry-run`` uses the tiny ones of ``DRY_RUN``):
  step          first the environment (Python, PyTorch, CUDA, GPU, the engine's methods and the
                versions of its dependencies), then ``Trainer.step`` of the engine's own Trainer
                (built per setting as ``semisupseg train`` builds it, on a synthetic workspace) at
                the LA setting (4+4 patches 112x112x80, U-Net 16-256, bf16 autocast): DyCON, mean
                teacher and every other method (s/it, it/s, peak max_memory_allocated);
                fp32 vs bf16, channels-last and cudnn.benchmark on vs off as ratios to DyCON's
                step in the same process; FeCL's extra memory (DyCON - mean teacher); the
                profile (top kernels) of one DyCON step.
  inference     probabilities + entropy + label map for an LA-sized volume and 512x512x300,
                each also with MC dropout K=8 (warm-up excluded).
  first_overlay ``semisupseg train`` start -> first overlay on 10 volumes of 256x256x100
                (bench_first_overlay.py, on the kit's pre-made workspace).
  train_budget  DyCON, GPU defaults, on a synthetic workspace for a fixed wall budget (counted
                from the ``started`` event), then ``semisupseg predict`` on the held-out cases
                and their Dice against the generator's truth.
  compile       torch.compile on vs off for DyCON's step (compile time reported apart).
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import bench_common as bc
import gpu_data

FULL_WIDTHS = [16, 32, 64, 128, 256]
TINY_WIDTHS = [4, 8, 16, 32, 64]
GIB = 1024.0

# Every size the kit uses. The GPU ones are the issue's; the dry-run ones make the whole kit
# run on two CPU cores in about two minutes, exercising the same code paths.
GPU_SIZES = {
    "step": {"name": "(a) LA 4+4 112x112x80", "methods_name": "LA comparison, GPU (a) setting",
             "widths": FULL_WIDTHS, "patch": [112, 112, 80], "n_l": 4, "n_u": 4, "volume": [176, 144, 96],
             "amp": "auto", "channels_last": False, "warmup": 3, "iterations": 12},
    "inference": {"widths": FULL_WIDTHS, "window": [112, 112, 80], "overlap": 0.5, "mc": 8,
                  "volumes": {"LA size": [192, 144, 88], "large": [512, 512, 300]},
                  "targets_s": {"LA size": 1.0, "large": 5.0}},
    "first_overlay": {"args": ["--device", "cuda"], "size": [256, 256, 100], "cases": 10},
    "budget": {"size": [160, 160, 96], "spacing": [0.8, 0.8, 1.0], "labelled": 4, "unlabelled": 12, "test": 4,
               "seed": 11, "budget_s": 45.0, "config": {}},
    "compile": {"extra_warmup": 3, "backend": "inductor"},
}
DRY_RUN = {
    "step": {"name": "dry-run 1+1 32x32x32", "methods_name": "dry-run 1+1 32x32x32 (methods)",
             "widths": TINY_WIDTHS, "patch": [32, 32, 32], "n_l": 1, "n_u": 1, "volume": [48, 48, 40],
             "amp": "auto", "channels_last": False, "warmup": 1, "iterations": 2},
    "inference": {"widths": TINY_WIDTHS, "window": [32, 32, 32], "overlap": 0.5, "mc": 2,
                  "volumes": {"LA size": [48, 40, 32], "large": [80, 64, 48]},
                  "targets_s": {"LA size": 1.0, "large": 5.0}},
    "first_overlay": {"args": ["--device", "cpu", "--quick"], "size": [96, 96, 48], "cases": 3,
                      "config": {"network_options": {"widths": TINY_WIDTHS}, "patch_size": [32, 32, 32],
                                 "batch_labelled": 1, "batch_unlabelled": 1}},
    "budget": {"size": [48, 48, 40], "spacing": [1.0, 1.0, 1.5], "labelled": 2, "unlabelled": 2, "test": 2,
               "seed": 11, "budget_s": 3.0,
               "config": {"network_options": {"widths": TINY_WIDTHS}, "patch_size": [32, 32, 32],
                          "batch_labelled": 1, "batch_unlabelled": 1, "iterations": 300}},
    "compile": {"extra_warmup": 1, "backend": "eager"},
}
FIRST_OVERLAY_SPACING = [0.8, 0.8, 1.0]  # bench_first_overlay.SPACING
FIRST_OVERLAY_SEED = 7
FIRST_OVERLAY_LABELLED = 2


def sizes(dry_run: bool) -> dict:
    return DRY_RUN if dry_run else GPU_SIZES


DATA_OF_PART = {"step": "step", "compile": "step", "first_overlay": "first_overlay", "train_budget": "budget"}


def data_specs(dry_run: bool, parts: Optional[List[str]] = None) -> Dict[str, dict]:
    """What gpu_data.prepare_all makes (for ``parts``, default all), in order of need."""
    s = sizes(dry_run)
    step = s["step"]
    overlay = s["first_overlay"]
    budget = s["budget"]
    specs = {
        "step": {"size": step["volume"], "spacing": [0.625, 0.625, 0.625], "labelled": step["n_l"],
                 "unlabelled": max(step["n_u"], 1), "test": 0, "seed": 0, "extension": ".nii"},
        "first_overlay": {"size": overlay["size"], "cases": overlay["cases"], "spacing": FIRST_OVERLAY_SPACING,
                          "seed": FIRST_OVERLAY_SEED, "labelled": min(FIRST_OVERLAY_LABELLED, overlay["cases"]),
                          "unlabelled": overlay["cases"] - min(FIRST_OVERLAY_LABELLED, overlay["cases"]), "test": 0},
        "budget": {k: budget[k] for k in ("size", "spacing", "labelled", "unlabelled", "test", "seed")},
    }
    needed = {DATA_OF_PART[p] for p in (parts or DATA_OF_PART) if p in DATA_OF_PART}
    return {name: spec for name, spec in specs.items() if name in needed}


# =========================================================================== helpers
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release(device: str) -> None:
    """Free what the previous setting left, so the next peak is its own (max_memory_allocated)."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def emit(benchmark: str, table: str, key: str, device: str, **figures) -> None:
    bc.emit(bc.record(benchmark, table, key, device, **figures))


def make_trainer(spec: dict):
    """The engine's Trainer built as ``semisupseg train`` builds it (defaults, then this setting's
    values), on the kit's step workspace: the step timed is exactly a real run's."""
    import io

    from semisupseg.config import apply_overrides, load_config
    from semisupseg.events import EventWriter
    from semisupseg.training.trainer import Trainer

    config = apply_overrides(
        load_config(None), method=spec["method"], method_options=spec.get("method_options", {}), network="unet3d",
        network_options={"widths": spec["widths"]}, batch_labelled=spec["n_l"], batch_unlabelled=spec["n_u"],
        patch_size=spec["patch"], amp=spec["amp"], channels_last=spec["channels_last"],
        compile=spec.get("compile", False), device=spec["device"], seed=0,
        iterations=spec["warmup"] + spec["iterations"] + 1)
    workspace = Path(spec["workspace"])
    events = EventWriter(stream=io.StringIO(), progress_bar=False)
    return Trainer(workspace, config, workspace / "runs" / "gpu-kit-step", events, resume=False)


def timed_steps(spec: dict) -> dict:
    """The engine's Trainer.step at ``spec``: build and warm-up timed apart, then the median of
    ``iterations`` synchronised steps; peak memory of the steps (max_memory_allocated on a GPU)."""
    import torch

    device = spec["device"]
    release(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    trainer = make_trainer(spec)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(spec["warmup"]):
        trainer.step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    wall = []
    for _ in range(spec["iterations"]):
        t0 = time.perf_counter()
        if trainer.step() is None:
            raise RuntimeError("a measured step was skipped (non-finite loss)")
        sync(device)
        wall.append(time.perf_counter() - t0)
    wall.sort()
    out = {"s_per_it": wall[len(wall) // 2], "s_per_it_min": wall[0], "build_s": build_s, "warmup_s": warmup_s}
    if device.startswith("cuda"):
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_rss_mb"] = bc.peak_rss_mb()
    del trainer
    release(device)
    return out


def step_figures(result: dict) -> dict:
    if "error" in result:
        return {"status": result["error"]}
    out = {"it_per_s": round(1.0 / result["s_per_it"], 3), "s_per_it": round(result["s_per_it"], 4),
           "s_per_it_min": round(result["s_per_it_min"], 4), "build_s": round(result["build_s"], 1),
           "warmup_s": round(result["warmup_s"], 1)}
    for key in ("peak_mem_mb", "peak_rss_mb"):
        if key in result:
            out[key] = round(result[key], 1)
    return out


def ratio(a: dict, b: dict, key: str) -> Optional[float]:
    try:
        return round(a[key] / b[key], 3)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def guarded(fn: Callable[[], dict]) -> dict:
    """Run one setting; an exception (out of memory, a bug) becomes {"error": ...} and the part goes on."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - recorded, the next setting still runs
        bc.log(f"setting failed: {type(err).__name__}: {err}")
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}


def wait_for_data(name: str, limit_s: float) -> dict:
    bc.log(f"waiting for synthetic data '{name}'")
    return gpu_data.wait_for(name, limit_s)


# =========================================================================== parts
def part_environment(spec: dict) -> None:
    import platform

    import numpy
    import scipy
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "numpy": numpy.__version__, "scipy": scipy.__version__, "cpu_cores": os.cpu_count()}
    device = spec["device"]
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
    for module in ("monai", "SimpleITK", "tqdm"):
        info[module.lower()] = module_version(module)
    from semisupseg.methods import METHODS

    info["methods"] = ",".join(sorted(METHODS))
    info["wheels"] = spec.get("wheels") or "none carried"
    emit("gpu_kit", "environment", "environment", device, **info)


def module_version(name: str) -> str:
    try:
        module = __import__(name)
    except ImportError as err:
        return f"missing ({err})"
    version = getattr(module, "__version__", None)
    if version is None and hasattr(module, "Version_VersionString"):
        version = module.Version_VersionString()
    return str(version)


def method_order() -> List[str]:
    """DyCON and mean teacher first (the headline ratio), then every other method of the engine."""
    from semisupseg.methods import METHODS

    first = [m for m in ("dycon", "mean_teacher") if m in METHODS]
    return first + sorted(m for m in METHODS if m not in first)


def part_step(spec: dict) -> None:
    device, s = spec["device"], spec["sizes"]["step"]
    on_gpu = device.startswith("cuda")
    part_environment(spec)  # here, not in a process of its own: one interpreter start less
    workspace = wait_for_data("step", spec["limit_s"])["workspace"]
    if on_gpu:  # the other data sets are made on the CPU meanwhile; time the steps without them
        wait_until(lambda: gpu_data.all_ready(spec["data_sets"]), 30.0)
    base = {**s, "device": device, "method_options": {}, "workspace": workspace}
    results: Dict[str, dict] = {}
    for method in method_order():
        run = {**base, "method": method, "n_u": 0 if method == "supervised" else base["n_u"]}
        results[method] = guarded(lambda: timed_steps(run))
        emit_method_row(s, method, results[method], results.get("dycon", {}), device)
        if method == "mean_teacher":  # the headline figures first, then the profile (it matters most
            emit_step_headline(s, results, device)  # when a figure falls short), then the other methods
            emit_variants(base, results["dycon"], device)
            emit_profile(base, device)


def emit_method_row(s: dict, method: str, result: dict, dycon: dict, device: str) -> None:
    on_gpu = device.startswith("cuda")
    mem_key = "peak_mem_mb" if on_gpu else "peak_rss_mb"
    emit("train_step", "methods", f"{s['methods_name']}|{method}", device, setting=s["methods_name"], method=method,
         batch=f"{s['n_l']}+{0 if method == 'supervised' else s['n_u']}", patch="x".join(map(str, s["patch"])),
         widths="-".join(map(str, s["widths"])), **step_figures(result),
         time_vs_dycon=ratio(result, dycon, "s_per_it"), mem_vs_dycon=ratio(result, dycon, mem_key))


def emit_step_headline(s: dict, results: dict, device: str) -> None:
    """The step table's DyCON and mean-teacher rows, their ratio and FeCL's extra memory."""
    on_gpu = device.startswith("cuda")
    common = {"setting": s["name"], "patch": "x".join(map(str, s["patch"])), "batch": f"{s['n_l']}+{s['n_u']}",
              "widths": "-".join(map(str, s["widths"])), "warmup": s["warmup"], "measured": s["iterations"]}
    for method in ("dycon", "mean_teacher"):
        emit("train_step", "step", f"{s['name']}|{method}", device, method=method, amp=s["amp"], **common,
             **step_figures(results[method]))
    d, m = results["dycon"], results["mean_teacher"]
    mem_key = "peak_mem_mb" if on_gpu else "peak_rss_mb"
    extra = {}
    if on_gpu and "peak_mem_mb" in d and "peak_mem_mb" in m:
        extra = {"fecl_extra_mem_mb": round(d["peak_mem_mb"] - m["peak_mem_mb"], 1)}
    emit("train_step", "step", f"{s['name']}|ratio", device, method="dycon / mean_teacher", **common,
         time_ratio=ratio(d, m, "s_per_it"), mem_ratio=ratio(d, m, mem_key), **extra)


def emit_variants(base: dict, dycon: dict, device: str) -> None:
    """fp32 vs bf16 (bf16 vs fp32 on the CPU), channels-last and cudnn.benchmark: DyCON, ratio to ``dycon``."""
    on_gpu = device.startswith("cuda")
    mem_key = "peak_mem_mb" if on_gpu else "peak_rss_mb"
    variants = [
        ("amp off (fp32) vs bf16 baseline" if on_gpu else "amp bf16 (config amp=bf16)",
         {"amp": "off" if on_gpu else "bf16"},
         "ratio > 1: fp32 is slower than the bf16 autocast baseline (losses are fp32 in both)" if on_gpu
         else "CPU bf16 autocast; baseline is fp32 (amp auto = off on CPU)", False),
        ("channels_last_3d (config channels_last)", {"channels_last": True}, "model and batch in channels_last_3d",
         False),
        ("cudnn.benchmark on (not an engine setting)", {}, "torch.backends.cudnn.benchmark = True for this "
         "setting only: cuDNN times its algorithms for the fixed patch size", True),
    ]
    for name, change, note, cudnn_benchmark in variants:
        result = guarded(lambda: with_cudnn_benchmark(cudnn_benchmark, lambda: timed_steps(
            {**base, "method": "dycon", **change})))
        fig = step_figures(result)
        emit("train_step", "optimisations", f"{base['name']}|{name}", device, optimisation=name, setting=base["name"],
             time_vs_baseline=ratio(result, dycon, "s_per_it"), mem_vs_baseline=ratio(result, dycon, mem_key),
             s_per_it=fig.get("s_per_it"), it_per_s=fig.get("it_per_s"), peak_mem_mb=fig.get("peak_mem_mb"),
             status=fig.get("status", "measured"), note=note)


def with_cudnn_benchmark(enabled: bool, fn: Callable[[], dict]) -> dict:
    import torch

    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled) or previous
    try:
        return fn()
    finally:
        torch.backends.cudnn.benchmark = previous


def profile_step(spec: dict) -> dict:
    """torch.profiler over one step after warm-up: the kernels (GPU) or operators (CPU) with the most
    self time, as train_step_worker.profile_step reports them."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    on_gpu = spec["device"].startswith("cuda")
    torch.manual_seed(0)
    trainer = make_trainer(spec)
    for _ in range(spec["warmup"]):
        trainer.step()
    sync(spec["device"])
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as prof:
        trainer.step()
        sync(spec["device"])
    attr = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    events = sorted((e for e in prof.key_averages() if getattr(e, attr, 0) > 0), key=lambda e: getattr(e, attr),
                    reverse=True)
    total = sum(getattr(e, attr) for e in events) or 1.0
    return {"clock": "GPU kernel time" if on_gpu else "CPU self time", "total_ms": total / 1000.0,
            "ops": [{"op": e.key, "ms": getattr(e, attr) / 1000.0, "share": getattr(e, attr) / total, "calls": e.count}
                    for e in events[:8]]}


def emit_profile(base: dict, device: str) -> None:
    """The profile of one DyCON step as rows of the train_step profile table."""
    release(device)
    prof = guarded(lambda: profile_step({**base, "method": "dycon"}))
    if "error" in prof:
        emit("train_step", "profile", f"{base['name']}|error", device, setting=base["name"], status=prof["error"])
        return
    for rank, op in enumerate(prof.get("ops", []), start=1):
        emit("train_step", "profile", f"{base['name']}|{rank}", device, setting=base["name"], rank=rank, op=op["op"],
             ms=round(op["ms"], 2), share=round(op["share"], 3), calls=op["calls"], clock=prof["clock"],
             step_total_ms=round(prof["total_ms"], 1))


def wait_until(condition: Callable[[], bool], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    bc.log(f"gave up waiting after {limit_s:.0f} s")
    return False


def part_compile(spec: dict) -> None:
    """DyCON's step with the engine's compile switch off, then on, in this one process.

    The compile happens in the warm-up steps (reported as ``warmup_s``); the ratio compares the
    steady-state steps. A dry run compiles with the ``eager`` backend (the same torch.compile
    wrapping and Dynamo tracing, no Inductor code generation, which takes minutes on 2 CPU cores).
    """
    import functools

    import torch

    device, s, c = spec["device"], spec["sizes"]["step"], spec["sizes"]["compile"]
    workspace = wait_for_data("step", spec["limit_s"])["workspace"]
    if c["backend"] != "inductor":
        torch.compile = functools.partial(torch.compile, backend=c["backend"])
    base = {**s, "device": device, "method": "dycon", "method_options": {}, "workspace": workspace}
    off = guarded(lambda: timed_steps(base))
    on = guarded(lambda: timed_steps({**base, "compile": True, "warmup": s["warmup"] + c["extra_warmup"]}))
    mem_key = "peak_mem_mb" if device.startswith("cuda") else "peak_rss_mb"
    fig = step_figures(on)
    emit("train_step", "optimisations", f"{s['name']}|torch.compile (config compile)", device,
         optimisation="torch.compile (config compile)", setting=s["name"], time_vs_baseline=ratio(on, off, "s_per_it"),
         mem_vs_baseline=ratio(on, off, mem_key), s_per_it=fig.get("s_per_it"), it_per_s=fig.get("it_per_s"),
         baseline_s_per_it=step_figures(off).get("s_per_it"), compile_warmup_s=fig.get("warmup_s"),
         backend=c["backend"], status=fig.get("status", "measured"),
         note="student and teacher, __call__ and forward_features; compile time is in the warm-up, excluded")


def part_inference(spec: dict) -> None:
    """predict_probabilities + normalised_entropy + arg-max, as predict_cases does per case.

    MC dropout on a volume is left out (with a record saying so) when K times its plain time
    would overrun the part's limit: the rows already measured are worth more than a timeout.
    """
    started = time.monotonic()
    import torch
    from semisupseg.networks import build_network
    from semisupseg.inference.sliding_window import predict_probabilities

    import bench_inference as bi

    device, s = spec["device"], spec["sizes"]["inference"]
    torch.manual_seed(0)
    net = build_network("unet3d", 1, 2, widths=s["widths"]).to(device).eval()
    autocast = torch.bfloat16 if device.startswith("cuda") else None
    predict_probabilities([net], torch.randn(s["window"]), s["window"], 2, overlap=s["overlap"], device=device,
                          sw_batch_size=2, autocast_dtype=autocast)  # warm-up: cuDNN set-up, allocator
    for name, size in s["volumes"].items():
        plain_s = None
        for mc in (0, s["mc"]):
            row = f"{name}, MC K={mc}" if mc else name
            left = spec["limit_s"] - (time.monotonic() - started) - 10.0
            if mc and plain_s is not None and mc * plain_s > left:
                result = {"error": f"not run: about {mc} x {plain_s:.1f} s, more than the {max(left, 0):.0f} s "
                                   "left of the part's limit"}
            else:
                result = guarded(lambda: time_inference(net, size, s, mc, device, autocast))
            plain_s = result.get("total_s", plain_s) if not mc else plain_s
            target = s["targets_s"][name] if not mc else None
            figures = {"status": result["error"]} if "error" in result else {
                **{k: round(v, 3) for k, v in result.items()},
                **({"target_s": target, "met": result["total_s"] < target} if target else {})}
            emit("inference", "per_volume", f"{row}|{'x'.join(map(str, size))}", device, setting=row,
                 volume="x".join(map(str, size)), widths="-".join(map(str, s["widths"])),
                 window="x".join(map(str, s["window"])), overlap=s["overlap"], mc_samples=mc,
                 windows=bi.windows(size, s["window"], s["overlap"]), warm=True, **figures)


def time_inference(net, size, s: dict, mc: int, device: str, autocast) -> dict:
    import torch
    from semisupseg.inference.sliding_window import predict_probabilities
    from semisupseg.inference.label_maps import labels_and_confidence
    from semisupseg.inference.uncertainty import normalised_entropy

    image = torch.randn(size)
    release(device)
    sync(device)
    t0 = time.perf_counter()
    probs, _ = predict_probabilities([net], image, s["window"], 2, overlap=s["overlap"], device=device,
                                     sw_batch_size=2, mc_samples=mc, autocast_dtype=autocast)
    t1 = time.perf_counter()
    entropy = normalised_entropy(probs)
    labels, _ = labels_and_confidence(probs)
    t2 = time.perf_counter()
    out = {"total_s": t2 - t0, "probabilities_s": t1 - t0, "entropy_s": t2 - t1}
    if device.startswith("cuda"):
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    del probs, entropy, labels
    return out


def part_first_overlay(spec: dict) -> None:
    """bench_first_overlay.py as it is, on the workspace the data process made."""
    import bench_first_overlay as fo

    s = spec["sizes"]["first_overlay"]
    prepared = wait_for_data("first_overlay", spec["limit_s"])

    def made_workspace(size, n_cases):
        if [int(v) for v in size] != list(s["size"]) or n_cases != s["cases"]:
            raise RuntimeError(f"first_overlay asked for {n_cases} x {size}, the kit made {s['cases']} x {s['size']}")
        return Path(prepared["workspace"])

    fo.workspace = made_workspace
    if s.get("config"):  # the dry run's tiny network (bench_first_overlay's CPU one takes minutes here)
        plain_config = fo.config_for
        fo.config_for = lambda *args: {**plain_config(*args), **s["config"]}
    fo.main(list(s["args"]))


def part_train_budget(spec: dict) -> None:
    """DyCON with the GPU defaults for a fixed wall budget, then the held-out Dice."""
    device, s = spec["device"], spec["sizes"]["budget"]
    workspace = Path(wait_for_data("budget", spec["limit_s"])["workspace"])
    description = json.loads((workspace / "dataset.json").read_text())
    budget_s = float(spec.get("budget_s") or s["budget_s"])
    run_dir = workspace / "runs" / "gpu-budget-dycon"
    figures = train_for(workspace, run_dir, budget_s, {"method": "dycon", "device": device, **s["config"]})
    figures["volumes"] = f"{len(description['held_out'])} held out of {len(description['cases'])} x " + \
        "x".join(map(str, s["size"]))
    figures.update(held_out_dice(workspace, run_dir, description["held_out"], device))
    emit("gpu_kit", "train_budget", f"dycon|{'x'.join(map(str, s['size']))}|{budget_s:g}s", device,
         method="dycon", **figures)


def train_for(workspace: Path, run_dir: Path, budget_s: float, config: dict) -> dict:
    """``semisupseg train`` stopped (SIGTERM: checkpoint, exit 0) ``budget_s`` after its ``started``
    event; the iterations it reached. No prediction rounds or periodic checkpoints on the way."""
    shutil.rmtree(run_dir, ignore_errors=True)
    config = {"log_every": 10, "checkpoint_every": 0, "reload_every": 0, "first_prediction_at": 0,
              "predict_every": 0, "predict_cases": "held_out", **config}
    marks: Dict[str, object] = {}

    def watch(event: dict, seconds: float) -> bool:
        kind = event.get("event")
        if kind == "started":
            marks["started_s"] = seconds
            marks["patch"] = "x".join(map(str, event.get("patch_size", [])))
        elif kind == "progress":
            marks["iteration"], marks["it_per_s"] = event.get("iteration", 0), event.get("it_per_s")
        return "started_s" in marks and seconds - marks["started_s"] >= budget_s

    code, events, _ = bc.train_subprocess(workspace, config, run_dir.name, on_event=watch)
    stopped = [e for e in events if e.get("event") in ("cancelled", "finished")]
    iterations = (stopped[-1].get("iteration") or stopped[-1].get("iterations")) if stopped else marks.get("iteration")
    return {"budget_s": budget_s, "train_exit_code": code, "started_s": round(float(marks.get("started_s", math.nan)), 1),
            "iterations": iterations, "it_per_s_last": marks.get("it_per_s"), "patch": marks.get("patch")}


def held_out_dice(workspace: Path, run_dir: Path, held_out: List[str], device: str) -> dict:
    """``semisupseg predict`` on the held-out cases, then Dice against truth/ (evaluate_folders).

    The CLI runs in this process (its events go to the kit's log): one interpreter start less.
    """
    from semisupseg.cli import main as semisupseg_main
    from semisupseg.evaluation.metrics import evaluate_folders

    if not (run_dir / "checkpoints" / "last.pt").exists():
        return {"status": "no checkpoint: training did not reach its first iteration"}
    t0 = time.perf_counter()
    code = semisupseg_main(["predict", "--run", str(run_dir), "--cases", *held_out, "--device", device])
    predict_s = time.perf_counter() - t0
    if code != 0:
        return {"status": f"semisupseg predict exited with {code}", "predict_s": round(predict_s, 1)}
    report = evaluate_folders(run_dir / "predictions", workspace / "truth", classes=[1])
    dice = [report["cases"][case]["1"]["dice"] for case in held_out if case in report["cases"]]
    return {"predict_s": round(predict_s, 1), "held_out_cases": len(dice),
            "held_out_dice": round(sum(dice) / len(dice), 4) if dice else None,
            "held_out_dice_min": round(min(dice), 4) if dice else None}


PARTS = {
    "step": part_step,
    "inference": part_inference,
    "first_overlay": part_first_overlay,
    "train_budget": part_train_budget,
    "compile": part_compile,
}


def run_part(name: str, spec: dict) -> int:
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    PARTS[name](spec)
    return 0


def main_worker(name: str, spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        return run_part(name, spec)
    except Exception:  # noqa: BLE001 - the parent records the exit code and the log's last line
        import traceback

        traceback.print_exc(file=sys.stderr)
        return 1
