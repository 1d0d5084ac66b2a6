"""The worker of bench_train_step.py: one setting's measurement, in its own process.

    python Testing/benchmarks/train_step_worker.py '<setting as JSON>'

prints one line ``WORKER {...}`` with the result. A fresh process per setting keeps the CPU peak
memory (``ru_maxrss``) that setting's own. Kinds: the engine's step timed (default), a
torch.profiler table of one step ("profile"), the fused EMA against a per-parameter loop ("ema").
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

def synthetic_cases(n_labelled: int, n_unlabelled: int, size, seed: int = 0):
    """PreparedCase objects from the synthetic generator (z-scored), cached as .npz in .bench."""
    import numpy as np
    from semisupseg.data.preprocess import PreparedCase
    from semisupseg.data.synthetic import synthesize_case

    cache = bc.BENCH_DIR / "train_step"
    cache.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n_labelled + n_unlabelled):
        path = cache / f"case{i}_{'x'.join(map(str, size))}.npz"
        if path.exists():
            data = np.load(path)
            image, label = data["image"], data["label"]
        else:
            case = synthesize_case(i, seed, size=size, spacing=(0.625, 0.625, 0.625))
            image = case.image.astype(np.float32)
            image = (image - image.mean()) / (image.std() + 1e-6)
            label = case.label.astype(np.uint8)
            np.savez(path, image=image, label=label)
        cases.append(PreparedCase(id=f"case{i}", image=image, label=label if i < n_labelled else None,
                                  reference=None, spacing=(0.625, 0.625, 0.625)))
    return cases[:n_labelled], cases[n_labelled:]


def make_trainer(spec: dict):
    """A Trainer with the engine's step() but synthetic in-memory data instead of a workspace."""
    import torch
    from semisupseg.config import DEFAULT_LR, DEFAULTS
    from semisupseg.data.sampling import PatchSampler
    from semisupseg.events import EventWriter
    from semisupseg.training.distributed import Distributed
    from semisupseg.training.trainer import Trainer

    device = torch.device(spec["device"])
    trainer = Trainer.__new__(Trainer)  # skip __init__ (it reads a workspace); set what step() uses
    trainer.config = {
        **DEFAULTS,
        "method": spec["method"],
        "method_options": spec.get("method_options", {}),
        "network": spec.get("network", "unet3d"),
        "network_options": {"widths": spec["widths"], **spec.get("network_options", {})},
        "batch_labelled": spec["n_l"],
        "batch_unlabelled": spec["n_u"],
        "patch_size": spec["patch"],
        "amp": spec["amp"],
        "channels_last": spec["channels_last"],
        "compile": spec.get("compile", False),
        "device": str(device),
    }
    trainer.device = device
    trainer.dist = Distributed()  # one process: the step's DDP hooks are no-ops
    trainer.num_classes = spec.get("num_classes", 2)  # the synthetic labels hold classes 0 and 1 only
    trainer.events = EventWriter(stream=io.StringIO(), progress_bar=False)
    trainer.method = trainer._build_method()
    # resolve_config (skipped with __init__) turns lr None into the device's default; the step's time
    # does not depend on the value, but the step is the one a real run on this device takes
    opt = trainer.config["optimizer"] = dict(trainer.config["optimizer"])
    if opt["lr"] is None:
        opt["lr"] = DEFAULT_LR["gpu" if device.type == "cuda" else "cpu"]
    trainer.optimizer = torch.optim.SGD(trainer.method.trainable_parameters(), lr=opt["lr"],
                                        momentum=opt["momentum"], weight_decay=opt["weight_decay"])
    labelled, unlabelled = synthetic_cases(max(spec["n_l"], 1), max(spec["n_u"], 1), tuple(spec["volume"]))
    sampler_cls = PatchSampler
    if spec.get("storage") == "cpu":
        class HostSampler(PatchSampler):  # the engine's fallback when volumes do not fit the GPU
            def _choose_storage(self, cases):
                return torch.device("cpu")
        sampler_cls = HostSampler
    trainer.sampler = sampler_cls(labelled, unlabelled if spec["method"] != "supervised" else [],
                                  tuple(spec["patch"]), device, seed=0)
    trainer.iteration, trainer.total, trainer.skipped_steps = 0, spec["warmup"] + spec["iterations"], 0
    trainer.ema_offset = 0
    trainer.budget = None  # no time budget: the steps are timed here, not paced
    return trainer


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_step(spec: dict) -> dict:
    import torch

    torch.manual_seed(0)
    trainer = make_trainer(spec)
    device = spec["device"]
    load_before = bc.load_average()
    rss_before = bc.current_rss_mb()  # model, optimiser and volumes in place, no step yet
    for _ in range(spec["warmup"]):
        trainer.step()
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = [], []
    for _ in range(spec["iterations"]):
        t0, c0 = time.perf_counter(), time.process_time()
        parts = trainer.step()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if parts is None:
            raise RuntimeError("a measured step was skipped (non-finite loss)")
    wall.sort(), cpu.sort()
    out = {
        "s_per_it": wall[len(wall) // 2],
        "cpu_s_per_it": cpu[len(cpu) // 2],
        "s_per_it_min": wall[0],
        "load_avg": [load_before, bc.load_average()],
        "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_rss_mb"] = bc.peak_rss_mb()
        out["step_rss_delta_mb"] = max(bc.peak_rss_mb() - rss_before, 0.0)
    return out


def profile_step(spec: dict) -> dict:
    """torch.profiler over one step after warm-up: the operators with the most self time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    trainer = make_trainer(spec)
    for _ in range(spec["warmup"]):
        trainer.step()
    sync(spec["device"])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if spec["device"].startswith("cuda") else [])
    with profile(activities=activities) as prof:
        trainer.step()
        sync(spec["device"])
    on_gpu = spec["device"].startswith("cuda")
    attr = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return {"clock": "GPU kernel time" if on_gpu else "CPU self time", "total_ms": total / 1000.0,
            "ops": [{"op": e.key, "ms": getattr(e, attr) / 1000.0, "share": getattr(e, attr) / total, "calls": e.count}
                    for e in events[:8]]}


def measure_ema(spec: dict) -> dict:
    """Engine EMA (one fused _foreach_lerp_) vs a per-parameter Python loop, ms per update."""
    import torch
    from semisupseg.networks import build_network
    from semisupseg.training.ema import ema_update, make_teacher

    device = torch.device(spec["device"])
    student = build_network("unet3d", 1, 2, widths=spec["widths"]).to(device)
    teacher = make_teacher(student)

    @torch.no_grad()
    def loop_ema(t_net, s_net, alpha):
        for t, s in zip(t_net.parameters(), s_net.parameters()):
            t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
        for t_buf, s_buf in zip(t_net.buffers(), s_net.buffers()):
            t_buf.copy_(s_buf)

    timings = {}
    for name, fn in (("fused", ema_update), ("loop", loop_ema), ("fused_again", ema_update), ("loop_again", loop_ema)):
        for _ in range(5):
            fn(teacher, student, 0.99)
        sync(spec["device"])
        t0 = time.perf_counter()
        for _ in range(spec["repeats"]):
            fn(teacher, student, 0.99)
        sync(spec["device"])
        timings[name] = (time.perf_counter() - t0) / spec["repeats"] * 1000.0
    fused = min(timings["fused"], timings["fused_again"])
    loop = min(timings["loop"], timings["loop_again"])
    return {"fused_ms": fused, "loop_ms": loop, "parameters": sum(1 for _ in student.parameters())}


def worker(spec: dict) -> int:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    kinds = {"ema": measure_ema, "profile": profile_step}
    result = kinds.get(spec.get("kind"), measure_step)(spec)
    print("WORKER " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(worker(json.loads(sys.argv[1])))
