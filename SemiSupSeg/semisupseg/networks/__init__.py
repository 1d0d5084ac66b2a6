"""Segmentation networks: ``build_network(name, in_channels, num_classes, **options)``.

Every network maps ``(B, in_channels, X, Y, Z)`` to logits ``(B, num_classes, X, Y, Z)``, has
``size_divisor`` (spatial sizes must be multiples of it) and, when built with its projection head,
``forward_features(x) -> (logits, embedding (B, 256, X/8, Y/8, Z/8))``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict

from torch import nn

from ..errors import InputError
from .resnet_vnet import ResNetVNet
from .unet3d import UNet3D
from .vnet import VNet

NETWORKS: Dict[str, Callable[..., nn.Module]] = {"unet3d": UNet3D, "vnet": VNet, "resnet_vnet": ResNetVNet}


def build_network(name: str, in_channels: int = 1, num_classes: int = 2, **options) -> nn.Module:
    """Instantiate the network ``name`` ('unet3d' or 'vnet') with its ``options``.

    Raises ``InputError`` for an unknown name or option, listing the valid ones.
    """
    if name not in NETWORKS:
        raise InputError(f"Unknown network '{name}'.", f"Valid networks: {', '.join(sorted(NETWORKS))}.")
    factory = NETWORKS[name]
    valid = [p for p in inspect.signature(factory).parameters if p not in ("in_channels", "num_classes")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputError(f"Unknown option(s) {unknown} for network '{name}'.", f"Valid options: {valid}.")
    return factory(in_channels=in_channels, num_classes=num_classes, **options)


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Put only the dropout layers of ``model`` in training mode (Monte-Carlo dropout).

    Call after ``model.eval()``: normalisation layers keep their inference behaviour, dropout
    samples a new mask on every forward pass. Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["NETWORKS", "build_network", "enable_mc_dropout", "count_parameters", "UNet3D", "VNet", "ResNetVNet"]
