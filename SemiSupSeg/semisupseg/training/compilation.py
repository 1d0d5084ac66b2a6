"""torch.compile for the engine's networks: every entry point a method calls, and copies that stay their own.

``nn.Module.compile()`` compiles ``__call__`` only. DyCON and the dual-network method call
``net.forward_features(x)`` directly, which would bypass it, so ``compile_network`` also wraps
``forward_features``. Both wrappers are bound to the network they were made for: a plain
``copy.deepcopy`` of a compiled network would run the original (the mean teacher would be the
student), hence ``plain_copy``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def compile_network(net: nn.Module) -> nn.Module:
    """Compile ``net`` in place (state_dict keys unchanged): ``net(x)`` and ``net.forward_features(x)``."""
    net.compile()
    if callable(getattr(type(net), "forward_features", None)):
        # An instance attribute shadows the class method; compilation happens on the first call.
        net.forward_features = torch.compile(net.forward_features)
    return net


def is_compiled(net: nn.Module) -> bool:
    return getattr(net, "_compiled_call_impl", None) is not None


def plain_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` without its compiled wrappers (the original keeps them)."""
    compiled_call = getattr(net, "_compiled_call_impl", None)
    compiled_features = net.__dict__.pop("forward_features", None)
    net._compiled_call_impl = None
    try:
        return copy.deepcopy(net)
    finally:
        net._compiled_call_impl = compiled_call
        if compiled_features is not None:
            net.forward_features = compiled_features
