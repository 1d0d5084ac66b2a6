"""Checkpoints: weights, optimiser and RNG state only, loadable with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from ..errors import InputError
from .devices import mps_available

FORMAT = 1


def save_checkpoint(
    path: Path,
    *,
    iteration: int,
    method,
    optimizer,
    sampler_rng: Optional[torch.Tensor],
    train_seconds: float = 0.0,
    extra: Optional[dict] = None,
) -> None:
    """Atomically write ``path`` (temporary file + rename), so a kill never leaves half a checkpoint.

    ``train_seconds`` is the wall time spent training up to ``iteration``, summed over every
    resumed part, so a run's reported duration survives a kill. ``extra`` holds plain values
    (str, int, lists of them) describing the weights, e.g. ``classes``: the class names in label
    order, which a warm start (``--init-from``) checks against its own workspace.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "iteration": int(iteration),
        "train_seconds": float(train_seconds),
        "method": method.name,
        "model": method.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "rng": {"torch": torch.get_rng_state()},
        **(extra or {}),
    }
    if sampler_rng is not None:
        state["rng"]["sampler"] = sampler_rng
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    if mps_available():  # dropout on an Apple GPU draws from the MPS generator
        state["rng"]["mps"] = torch.mps.get_rng_state()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by ``save_checkpoint`` (weights only: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Checkpoint {path} does not exist.", "Train first, or pass the right --run / --checkpoint.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise InputError(f"Checkpoint {path} cannot be read ({err}).", "Use a checkpoint written by semisupseg.")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not a semisupseg checkpoint (format {FORMAT}).", "Use last.pt from a run folder.")
    return state
