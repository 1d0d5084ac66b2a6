"""The interface every training method implements, and the batch it receives.

A method owns its networks (student, teacher, second network...), computes the loss of one
training step from a labelled and an unlabelled batch, and says which networks predict.
The trainer owns everything else: data, optimiser, schedules, autocast, checkpoints, events.
The module-level ``*_problems`` helpers check option values; ``raise_option_problems`` reports
them all in one ``InputError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn


@dataclass
class Batch:
    """One training batch, already on the training device and augmented.

    x_l: (B_l, 1, X, Y, Z) float labelled images;  y_l: (B_l, X, Y, Z) int64 labels in [0, C),
        or ``losses.NOT_ANNOTATED`` (-1) for voxels of a partially labelled case nobody annotated
        (every supervised term skips them); each labelled patch has at least one annotated voxel.
    x_u: (B_u, 1, X, Y, Z) float unlabelled images (B_u may be 0 for supervised-only); partially
        labelled cases are drawn here too.
    """

    x_l: torch.Tensor
    y_l: torch.Tensor
    x_u: torch.Tensor


@dataclass
class StepContext:
    """Where the schedule stands: iteration t (0-based) of T planned, and the autocast setting.

    ``total`` is 0 for a continuous run (no planned end). ``ramp_length`` is then the number of
    iterations over which the schedules play out (the methods' ramps are fractions of it), and
    after it everything holds its end value; for a run with an end it is left 0 and T is used.
    """

    iteration: int
    total: int
    autocast_dtype: torch.dtype | None = None  # bf16 on GPU, None on CPU
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ramp_length: int = 0

    @property
    def progress(self) -> float:
        """t / T (t / ramp_length when set) in [0, 1]; schedules are functions of it."""
        horizon = self.ramp_length or self.total
        return min(1.0, self.iteration / max(1, horizon))


@dataclass
class StepOutput:
    """Total loss to back-propagate and its named parts (detached scalars, for the event log)."""

    loss: torch.Tensor
    parts: Dict[str, torch.Tensor]


class Method(nn.Module):
    """Base class of training methods.

    Subclasses set ``name``, ``uses_unlabelled`` and ``defaults`` (method options with their
    default values, all JSON-serialisable; the trainer merges the user's ``method_options`` over
    them), build their networks in ``__init__`` and implement ``training_step``.

    Being an ``nn.Module`` means ``state_dict()`` holds every network (student, teacher, ...),
    so checkpoints need no per-method code. Only parameters of ``trainable_parameters()`` are
    optimised; teachers are updated in ``after_optimizer_step``.
    """

    name: str = "base"
    description: str = ""
    uses_unlabelled: bool = True
    defaults: Dict[str, object] = {}

    def __init__(self, build_network: Callable[[], nn.Module], num_classes: int, options: dict):
        super().__init__()
        unknown = set(options) - set(self.defaults)
        if unknown:
            from ..errors import InputError

            raise InputError(
                f"Unknown option(s) {sorted(unknown)} for method '{self.name}'.",
                f"Valid options: {sorted(self.defaults)}.",
            )
        self.options = {**self.defaults, **options}
        self.num_classes = num_classes
        self.build_network = build_network

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Parameters the optimiser updates (default: all of ``self.student``)."""
        return list(self.student.parameters())

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:  # pragma: no cover
        """Loss of one iteration. Called under autocast when the trainer uses it."""
        raise NotImplementedError

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Called after each successful optimiser step (EMA updates go here)."""

    def inference_networks(self) -> List[nn.Module]:
        """Networks whose softmax outputs are averaged for predictions and uncertainty maps."""
        return [getattr(self, "teacher", self.student)]


def number_problems(options: dict, limits: Dict[str, Tuple[float, Optional[float], bool]]) -> List[str]:
    """Problems of numeric options: ``limits[key] = (low, high, integer)``, low <= v <= high (if given)."""
    problems = []
    for key, (low, high, integer) in limits.items():
        value = options[key]
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            problems.append(f"{key} must be {'an integer' if integer else 'a number'}, got {value!r}")
        elif value < low or (high is not None and value > high):
            problems.append(f"{key} must be in [{low}, {high if high is not None else 'inf'}], got {value}")
    return problems


def choice_problems(options: dict, choices: Dict[str, Sequence]) -> List[str]:
    """Problems of options restricted to a few values: ``choices[key]`` lists the valid ones."""
    return [f"{key} must be one of {valid}, got {options[key]!r}" for key, valid in choices.items()
            if options[key] not in valid]


def flag_problems(options: dict, keys: Iterable[str]) -> List[str]:
    """Problems of options that must be booleans (JSON true / false)."""
    return [f"{key} must be true or false, got {options[key]!r}" for key in keys if not isinstance(options[key], bool)]


def raise_option_problems(method: str, problems: List[str]) -> None:
    """Raise one ``InputError`` listing every invalid option value of ``method``, if any."""
    from ..errors import InputError

    if problems:
        raise InputError(f"Invalid option value(s) for method '{method}': " + "; ".join(problems) + ".",
                         "Fix method_options in the run configuration (see `semisupseg methods`).")
