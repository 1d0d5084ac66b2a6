"""Settings a new run derives before it prepares its data (issue 15: time to quality off a GPU).

- **Off a CUDA GPU** (the CPU, or an Apple GPU, which takes the CPU defaults), what the user left
  unset follows the measured CPU defaults: the training grid of large cases
  (``data/training_grid.py``, ``cpu_min_spacing_mm``) and the U-Net's widths
  (``CPU_UNET_WIDTHS``). On LA with a 5-minute budget (docs/benchmarks.md, time_to_quality), the
  engine's defaults reached held-out Dice 0.782 with the full-width U-Net (16-256: 80 iterations)
  and 0.842 with widths 8-128.
- **A warm start** (``init_from``) takes the source run's network options and training grid when
  the user left them unset, so "Train again" continues the network it starts from (an older run
  written before these defaults existed keeps its own full-width network and image grid).

A resumed run has them already (its config.json holds the resolved values) and derives nothing.
The resolved values go to the run's config.json, from which prediction rebuilds the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from ..config import load_config
from ..data.io import read_header
from ..data.training_grid import cpu_training_spacing
from ..events import log
from .warm_start import resolve_source_run

CPU_UNET_WIDTHS = [8, 16, 32, 64, 128]


def derived_config(config: dict, workspace: Path, device_type: str, cases: List) -> dict:
    """``config`` with the warm start's or the CPU's defaults filled in (a copy; see the module doc)."""
    if config.get("init_from"):
        return inherited_from_source(config, workspace)
    if device_type == "cuda":
        return config
    return with_cpu_defaults(config, cases)


def inherited_from_source(config: dict, workspace: Path) -> dict:
    """The source run's network options and grid where ``config`` leaves them unset (same network)."""
    source = resolve_source_run(workspace, config["init_from"])  # InputError naming the run when absent
    source_config = load_config(source / "config.json")
    out = dict(config)
    if not config["network_options"] and source_config["network"] == config["network"]:
        out["network_options"] = source_config["network_options"]
    if config.get("target_spacing") is None:
        out["target_spacing"] = source_config.get("target_spacing")
    return out


def with_cpu_defaults(config: dict, cases: List) -> dict:
    out = dict(config)
    if config["network"] in ("unet3d", "unet2d") and "widths" not in config["network_options"]:
        out["network_options"] = {**config["network_options"], "widths": list(CPU_UNET_WIDTHS)}
    if config.get("target_spacing") is None:
        headers = [read_header(case.image) for case in cases]
        spacing = cpu_training_spacing([h.size for h in headers], [h.spacing for h in headers],
                                       config.get("cpu_min_spacing_mm"))
        if spacing is not None:
            log(f"training grid {'x'.join(f'{s:g}' for s in spacing)} mm off the GPU (cpu_min_spacing_mm "
                f"{config['cpu_min_spacing_mm']:g}; set target_spacing to choose another)")
            out["target_spacing"] = spacing
    return out
