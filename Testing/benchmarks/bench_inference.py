"""Inference: seconds per volume for probabilities + entropy map (+ MC dropout, K = 8).

Times ``inference.sliding_window.predict_probabilities`` (MONAI sliding window, Gaussian
blending, 2 windows per batch; overlap 0.5 unless a row names another: the engine's default
is 0.5 on a GPU and 0.25 on the CPU, which the 'overlap 0.25' rows measure) followed by
``normalised_entropy`` and the arg-max label map: what ``predict_cases`` computes per case before
writing files. Volumes are synthetic random tensors of a fixed size (the time does not depend on
the content): an LA-sized 192x144x88 volume and a large 512x512x300 one. Networks have random
weights (same cost as trained ones).

Networks and windows:
  CPU: the CPU-scale U-Net the CPU configuration trains (widths 8-128), window 64x64x48
       (default_patch_size on a CPU for LA); one row with the full-width U-Net for comparison.
  GPU: the full-width U-Net (16-256), window 112x112x80 (the LA GPU training patch), bf16 autocast
       as predict_cases uses on CUDA.
Each setting runs in a fresh subprocess, so peak memory (RSS or CUDA max allocated) is its own.
On CPU, MC dropout is measured on the LA-sized volume only (on the large one it would take K
times the plain time); on a GPU on both.

Uncertainty sources (issue 17, rows "LA size, source ..."): the whole of
``inference.uncertainty_sources.source_map`` per source, as bench_uncertainty_errors.py calls it
for a DyCON run (one inference network, the teacher; ``disagreement`` also runs the student and the
teacher once each; ``mutual_information`` with K = 4 MC-dropout passes; ``flip_tta`` one pass per
trained flip), on the LA-sized volume with the engine's CPU overlap 0.25 (0.5 on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

BENCHMARK = "inference"
LA_SIZE = [192, 144, 88]
LARGE_SIZE = [512, 512, 300]
HALF_LARGE_SIZE = [256, 256, 150]  # the large volume on a grid 2x coarser per axis (target_spacing)
CPU_WIDTHS = [8, 16, 32, 64, 128]
FULL_WIDTHS = [16, 32, 64, 128, 256]


def windows(size, patch, overlap) -> int:
    """Number of sliding windows MONAI runs (its scan interval is patch * (1 - overlap))."""
    total = 1
    for s, p in zip(size, patch):
        step = max(int(p * (1 - overlap)), 1)
        total *= 1 if s <= p else math.ceil((s - p) / step) + 1
    return total


def worker(spec: dict) -> dict:
    """Time one setting in this (fresh) process: the plain prediction, or one uncertainty source's map."""
    import torch
    from semisupseg.networks import build_network

    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    net = build_network("unet3d", 1, 2, widths=spec["widths"]).to(device).eval()
    image = torch.randn(spec["size"])
    autocast = torch.bfloat16 if device.type == "cuda" else None
    timed = time_source if spec.get("source") else time_plain
    rss_before = bc.current_rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    load = bc.load_average()
    t0, c0 = time.perf_counter(), time.process_time()
    out = timed(spec, net, image, device, autocast)
    out.update(total_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, threads=torch.get_num_threads(),
               load_avg=[load, bc.load_average()])
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_rss_mb"] = bc.peak_rss_mb()
        out["rss_delta_mb"] = bc.peak_rss_mb() - rss_before
    return out


def time_plain(spec: dict, net, image, device, autocast) -> dict:
    """What predict_cases computes per case: probabilities, then the entropy map and the label map."""
    from semisupseg.inference.label_maps import labels_and_confidence
    from semisupseg.inference.sliding_window import predict_probabilities
    from semisupseg.inference.uncertainty import normalised_entropy

    t0 = time.perf_counter()
    probs, mi = predict_probabilities([net], image, spec["patch"], 2, overlap=spec["overlap"], device=device,
                                      sw_batch_size=spec["sw_batch"], mc_samples=spec["mc"], autocast_dtype=autocast)
    t1 = time.perf_counter()
    entropy = normalised_entropy(probs)
    labels, _ = labels_and_confidence(probs)
    return {"probabilities_s": t1 - t0, "entropy_s": time.perf_counter() - t1,
            "entropy_mean": float(entropy.mean()), "labels": int(labels.size), "mi": mi is not None}


def time_source(spec: dict, teacher, image, device, autocast) -> dict:
    """One uncertainty source's map and probabilities (source_map) for a DyCON-like method: the teacher
    predicts, a student of the same shape sits beside it (for ``disagreement``)."""
    from semisupseg.inference.sliding_window import predict_probabilities
    from semisupseg.inference.uncertainty_sources import source_map
    from semisupseg.networks import build_network

    student = build_network("unet3d", 1, 2, widths=spec["widths"]).to(device).eval()
    method = types.SimpleNamespace(name="dycon", student=student, teacher=teacher, inference_networks=lambda: [teacher])

    def predict(networks, volume, mc_samples):
        return predict_probabilities(networks, volume, spec["patch"], 2, overlap=spec["overlap"], device=device,
                                     sw_batch_size=spec["sw_batch"], mc_samples=mc_samples, autocast_dtype=autocast)

    value, probs = source_map(spec["source"], method, image, predict, mc_samples=spec["mc"])
    return {"map_mean": float(value.mean()), "classes": int(probs.shape[0])}


def source_rows(widths, patch, overlap) -> list:
    """One row per uncertainty source on the LA-sized volume (MC dropout with K = 4, as bench_uncertainty_errors)."""
    from_mc = {"mutual_information": 4}
    return [dict(name=f"LA size, source {source}", size=LA_SIZE, widths=widths, patch=patch, overlap=overlap,
                 mc=from_mc.get(source, 0), source=source)
            for source in ("entropy", "mutual_information", "disagreement", "flip_tta")]


def run_worker(spec: dict) -> dict:
    bc.log(f"inference {spec['label']}")
    process = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE, text=True)
    for line in process.stdout.splitlines():
        if line.startswith("WORKER "):
            return json.loads(line[len("WORKER "):])
    return {"error": f"worker exited with {process.returncode}"}


def settings(device: str, quick: bool, skip_large: bool) -> list:
    on_gpu = device.startswith("cuda")
    if quick:
        return [dict(name="quick", size=[64, 64, 48], widths=[4, 8, 16, 32, 64], patch=[32, 32, 32], overlap=0.5, mc=0),
                dict(name="quick MC K=2", size=[64, 64, 48], widths=[4, 8, 16, 32, 64], patch=[32, 32, 32], overlap=0.5, mc=2),
                dict(name="quick, source disagreement", size=[64, 64, 48], widths=[4, 8, 16, 32, 64], patch=[32, 32, 32],
                     overlap=0.5, mc=0, source="disagreement")]
    if on_gpu:
        patch = [112, 112, 80]
        rows = [dict(name="LA size", size=LA_SIZE, widths=FULL_WIDTHS, patch=patch, overlap=0.5, mc=0),
                dict(name="LA size, MC K=8", size=LA_SIZE, widths=FULL_WIDTHS, patch=patch, overlap=0.5, mc=8),
                dict(name="large", size=LARGE_SIZE, widths=FULL_WIDTHS, patch=patch, overlap=0.5, mc=0),
                dict(name="large, MC K=8", size=LARGE_SIZE, widths=FULL_WIDTHS, patch=patch, overlap=0.5, mc=8),
                *source_rows(FULL_WIDTHS, patch, 0.5)]
    else:
        patch = [64, 64, 48]
        rows = [dict(name="LA size", size=LA_SIZE, widths=CPU_WIDTHS, patch=patch, overlap=0.5, mc=0),
                dict(name="LA size, overlap 0.25", size=LA_SIZE, widths=CPU_WIDTHS, patch=patch, overlap=0.25, mc=0),
                dict(name="LA size, window 128x128x96", size=LA_SIZE, widths=CPU_WIDTHS, patch=[128, 128, 96],
                     overlap=0.5, mc=0),
                dict(name="LA size, MC K=8", size=LA_SIZE, widths=CPU_WIDTHS, patch=patch, overlap=0.5, mc=8),
                dict(name="LA size, full-width U-Net", size=LA_SIZE, widths=FULL_WIDTHS, patch=patch, overlap=0.5, mc=0),
                dict(name="large at half resolution (as trained on a 2x coarser grid)", size=HALF_LARGE_SIZE,
                     widths=CPU_WIDTHS, patch=patch, overlap=0.5, mc=0),
                dict(name="large at half resolution, overlap 0.25", size=HALF_LARGE_SIZE,
                     widths=CPU_WIDTHS, patch=patch, overlap=0.25, mc=0),
                dict(name="large", size=LARGE_SIZE, widths=CPU_WIDTHS, patch=patch, overlap=0.5, mc=0),
                *source_rows(CPU_WIDTHS, patch, 0.25)]
    if skip_large:
        rows = [r for r in rows if r["size"] != LARGE_SIZE]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip-large", action="store_true", help="only the LA-sized volume")
    p.add_argument("--only-large", action="store_true", help="only the 512x512x300 volume")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    p.add_argument("--rows", help="only the settings whose name contains this text (e.g. 'half resolution')")
    args = p.parse_args(argv)
    if args.worker:
        print("WORKER " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    device = bc.resolve_device(args.device)
    rows = settings(device, args.quick, args.skip_large)
    if args.only_large:
        rows = [r for r in rows if r["size"] == LARGE_SIZE]
    if args.rows:
        rows = [r for r in rows if args.rows in r["name"]]
    for row in rows:
        spec = {**row, "device": device, "sw_batch": 2, "label": row["name"], "threads": args.threads}
        result = run_worker(spec)
        figures = {"status": result["error"]} if "error" in result else {
            "total_s": round(result["total_s"], 2),
            "cpu_s": round(result["cpu_s"], 2) if "cpu_s" in result else None,
            **({"probabilities_s": round(result["probabilities_s"], 2), "entropy_s": round(result["entropy_s"], 2)}
               if "probabilities_s" in result else {}),
            **({"peak_mem_mb": round(result["peak_mem_mb"])} if "peak_mem_mb" in result else
               {"peak_rss_mb": round(result["peak_rss_mb"]), "rss_delta_mb": round(result["rss_delta_mb"])}),
            "threads": result["threads"],
            "load_avg": result["load_avg"],
        }
        bc.emit(bc.record(
            BENCHMARK, "per_volume", f"{row['name']}|{'x'.join(map(str, row['size']))}", device,
            setting=row["name"], volume="x".join(map(str, row["size"])), widths="-".join(map(str, row["widths"])),
            window="x".join(map(str, row["patch"])), overlap=row["overlap"], mc_samples=row["mc"],
            **({"source": row["source"]} if row.get("source") else {}),
            windows=windows(row["size"], row["patch"], row["overlap"]), **figures))
    if not device.startswith("cuda") and not args.quick and not args.rows:
        bc.emit(bc.record(BENCHMARK, "per_volume", "large, MC K=8|cpu-skip", device, setting="large, MC K=8",
                          volume="x".join(map(str, LARGE_SIZE)), status="not run on CPU: about K x the plain "
                          "large-volume time; measured on the LA size instead"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
