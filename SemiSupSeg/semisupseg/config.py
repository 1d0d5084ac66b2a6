"""Run configuration: defaults, JSON file, command-line overrides, and data-derived values.

A configuration is a plain JSON-serialisable dict so that ``runs/<id>/config.json`` is the whole
truth about a run. ``resolve_config`` fills every ``None`` ("choose for me") from the device and
the data, so the saved file holds concrete values and a run can be reproduced from it alone.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from .errors import InputError

DEFAULTS: Dict[str, Any] = {
    "method": "dycon",
    "method_options": {},
    "network": "unet3d",
    "network_options": {},
    "iterations": None,  # GPU 6000, CPU 300; 0: continuous, trains until stopped (STOP, SIGTERM, SIGINT)
    # A continuous run has no T for progress = t / T: the methods' ramps (each a fraction of the
    # run) and UnCL's beta play out over this many iterations instead, then hold their end values.
    # None: the device's default run length (GPU 6000, CPU 300), so a continuous run's first
    # iterations are exactly those of a default finite run. Runs with an end ignore it (T is used).
    "ramp_iterations": None,
    # A run folder or run id of this workspace whose checkpoints/last.pt starts this run (warm
    # start: every network of the method, fresh optimiser, iteration 0). config.json records the
    # resolved folder. The class list, network and network options must be the source run's.
    "init_from": None,
    "device": "auto",  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps (training/devices.py)
    # Minutes of wall time for the whole run, its final checkpoint and prediction included
    # (training/time_budget.py): training stops early enough for the prediction to fit. None: no
    # budget. With a budget and no iterations the run trains until the budget (schedules as in a
    # continuous run: constant rate, ramps over ramp_iterations); with iterations N it ends at N
    # or at the budget, whichever comes first; a continuous run ends at the budget.
    "time_budget_min": None,
    # With a budget and no iterations: the schedules (learning rate, the methods' ramps) play out
    # over the iterations the budget is estimated to allow, re-estimated before every step, as in a
    # finite run of that length (training/time_budget.py, paced_total); "poly" is then allowed.
    # false: the continuous schedules (constant rate, ramps over ramp_iterations).
    "schedule_to_budget": False,
    "seed": 1337,
    "patch_size": None,  # (x, y, z), multiples of 16 (thin slabs: z of 8; networks.patch_rule); from sizes and spacing
    "batch_labelled": None,  # GPU 4, CPU 2
    "batch_unlabelled": None,  # GPU 4, CPU 2; 0 for supervised-only
    "target_spacing": None,  # mm (x, y, z) to resample to; None keeps each image's grid (on a GPU)
    # Off a CUDA GPU with target_spacing None: large cases (median over 2^17 voxels) train on a grid
    # of at least this many mm per axis (data/training_grid.py); null: each image's grid everywhere.
    "cpu_min_spacing_mm": 1.6,
    "ct_window": [-1000.0, 1000.0],
    "fg_fraction": 0.5,
    # "standard": dycon.md's crops, 90-degree turns and x / y flips. "strong": also in-plane
    # rotation and scaling, brightness, contrast, gamma and noise (data/strong_augmentation.py),
    # for small labelled sets. On ACDC's 2145-iteration CPU recipe it scored lower (held-out mean
    # Dice 0.732 against 0.770, one seed; docs/benchmarks.md, acdc): harder patches need longer runs.
    "augmentation": "standard",
    "optimizer": {
        "name": "sgd",  # sgd (released DyCON) | adamw (training/optimizers.py)
        # None: the device's default (DEFAULT_LR): 0.01 on a GPU, the released DyCON's rate for its
        # 20000 iterations; 0.05 on the CPU, where runs are a few hundred iterations: on LA, a 5-minute
        # budget reached held-out Dice 0.757 at 0.05 against 0.680 at 0.01 (0.756 at 0.1;
        # docs/benchmarks.md, time_to_quality).
        "lr": None,
        "nesterov": False,  # sgd only
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "grad_clip": 1.0,
        # constant (released DyCON) | poly (power 0.9, finite runs only). A continuous run uses
        # constant: it has no end to decay towards, and a decaying rate would make the corrections
        # the annotator adds late (at the hardest places) count less than the first labels.
        "schedule": "constant",
    },
    "amp": "auto",  # auto (bf16 on CUDA) | bf16 | off
    # auto: on the CPU, where channels-last layout made DyCON's step at the CPU-scale LA setting
    # about 0.9x the time (docs/benchmarks.md, channels_last table); off on CUDA until measured there.
    "channels_last": "auto",
    "compile": False,
    "log_every": 10,
    "checkpoint_every": 200,
    "predict_every": 0,  # 0: predict only at the end
    "first_prediction_at": 0,  # >0: an early prediction round at this iteration
    # Every N iterations, look for new cases and new or changed label files (training/
    # workspace_watch.py); 0: never. A look that finds nothing costs one stat per case (0.25 ms
    # with the 16-case synthetic demo workspace), a changed label 0.18 s (re-prepare the case,
    # hand the sampler its lists). One CPU step of the demo config (DyCON, 64x64x32, widths
    # 8-128, 2+2, 2 threads) took a median 21 s (8-27 s) on this 2-core CPU while other test
    # runs shared it (load 6-8); the larger LA CPU-scale step (64x64x48) takes 5.3 s on the idle
    # machine (docs/benchmarks.md). So 10 iterations: a correction joins within about 1 to 3.5
    # minutes on this CPU, for < 0.01 % of the training time; GPU seconds not yet measured.
    "reload_every": 10,
    # None: 0.5 on a GPU, 0.25 on the CPU, where it makes a large volume's prediction 2.9x faster
    # (100 instead of 294 windows) for 0.001 held-out Dice on LA (docs/benchmarks.md, inference).
    "sw_overlap": None,
    "sw_batch_size": 2,
    "mc_dropout": 0,  # K > 0: also write the mutual-information map
    # "flips": every prediction is the mean over the x / y flips training used (inference/
    # flip_averaging.py), 4x the network passes; on ACDC's 20-minute CPU models it raised held-out
    # mean Dice by 0.015-0.026 for the student's own weights, by 0.0015 for their moving average
    # (docs/benchmarks.md, acdc). "off": one pass, the default until measured on more data (LA).
    "tta": "off",
    # "largest_foreground": keep the largest connected group of predicted structures, the rest
    # becomes background (inference/postprocess.py); on ACDC's 20-minute CPU models it raised
    # held-out mean Dice by 0.009-0.031 over four seeds (0.738 -> 0.753; docs/benchmarks.md, acdc),
    # on LA's 5-minute model by 0.001. Off by default (D14): it would delete one of two
    # structures that lie apart (kidneys, lesions).
    "postprocess": "off",
    # Region threshold: at least `threshold`, and raised so that at most `max_fraction` of the
    # volume is above it (an early, uncertain model would otherwise give one region = everything).
    # Uncertain regions (inference/regions.py): places of at most max_extent_mm per image axis,
    # ranked by expected errors (sum of 1 - max_c p_c); 20 mm keeps the top 5 within 5 % of an
    # LA crop (bench_uncertainty_errors: 40 mm boxes covered 18 %). boundary_weight 0: on LA the predicted
    # boundary band holds the uncertainty of every prediction, right or wrong (issue 17).
    # placement "shell_pieces" cuts the uncertain components into pieces; "error_boxes" takes the
    # disjoint boxes holding the most expected errors (equal on LA within noise: 1.56x vs 1.58x the
    # errors of boundary-random boxes; docs/benchmarks.md, uncertainty_errors).
    # threshold 0.7 and density_mm 10 (were 0.5 and 6): chosen on one 20-minute CPU DyCON model of LA
    # (top-5 boxes 2.02x the errors of boundary-random boxes, against 1.82x), then 2.07x against 1.86x
    # on a second model trained independently; never worse on three weaker models (issue 17). With
    # more than two classes the threshold is capped at ln 2 / ln C, the normalised entropy of an even
    # two-class split (0.5 for ACDC's 4: its threshold until now; predictor.region_thresholds); on ACDC
    # density_mm 10 alone took the top-5 boxes from 1.87x to 2.20x boundary-random boxes.
    "regions": {"threshold": 0.7, "max_fraction": 0.02, "min_volume_mm3": 20.0, "max_regions": 50,
                "boundary_weight": 0.0, "max_extent_mm": 20.0, "density_mm": 10.0, "placement": "shell_pieces",
                "max_class_weight": 10.0},
    # Which cases play which role. Numbers are 1-based positions in dataset.json order.
    "split": {
        "labelled": None,  # N: only the first N labelled cases keep their labels (LA protocol)
        "unlabelled": None,  # "9-64": the unlabelled pool; None: every case not labelled/held out
        "held_out": None,  # "65-80" or a list of ids: never trained on, still predicted
    },
    "predict_cases": "all",  # all | training | held_out | none
}

# Only CUDA counts as a GPU here: an Apple GPU (mps) takes the CPU defaults (shared system memory,
# far slower than the GPUs these were sized for; see training/devices.py).
GPU_DEFAULTS = {"iterations": 6000, "batch_labelled": 4, "batch_unlabelled": 4, "sw_overlap": 0.5}
CPU_DEFAULTS = {"iterations": 300, "batch_labelled": 2, "batch_unlabelled": 2, "sw_overlap": 0.25}
DEFAULT_LR = {"gpu": 0.01, "cpu": 0.05}  # optimizer.lr when the configuration leaves it None


def sliding_window_overlap(config: dict, device) -> float:
    """The configured window overlap, or the device's default when the config leaves it None."""
    value = config.get("sw_overlap")
    if value is None:
        value = (GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS)["sw_overlap"]
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise InputError(
            f"sw_overlap must be in [0, 1) (got {value}).",
            "It is the fraction by which neighbouring sliding windows overlap; use e.g. 0.25 or 0.5.",
        )
    return value


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in; nested dicts merge key by key (a copy)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_keys(config: dict, reference: dict = DEFAULTS, where: str = "") -> None:
    """Refuse unknown keys (a typo would otherwise be silently ignored)."""
    free_form = {"method_options", "network_options"}  # validated by the method / network
    for key, value in config.items():
        if key not in reference:
            raise InputError(
                f"Unknown configuration key '{where}{key}'.",
                f"Valid keys: {', '.join(sorted(reference))}.",
            )
        if key not in free_form and isinstance(value, dict) and isinstance(reference[key], dict):
            check_keys(value, reference[key], f"{where}{key}.")


def load_config(path: Optional[Path]) -> dict:
    """Defaults merged with the JSON file at ``path`` (if any)."""
    if path is None:
        return copy.deepcopy(DEFAULTS)
    path = Path(path)
    try:
        user = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"Configuration file {path} does not exist.", "Check the --config path.")
    except json.JSONDecodeError as err:
        raise InputError(f"Configuration file {path} is not valid JSON: {err}.", "Fix the JSON syntax.")
    if not isinstance(user, dict):
        raise InputError(f"Configuration file {path} must hold a JSON object.", 'Write e.g. {"method": "dycon"}.')
    check_keys(user)
    return deep_merge(DEFAULTS, user)


def apply_overrides(config: dict, **overrides: Any) -> dict:
    """Command-line overrides (``--method`` etc.); ``None`` means not given."""
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        if value is not None:
            out[key] = value
    return out


def resolve_device(name: str):
    """``auto`` -> cuda, else mps (Apple GPU), else cpu; see ``training/devices.py`` (kept here
    for the modules that import it from the configuration)."""
    from .training.devices import resolve_device as resolve

    return resolve(name)


def resolve_config(config: dict, device, image_shapes: Sequence, spacings: Sequence) -> dict:
    """Fill every ``None`` from the device and the data; validate ranges."""
    import numpy as np

    from .data.patch_size import cpu_patch_voxels, default_patch_size
    from .data.strong_augmentation import check_augmentation
    from .inference.flip_averaging import check_tta
    from .inference.postprocess import check_postprocess
    from .training.optimizers import check_optimizer_options
    from .networks import patch_rule, spacing_options

    out = copy.deepcopy(config)
    on_gpu = device.type == "cuda"
    resolve_time_budget(out)
    for key, value in (GPU_DEFAULTS if on_gpu else CPU_DEFAULTS).items():
        if out.get(key) is None:
            out[key] = value
    # Thin slabs: pooling and kernels follow the median training-grid spacing (networks/
    # anisotropy.py), written into network_options so config.json rebuilds the same network.
    # Isotropic data adds nothing: the network (and LA's config.json) stay as they were.
    if len(spacings):
        median_spacing = np.median(np.asarray(spacings, dtype=np.float64), axis=0).tolist()
        out["network_options"] = {**out["network_options"],
                                  **spacing_options(out["network"], out["network_options"], median_spacing)}
    # The network decides which patches it can take; the automatic patch obeys the same rule,
    # growing past a tiny volume (the sampler pads it) rather than starving the network.
    rule = patch_rule(out["network"], out["network_options"])
    if out["patch_size"] is None:
        out["patch_size"] = list(default_patch_size(
            image_shapes, spacings, divisor=rule.axis_divisors, on_gpu=on_gpu,
            max_voxels=None if on_gpu else cpu_patch_voxels(out["network"]),
            min_bottleneck_voxels=rule.min_bottleneck_voxels, strides=rule.axis_strides,
        ))
    patch = out["patch_size"]
    problem = rule.problem(patch)
    if problem:
        raise InputError(problem, "Set patch_size in the configuration accordingly (e.g. [96, 96, 64]), or leave it "
                         "out (null): the automatic patch fits the images and the network.")
    out["patch_size"] = [int(p) for p in patch]
    out["sw_overlap"] = sliding_window_overlap(out, device)
    resolve_schedule_length(out, on_gpu)
    if out["optimizer"].get("lr") is None:
        out["optimizer"]["lr"] = DEFAULT_LR["gpu" if on_gpu else "cpu"]
    check_optimizer_options(out["optimizer"])
    check_tta(out["tta"])
    check_augmentation(out.get("augmentation", "standard"))
    check_postprocess(out.get("postprocess", "off"))
    if int(out["batch_labelled"]) < 1:
        raise InputError("batch_labelled must be >= 1.", "Every step needs a labelled patch; use 1 or more.")
    out["device"] = str(device)
    return out


def resolve_schedule_length(config: dict, on_gpu: bool) -> None:
    """Check ``iterations`` (0 = continuous) and give a continuous run its ramp length, in place."""
    iterations = _whole_number(config["iterations"])
    if iterations is None or iterations < 0:
        raise InputError(
            f"iterations must be a whole number >= 0 (got {config['iterations']!r}).",
            "Use e.g. --iterations 300, or --continuous (iterations 0) to train until stopped.",
        )
    config["iterations"] = iterations
    if iterations > 0:
        return
    if config["optimizer"]["schedule"] != "constant" and not (config.get("time_budget_min") and config.get("schedule_to_budget")):
        raise InputError(
            f"A continuous run (iterations 0) cannot use the '{config['optimizer']['schedule']}' learning-rate "
            "schedule: it decays towards an end the run does not have.",
            'Set "optimizer": {"schedule": "constant"}, give the run a number of iterations, or give it a time '
            'budget with "schedule_to_budget": true (the schedule then ends at the budget).',
        )
    ramp = config.get("ramp_iterations")
    if ramp is None:
        ramp = (GPU_DEFAULTS if on_gpu else CPU_DEFAULTS)["iterations"]
    if _whole_number(ramp) is None or _whole_number(ramp) < 1:
        raise InputError(f"ramp_iterations must be a whole number >= 1 (got {ramp!r}).", "Use e.g. 300, or null.")
    config["ramp_iterations"] = _whole_number(ramp)


def resolve_time_budget(config: dict) -> None:
    """Check ``time_budget_min`` (None or minutes > 0); a budget without iterations trains until
    the budget (iterations 0, as a continuous run), in place."""
    budget = config.get("time_budget_min")
    if budget is None:
        return
    try:
        minutes = float(budget)
    except (TypeError, ValueError):
        minutes = float("nan")
    if isinstance(budget, bool) or not minutes > 0 or minutes == float("inf"):
        raise InputError(
            f"time_budget_min must be a number of minutes > 0 (got {budget!r}).",
            "Use e.g. --time-budget 20 to train, checkpoint and predict within 20 minutes; leave it out for no budget.",
        )
    config["time_budget_min"] = minutes
    if config.get("iterations") is None:
        config["iterations"] = 0


def _whole_number(value: Any) -> Optional[int]:
    """``value`` as an int when it is one (3, 3.0, "3"); None otherwise (booleans included)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def save_json_atomic(data: Any, path: Path) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    from .atomic import atomic_output

    with atomic_output(Path(path), suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, default=str))
