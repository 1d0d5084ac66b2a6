"""Segmentation networks: ``build_network(name, in_channels, num_classes, **options)``.

Every network maps ``(B, in_channels, X, Y, Z)`` to logits ``(B, num_classes, X, Y, Z)``, has
``size_divisor`` (spatial sizes must be multiples of it), ``min_bottleneck_voxels(**options)``
(voxels its 1/16 bottleneck needs: 2 where it is normalised) and, when built with its projection
head, ``forward_features(x) -> (logits, embedding (B, 256, X/8, Y/8, Z/8))``. ``patch_rule`` turns
the two into the check the configuration and ``default_patch_size`` share.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

from torch import nn

from ..errors import InputError
from .anisotropy import spacing_options
from .resnet_vnet import ResNetVNet
from .slice_unet import SliceUNet
from .unet3d import UNet3D
from .vnet import VNet

NETWORKS: Dict[str, Callable[..., nn.Module]] = {
    "unet3d": UNet3D, "vnet": VNet, "resnet_vnet": ResNetVNet, "unet2d": SliceUNet,
}


def build_network(name: str, in_channels: int = 1, num_classes: int = 2, **options) -> nn.Module:
    """Instantiate the network ``name`` (a key of ``NETWORKS``) with its ``options``.

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


@dataclass(frozen=True)
class PatchRule:
    """Which training patches (x, y, z) a network accepts.

    Every axis a positive multiple of ``divisor`` (the network halves the patch four times) and
    ``prod(p // divisor) >= min_bottleneck_voxels`` (a normalised bottleneck needs more than
    one voxel). The smallest accepted patches are the ones with a single axis at
    ``2 * divisor`` when ``min_bottleneck_voxels`` is 2, e.g. 32 x 16 x 16 for ``unet3d``.

    A network planned for thin slabs (``networks/anisotropy.py``) has per-axis ``divisors``
    (e.g. 16, 16, 8: z is pooled three times) and ``strides`` (the total pooling per axis, what
    one bottleneck voxel spans); ``divisor`` is then the largest of them. Both default to
    ``divisor`` on every axis. A stride of 0 means the axis does not count: the slice-wise
    ``unet2d`` normalises each slice's bottleneck on its own, so only x and y decide.
    """

    network: str
    divisor: int
    min_bottleneck_voxels: int
    divisors: Optional[Tuple[int, int, int]] = None
    strides: Optional[Tuple[int, int, int]] = None

    @property
    def axis_divisors(self) -> Tuple[int, int, int]:
        return tuple(self.divisors) if self.divisors else (self.divisor,) * 3

    @property
    def axis_strides(self) -> Tuple[int, int, int]:
        return tuple(self.strides) if self.strides else self.axis_divisors

    def bottleneck_voxels(self, patch: Sequence[int]) -> int:
        return math.prod(int(p) // s for p, s in zip(patch, self.axis_strides) if s)

    def smallest_patch(self) -> tuple:
        """One of the smallest accepted patches (z grows first, keeping x = y)."""
        patch = list(self.axis_divisors)
        counting = [a for a in (2, 1, 0) if self.axis_strides[a]]  # z, y, x, z, ...
        step = 0
        while self.bottleneck_voxels(patch) < self.min_bottleneck_voxels:
            axis = counting[step % len(counting)]
            patch[axis] += self.axis_divisors[axis]
            step += 1
        return tuple(patch)

    def problem(self, patch: Sequence) -> Optional[str]:
        """``None`` when ``patch`` is accepted, else a sentence saying why and the smallest size."""
        try:
            values = [int(p) for p in patch]
            whole = len(values) == 3 and all(float(p) == v for p, v in zip(patch, values))
        except (TypeError, ValueError):
            whole = False
        divisors = self.axis_divisors
        if not whole or any(v <= 0 or v % d for v, d in zip(values, divisors)):
            if len(set(divisors)) == 1:
                return (
                    f"patch_size {list(patch) if isinstance(patch, (list, tuple)) else patch} must be three positive "
                    f"multiples of {self.divisor} (x, y, z): network '{self.network}' halves the patch four times."
                )
            return (
                f"patch_size {list(patch) if isinstance(patch, (list, tuple)) else patch} must be positive multiples "
                f"of {list(divisors)} (x, y, z): network '{self.network}', planned for this voxel spacing, pools "
                "each axis that many times (a thick-slice axis fewer times)."
            )
        cells = self.bottleneck_voxels(values)
        if cells < self.min_bottleneck_voxels:
            strides = self.axis_strides
            bottleneck = "x".join(str(v // s) for v, s in zip(values, strides) if s)
            per_slice = " per slice" if 0 in strides else ""
            smallest = list(self.smallest_patch())
            fraction = f"1/{strides[0]}" if len(set(strides)) == 1 else " x ".join(f"1/{v}" for v in strides if v)
            return (
                f"patch_size {values} is too small for network '{self.network}': its normalised bottleneck{per_slice} "
                f"({fraction} of the patch) would be {bottleneck} voxel(s), and it needs at least "
                f"{self.min_bottleneck_voxels}. The smallest patch it supports is {smallest} "
                + ("(in any axis order)." if len(set(strides)) == 1 else "(x, y, z).")
            )
        return None


def patch_rule(name: str, options: Optional[dict] = None) -> PatchRule:
    """The patch sizes network ``name`` built with ``options`` accepts (``InputError`` for an
    unknown network). Unknown options are ignored here; ``build_network`` reports them."""
    if name not in NETWORKS:
        raise InputError(f"Unknown network '{name}'.", f"Valid networks: {', '.join(sorted(NETWORKS))}.")
    factory = NETWORKS[name]
    options = dict(options or {})
    minimum = int(factory.min_bottleneck_voxels(**options))
    if not hasattr(factory, "size_divisors"):
        return PatchRule(name, int(factory.size_divisor), minimum)
    divisors = tuple(int(d) for d in factory.size_divisors(**options))
    strides = tuple(int(s) for s in factory.bottleneck_strides(**options))
    if len(set(divisors)) == 1 and divisors == strides:
        return PatchRule(name, divisors[0], minimum)  # isotropic: the plain rule
    return PatchRule(name, max(divisors), minimum, divisors, strides)


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


__all__ = [
    "NETWORKS", "PatchRule", "build_network", "patch_rule", "enable_mc_dropout", "count_parameters", "spacing_options",
    "UNet3D", "VNet", "ResNetVNet", "SliceUNet",
]
