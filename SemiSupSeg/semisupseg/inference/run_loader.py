"""Rebuilding a trained run (method, weights, dataset) from its folder for ``semisupseg predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import load_config, resolve_device
from ..data.dataset import load_dataset
from ..errors import InputError
from ..methods import build_method
from ..networks import build_network
from ..training.checkpoint import load_checkpoint


def workspace_of(run_dir: Path) -> Path:
    """``<workspace>/runs/<run-id>`` -> ``<workspace>``."""
    if run_dir.parent.name != "runs":
        raise InputError(f"{run_dir} is not a run folder (<workspace>/runs/<run-id>).", "Pass --run <workspace>/runs/<run-id>.")
    return run_dir.parent.parent


# Devices a run may have trained on that another machine may lack: their runs predict on ``auto``.
GPU_DEVICE_TYPES = ("cuda", "mps")


def prediction_device(trained_on: str, requested: Optional[str] = None) -> str:
    """The device name ``load_run`` resolves: ``requested`` when given; else, for a run trained on a
    GPU (``cuda``, ``cuda:N``, ``mps``), ``auto``, so that its weights load on whatever this machine
    has (an MPS run on a PC with CUDA or none, a CUDA run on a Mac); else the run's own device (cpu).

    Predicting is never refused for a GPU the training machine had and this one lacks: ``auto``
    picks CUDA, then MPS, then the CPU (``training/devices.py``)."""
    if requested:
        return requested
    name = str(trained_on).strip().lower()
    return "auto" if name.split(":", 1)[0] in GPU_DEVICE_TYPES else name


def load_run(run_dir: Path, checkpoint: Optional[Path] = None, device: Optional[str] = None):
    """Returns (method on device in eval mode, resolved config, dataset spec, torch device)."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.json").is_file():
        raise InputError(f"{run_dir} has no config.json.", "Pass the folder of a run started by semisupseg train.")
    config = load_config(run_dir / "config.json")
    torch_device = resolve_device(prediction_device(config["device"], device))
    spec = load_dataset(workspace_of(run_dir))

    def build():
        return build_network(config["network"], in_channels=1, num_classes=spec.num_classes, **config["network_options"])

    method = build_method(config["method"], build, spec.num_classes, config["method_options"])
    state = load_checkpoint(Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.pt")
    method.load_state_dict(state["model"])
    method.to(torch_device).eval()
    config["device"] = str(torch_device)
    return method, config, spec, torch_device
