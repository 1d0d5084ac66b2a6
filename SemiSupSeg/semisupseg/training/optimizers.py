"""The optimiser a run trains with (config ``optimizer``).

- ``sgd``: SGD with momentum, as the released DyCON trains (lr 0.01, momentum 0.9, weight decay
  1e-4, constant rate for 20000 iterations). ``nesterov: true`` uses Nesterov momentum.
- ``adamw``: AdamW (decoupled weight decay; betas (0.9, 0.999)); ``momentum`` is unused. Meant for
  short runs on a CPU, where a few hundred SGD steps at 0.01 leave the network far from converged
  (issue 15: time to quality; the measured figures are in docs/benchmarks.md, time_to_quality).

The schedule (``training/schedules.py``) sets each group's ``lr`` before every step, whatever the
optimiser. A resumed run must use the optimiser its checkpoint holds: the state of one cannot be
loaded into the other (``check_resumable``).
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..errors import InputError

OPTIMIZERS = ("sgd", "adamw")


def check_optimizer_options(options: dict) -> None:
    """InputError for an unknown optimiser or a value it cannot take."""
    name = options.get("name", "sgd")
    if name not in OPTIMIZERS:
        raise InputError(f"Unknown optimizer name '{name}'.", f"Use one of: {', '.join(OPTIMIZERS)}.")
    if not float(options["lr"]) > 0:
        raise InputError(f"optimizer.lr must be > 0 (got {options['lr']!r}).", "Use e.g. 0.01 for sgd, 0.001 for adamw.")
    if options.get("nesterov") and name != "sgd":
        raise InputError("optimizer.nesterov applies to sgd only.", 'Remove "nesterov", or set "name": "sgd".')
    if options.get("nesterov") and not float(options["momentum"]) > 0:
        raise InputError("Nesterov momentum needs optimizer.momentum > 0.", 'Set e.g. "momentum": 0.9.')


def build_optimizer(parameters: Iterable[torch.nn.Parameter], options: dict) -> torch.optim.Optimizer:
    """The optimiser named by ``options["name"]`` (default sgd) over ``parameters``."""
    check_optimizer_options(options)
    lr, weight_decay = float(options["lr"]), float(options["weight_decay"])
    if options.get("name", "sgd") == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=float(options["momentum"]), weight_decay=weight_decay,
                           nesterov=bool(options.get("nesterov", False)))


def check_resumable(optimizer: torch.optim.Optimizer, saved_state: dict) -> None:
    """InputError when a checkpoint's optimiser state belongs to another optimiser than this run's.

    SGD keeps ``momentum_buffer`` per parameter, AdamW ``exp_avg``/``exp_avg_sq``/``step``; loading
    one into the other would fail deep inside torch or, worse, silently drop the moments.
    """
    states = list((saved_state or {}).get("state", {}).values())
    if not states:
        return
    saved_is_adam = "exp_avg" in states[0]
    this_is_adam = isinstance(optimizer, torch.optim.AdamW)
    if saved_is_adam != this_is_adam:
        saved, current = ("adamw", "sgd") if saved_is_adam else ("sgd", "adamw")
        raise InputError(
            f"The checkpoint was trained with the {saved} optimizer; this run's configuration asks for {current}.",
            f'Resume with "optimizer": {{"name": "{saved}"}} (config.json of the run), or start a new run '
            "(a warm start, init_from, takes the weights with a fresh optimizer).",
        )
