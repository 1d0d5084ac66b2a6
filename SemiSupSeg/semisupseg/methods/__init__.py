"""Training methods behind one interface (``base.Method``), selectable by name."""

from __future__ import annotations

from typing import Callable, Dict, Type

from torch import nn

from ..errors import InputError
from .base import Batch, Method, StepContext, StepOutput
from .dycon import DyCON
from .mean_teacher import MeanTeacher
from .supervised import SupervisedOnly

METHODS: Dict[str, Type[Method]] = {
    SupervisedOnly.name: SupervisedOnly,
    MeanTeacher.name: MeanTeacher,
    DyCON.name: DyCON,
}

# --- companion methods (registered below by their module) ---
from .bidirectional_region import BidirectionalRegion  # noqa: E402
from .dual_uncertainty import DualUncertainty  # noqa: E402
from .uamt import UAMT  # noqa: E402

METHODS[UAMT.name] = UAMT
METHODS[DualUncertainty.name] = DualUncertainty
METHODS[BidirectionalRegion.name] = BidirectionalRegion
# --- end companion methods ---


def build_method(name: str, build_network: Callable[[], nn.Module], num_classes: int, options: dict) -> Method:
    """Instantiate the method called ``name`` (see ``METHODS``)."""
    if name not in METHODS:
        raise InputError(f"Unknown method '{name}'.", f"Choose one of: {', '.join(sorted(METHODS))}.")
    return METHODS[name](build_network, num_classes, options)


__all__ = ["Batch", "Method", "StepContext", "StepOutput", "METHODS", "build_method"]
