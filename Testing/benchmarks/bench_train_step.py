"""One training step: iterations/s and peak memory, DyCON vs mean teacher, and optimisation ratios.

What is timed is the engine's own step, ``Trainer.step`` (patch sampling and augmentation from
device-resident volumes, autocast, ``method.training_step``, backward, gradient clipping, SGD,
the EMA teacher update), on a Trainer whose data are synthetic volumes (no files); the measuring
code is train_step_worker.py.
Warm-up iterations are excluded. Every setting runs in a fresh subprocess, so the CPU peak
memory (``ru_maxrss``) belongs to that setting alone; on a GPU the peak is
``torch.cuda.max_memory_allocated``.

Settings:
  (a) LA: unet3d full width (16-256), 4+4 patches of 112x112x80, amp auto (bf16) - GPU only.
  (b) CPU: unet3d full width, 1+1 patches of 96x96x64, fp32.
DyCON and mean teacher run with the same settings in the same invocation; the ratio is reported.

--methods: every method of the engine (or a comma-separated list) timed in one invocation at the
setting the LA comparison trains with (bench_la.py: CPU U-Net widths 8-128, 2+2 patches of
64x64x48; on a GPU the (a) setting), as ratios to DyCON's step: the "wall time per iteration"
column of the method comparison, measured without the other jobs a long benchmark shares the
machine with. With every method, it is followed by the ``channels_last`` table: DyCON's step
at that setting with channels_last_3d off and on, in alternating pairs (``--ab-rounds``).

--thin-slab: the ACDC CPU setting (bench_acdc.py: widths 8-128, 144x144x8 patches, 4 classes),
supervised (2+0) and DyCON (2+2), each with the 3D U-Net planned for 1.5 x 1.5 x 5 mm and with the
slice-wise 2D U-Net (``unet2d``), in alternating rounds (``--ab-rounds``); ratios to the supervised
3D step. It is what says how many iterations of each a fixed CPU budget buys.

Optimisations (ratios against the DyCON baseline of the same invocation):
  amp bf16 autocast (losses stay fp32)  - config ``amp``
  channels_last_3d                       - config ``channels_last``
  torch.compile                          - config ``compile`` (both network entry points, student and
                                           teacher; GPU only: on 2 CPU cores the compile outlasts the run)
  fused EMA (torch._foreach_lerp_, the engine's ``ema_update``) vs a per-parameter loop written here
  FeCL anchor cap (max_anchors 2048 vs an unbounded cap, and 512)
  volumes kept on the device vs kept on the CPU and copied each step (GPU only)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

BENCHMARK = "train_step"
FULL_WIDTHS = [16, 32, 64, 128, 256]
VOLUME_SIZE = (176, 144, 96)  # LA-like (x, y, z), larger than either patch
UNBOUNDED = 10**9
WORKER_SCRIPT = Path(__file__).resolve().parent / "train_step_worker.py"  # one setting per process


# =========================================================================== orchestration
def run_worker(spec: dict) -> dict:
    bc.log(f"setting {spec['label']}")
    env = dict(os.environ, **spec.get("env", {}))
    limit = spec.get("timeout_s")
    try:
        process = subprocess.run([sys.executable, str(WORKER_SCRIPT), json.dumps(spec)],
                                 stdout=subprocess.PIPE, text=True, env=env, timeout=limit)
    except subprocess.TimeoutExpired:
        steps = spec.get("warmup", 0) + spec.get("iterations", 0)
        return {"error": f"stopped after {limit} s without finishing {steps} steps (> {limit / max(steps, 1):.0f} s per step)"}
    for line in process.stdout.splitlines():
        if line.startswith("WORKER "):
            return json.loads(line[len("WORKER "):])
    return {"error": f"worker exited with {process.returncode}"}


def base_settings(device: str, quick: bool) -> dict:
    on_gpu = device.startswith("cuda")
    if quick:
        return {"name": "quick", "device": device, "widths": [4, 8, 16, 32, 64], "patch": [32, 32, 32],
                "n_l": 1, "n_u": 1, "amp": "auto", "channels_last": False, "volume": [64, 64, 48],
                "warmup": 1, "iterations": 2}
    if on_gpu:
        return {"name": "(a) LA 4+4 112x112x80", "device": device, "widths": FULL_WIDTHS, "patch": [112, 112, 80],
                "n_l": 4, "n_u": 4, "amp": "auto", "channels_last": False, "volume": list(VOLUME_SIZE),
                "warmup": 5, "iterations": 20}
    return {"name": "(b) CPU 1+1 96x96x64", "device": device, "widths": FULL_WIDTHS, "patch": [96, 96, 64],
            "n_l": 1, "n_u": 1, "amp": "auto", "channels_last": False, "volume": list(VOLUME_SIZE),
            "warmup": 2, "iterations": 3}


def la_comparison_settings(device: str) -> dict:
    """The step bench_la.py trains with (CPU scale), or the (a) setting on a GPU."""
    if device.startswith("cuda"):
        return {**base_settings(device, False), "name": "LA comparison, GPU (a) setting"}
    return {"name": "LA comparison, CPU scale 2+2 64x64x48", "device": device, "widths": [8, 16, 32, 64, 128],
            "patch": [64, 64, 48], "n_l": 2, "n_u": 2, "amp": "auto", "channels_last": "auto",
            "volume": list(VOLUME_SIZE), "warmup": 2, "iterations": 5}


# Options bench_la.py gives a method at CPU scale (kept equal so the two benchmarks time the same step).
CPU_METHOD_OPTIONS = {"dual_uncertainty": {"resnet_base_width": 8}}


def emit_method_steps(base: dict, methods: list, device: str) -> None:
    """One fresh subprocess per method at ``base``; s/it, peak memory and the ratio to DyCON."""
    on_gpu = device.startswith("cuda")
    mem_key = "peak_mem_mb" if on_gpu else "step_rss_delta_mb"
    results = {}
    for method in methods:
        options = {} if on_gpu else CPU_METHOD_OPTIONS.get(method, {})
        spec = {**base, "method": method, "method_options": options, "label": f"{base['name']} {method}"}
        if method == "supervised":
            spec["n_u"] = 0
        results[method] = run_worker(spec)
    reference = results.get("dycon", {})
    for method, result in results.items():
        bc.emit(bc.record(BENCHMARK, "methods", f"{base['name']}|{method}", device, setting=base["name"],
                          method=method, batch=f"{base['n_l']}+{0 if method == 'supervised' else base['n_u']}",
                          patch="x".join(map(str, base["patch"])), widths="-".join(map(str, base["widths"])),
                          **figures(result), time_vs_dycon=ratio(result, reference, "s_per_it"),
                          cpu_time_vs_dycon=ratio(result, reference, "cpu_s_per_it"),
                          mem_vs_dycon=ratio(result, reference, mem_key)))


def figures(result: dict) -> dict:
    if "error" in result:
        return {"status": result["error"]}
    out = {"it_per_s": round(1.0 / result["s_per_it"], 4), "s_per_it": round(result["s_per_it"], 3),
           "cpu_s_per_it": round(result["cpu_s_per_it"], 3)}
    for key in ("peak_mem_mb", "peak_rss_mb", "step_rss_delta_mb"):
        if key in result:
            out[key] = round(result[key], 1)
    out["threads"] = result.get("threads")
    out["load_avg"] = result.get("load_avg")
    return out


def ratio(a, b, key):
    try:
        return round(a[key] / b[key], 3)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="tiny network and patch (smoke test)")
    p.add_argument("--skip-optimisations", action="store_true")
    p.add_argument("--only-profile", action="store_true", help="only the torch.profiler table of one DyCON step")
    p.add_argument("--threads", type=int, help="torch intra-op threads for every setting (default: torch's)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one setting may take (default 1800)")
    p.add_argument("--skip-methods", action="store_true", help="leave out the per-method step table")
    p.add_argument("--ab-rounds", type=int, default=2, help="off/on pairs of the channels-last comparison that "
                   "follows the per-method table (default 2)")
    p.add_argument("--methods", nargs="?", const="all", help="only the per-method step table at the LA comparison "
                   "setting: 'all' (the default) or a comma-separated list of method names")
    p.add_argument("--thin-slab", action="store_true", help="only the thin-slab table: supervised and DyCON steps "
                   "at the ACDC CPU setting, 3D U-Net (planned) against the slice-wise 2D U-Net")
    args = p.parse_args(argv)
    device = bc.resolve_device(args.device)
    if args.thin_slab:
        emit_thin_slab_steps(args, device)
        return 0
    if args.methods:
        run_method_table(args, device)
        return 0
    on_gpu = device.startswith("cuda")
    base = base_settings(device, args.quick)
    base["timeout_s"] = args.timeout
    if args.threads:
        base["threads"] = args.threads
        base["name"] += f", {args.threads} thread(s)"
    setting = base["name"]
    common = {"setting": setting, "patch": "x".join(map(str, base["patch"])), "batch": f"{base['n_l']}+{base['n_u']}",
              "widths": "-".join(map(str, base["widths"])), "warmup": base["warmup"], "measured": base["iterations"]}
    if args.only_profile:
        emit_profile(base, setting, device)
        return 0
    if not on_gpu and not args.quick:
        bc.emit(bc.record(BENCHMARK, "step", "(a) LA 4+4 112x112x80", device, setting="(a) LA 4+4 112x112x80",
                          status="GPU only: not run on this CPU-only machine (figures owed)"))

    # ---- DyCON vs mean teacher, same settings ------------------------------------------------
    results = {}
    for method in ("dycon", "mean_teacher"):
        results[method] = run_worker({**base, "method": method, "label": f"{setting} {method}"})
        bc.emit(bc.record(BENCHMARK, "step", f"{setting}|{method}", device, method=method, amp=base["amp"],
                          **common, **figures(results[method])))
    d, m = results["dycon"], results["mean_teacher"]
    mem_key = "peak_mem_mb" if on_gpu else "step_rss_delta_mb"
    bc.emit(bc.record(BENCHMARK, "step", f"{setting}|ratio", device, method="dycon / mean_teacher",
                      **common, time_ratio=ratio(d, m, "s_per_it"), cpu_time_ratio=ratio(d, m, "cpu_s_per_it"),
                      mem_ratio=ratio(d, m, mem_key)))
    if args.skip_optimisations:
        return 0

    # ---- optimisations, each against the DyCON baseline above ------------------------------
    def optimisation(name, variant_spec, note, baseline=d, applies=True):
        key = f"{setting}|{name}"
        if not applies:
            bc.emit(bc.record(BENCHMARK, "optimisations", key, device, optimisation=name, setting=setting, status=note))
            return
        result = run_worker({**base, "method": "dycon", "label": f"{setting} {name}", **variant_spec})
        fig = figures(result)
        bc.emit(bc.record(BENCHMARK, "optimisations", key, device, optimisation=name, setting=setting,
                          time_vs_baseline=ratio(result, baseline, "s_per_it"),
                          cpu_time_vs_baseline=ratio(result, baseline, "cpu_s_per_it"),
                          mem_vs_baseline=ratio(result, baseline, mem_key),
                          s_per_it=fig.get("s_per_it"), status=fig.get("status", "measured"), note=note))

    if on_gpu:
        optimisation("amp off (fp32) vs bf16 baseline", {"amp": "off"},
                     "ratio > 1: fp32 is slower than the bf16 autocast baseline (losses are fp32 in both)")
    else:
        optimisation("amp bf16 (config amp=bf16)", {"amp": "bf16"},
                     "CPU bf16 autocast; baseline is fp32 (amp auto = off on CPU)")
    optimisation("channels_last_3d (config channels_last)", {"channels_last": True}, "model and batch in channels_last_3d")
    if on_gpu and not args.quick:
        # The engine's switch: compile_network wraps __call__ and forward_features of student and teacher.
        optimisation("torch.compile (config compile)", {"compile": True, "warmup": base["warmup"] + 3},
                     "compile time excluded (warm-up)")
    else:
        optimisation("torch.compile (config compile)", {}, applies=False,
                     note="GPU only (an inductor compile of the 3D U-Net on 2 CPU cores outlasts the run)")
    ema = run_worker({**base, "kind": "ema", "repeats": 50 if on_gpu else 10, "label": "EMA fused vs loop"})
    if "error" not in ema:
        step_ms = d.get("s_per_it", float("nan")) * 1000.0
        bc.emit(bc.record(BENCHMARK, "optimisations", f"{setting}|ema", device,
                          optimisation="fused EMA (_foreach_lerp_) vs per-parameter loop", setting=setting,
                          fused_ms=round(ema["fused_ms"], 3), loop_ms=round(ema["loop_ms"], 3),
                          time_vs_baseline=round(ema["fused_ms"] / ema["loop_ms"], 3),
                          note=f"{ema['parameters']} parameter tensors; fused EMA is "
                               f"{100 * ema['fused_ms'] / step_ms:.2f}% of a DyCON step", status="measured"))
    optimisation("FeCL max_anchors unbounded vs 2048", {"method_options": {"max_anchors": UNBOUNDED}},
                 _anchor_note(base, 2048))
    optimisation("FeCL max_anchors 512 vs 2048", {"method_options": {"max_anchors": 512}}, _anchor_note(base, 512))
    emit_profile(base, setting, device)
    if not on_gpu and args.threads:
        optimisation(f"default intra-op threads ({os.cpu_count()}) vs {args.threads}", {"threads": None},
                     f"torch's default thread count instead of --threads {args.threads} (the baseline)")
    elif not on_gpu:
        optimisation("1 intra-op thread vs default", {"threads": 1},
                     f"torch.set_num_threads(1) instead of {os.cpu_count()}: matters when other jobs share the cores")
    if not on_gpu:
        optimisation(f"default threads ({os.cpu_count()}) + OMP_WAIT_POLICY=PASSIVE", {"threads": None,
                     "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
                     "OpenMP threads sleep instead of spinning at barriers (set before torch is imported)")
    optimisation("volumes on CPU, copied each step vs on device", {"storage": "cpu"},
                 "the sampler's fallback when volumes exceed half the free GPU memory" if on_gpu
                 else "n/a on CPU (the device is the host)", applies=on_gpu)
    if not args.skip_methods:
        run_method_table(args, device)
    return 0


def run_method_table(args, device: str) -> None:
    from semisupseg.methods import METHODS

    chosen = args.methods or "all"
    names = list(METHODS) if chosen == "all" else [m.strip() for m in chosen.split(",") if m.strip()]
    base = base_settings(device, True) if args.quick else la_comparison_settings(device)
    base["timeout_s"] = args.timeout
    if args.threads:
        base["threads"] = args.threads
        base["name"] += f", {args.threads} thread(s)"
    emit_method_steps(base, names, device)
    if chosen == "all" and not args.quick:
        emit_channels_last_ab(base, device, rounds=args.ab_rounds)


def emit_channels_last_ab(base: dict, device: str, rounds: int) -> None:
    """DyCON's step with channels_last_3d on and off at ``base``, alternating off/on ``rounds`` times.

    Alternating pairs rather than one run each: single 3-6-step measurements here drift by about
    10 % over a benchmark session, which is as large as the effect being measured.
    """
    on_gpu = device.startswith("cuda")
    mem_key = "peak_mem_mb" if on_gpu else "step_rss_delta_mb"
    spec = {**base, "method": "dycon", "method_options": {}}
    runs = {False: [], True: []}
    for rnd in range(rounds):
        for layout in (False, True):
            result = run_worker({**spec, "channels_last": layout, "label": f"{base['name']} channels_last={layout} "
                                                                           f"({rnd + 1}/{rounds})"})
            if "error" in result:
                bc.emit(bc.record(BENCHMARK, "channels_last", f"{base['name']}|channels_last", device,
                                  setting=base["name"], status=result["error"]))
                return
            runs[layout].append(result)
    mean = lambda results, key: sum(r[key] for r in results) / len(results)  # noqa: E731
    off_s, on_s = mean(runs[False], "s_per_it"), mean(runs[True], "s_per_it")
    pair_ratios = [on["s_per_it"] / off["s_per_it"] for off, on in zip(runs[False], runs[True])]
    bc.emit(bc.record(BENCHMARK, "channels_last", f"{base['name']}|channels_last", device, setting=base["name"],
                      patch="x".join(map(str, base["patch"])), widths="-".join(map(str, base["widths"])),
                      rounds=rounds, s_per_it_off=round(off_s, 3), s_per_it_on=round(on_s, 3),
                      time_on_vs_off=round(on_s / off_s, 3),
                      pair_ratios=[round(r, 3) for r in pair_ratios],
                      mem_on_vs_off=round(mean(runs[True], mem_key) / mean(runs[False], mem_key), 3),
                      note="DyCON step, channels_last_3d on / off (< 1: on is faster); config channels_last "
                           "'auto' turns it on on the CPU only"))


def thin_slab_variants() -> dict:
    """(method, network) -> worker settings at the ACDC CPU setting."""
    from semisupseg.networks.anisotropy import spacing_plan

    planned = spacing_plan((1.5, 1.5, 5.0))  # what resolve_config writes for ACDC's grid
    networks = {"unet3d": ("unet3d", planned), "unet2d": ("unet2d", {})}
    return {(method, label): {"method": method, "network": net, "network_options": options,
                              "n_u": 0 if method == "supervised" else 2}
            for method in ("supervised", "dycon") for label, (net, options) in networks.items()}


def emit_thin_slab_steps(args, device: str) -> None:
    """Steps per second of supervised and DyCON with either network, alternating ``--ab-rounds``
    times through the four (so drift over the invocation hits all of them alike)."""
    base = {"name": "ACDC thin slab, CPU 144x144x8", "device": device, "widths": [8, 16, 32, 64, 128],
            "patch": [144, 144, 8], "n_l": 2, "amp": "auto", "channels_last": "auto", "num_classes": 4,
            "volume": list(VOLUME_SIZE), "warmup": 2, "iterations": 5, "timeout_s": args.timeout}
    if args.threads:
        base["threads"] = args.threads
    variants = thin_slab_variants()
    runs = {key: [] for key in variants}
    for rnd in range(max(args.ab_rounds, 1)):
        for key, variant in variants.items():
            result = run_worker({**base, **variant, "label": f"{base['name']} {key} ({rnd + 1}/{args.ab_rounds})"})
            if "error" in result:
                bc.emit(bc.record(BENCHMARK, "thin_slab", f"{base['name']}|{key[0]}|{key[1]}", device,
                                  setting=base["name"], method=key[0], network=key[1], status=result["error"]))
                return
            runs[key].append(result)
    mean = {key: sum(r["s_per_it"] for r in results) / len(results) for key, results in runs.items()}
    reference = mean[("supervised", "unet3d")]
    for (method, network), results in runs.items():
        bc.emit(bc.record(BENCHMARK, "thin_slab", f"{base['name']}|{method}|{network}", device, setting=base["name"],
                          method=method, network=network, batch=f"2+{variants[(method, network)]['n_u']}",
                          patch="144x144x8", widths="8-16-32-64-128", rounds=len(results),
                          s_per_it=round(mean[(method, network)], 3),
                          s_per_it_rounds=[round(r["s_per_it"], 3) for r in results],
                          time_vs_supervised_3d=round(mean[(method, network)] / reference, 3),
                          threads=results[-1].get("threads"), load_avg=results[-1].get("load_avg")))


def emit_profile(base: dict, setting: str, device: str) -> None:
    prof = run_worker({**base, "method": "dycon", "kind": "profile", "label": "profile one DyCON step"})
    for rank, op in enumerate(prof.get("ops", []), start=1):
        bc.emit(bc.record(BENCHMARK, "profile", f"{setting}|{rank}", device, setting=setting, rank=rank, op=op["op"],
                          ms=round(op["ms"], 1), share=round(op["share"], 3), calls=op["calls"], clock=prof["clock"],
                          step_total_ms=round(prof["total_ms"], 1)))


def _anchor_note(base: dict, cap: int) -> str:
    blocks = 1
    for p in base["patch"]:
        blocks *= p // 8
    binds = "binds" if blocks > cap else "does not bind"
    return f"{blocks} 8^3-blocks per sample: a cap of {cap} {binds} at this patch size"


if __name__ == "__main__":
    sys.exit(main())
