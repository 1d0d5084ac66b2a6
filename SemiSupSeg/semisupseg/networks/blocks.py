"""Building blocks shared by the segmentation networks.

Convolution units reuse MONAI's ``Convolution`` (conv -> norm -> activation), which matches the
specification exactly: a 3x3x3 convolution with bias and padding 1, ``InstanceNorm3d`` with
``affine=False`` and no running statistics, and a plain (not in-place) ReLU. The projection head
has no MONAI counterpart (a 1x1x1 conv / BatchNorm stack after a trilinear upsampling), so it is
written in plain torch.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

NORMALIZATIONS = {"none": None, "batch": "BATCH", "instance": "INSTANCE"}

# A network that normalises its 1/16 bottleneck needs at least this many bottleneck voxels per
# patch, i.e. prod(patch // 16) >= 2: instance norm computes each channel's variance over one
# sample's voxels and raises "Expected more than 1 spatial element" on a 1x1x1 map, and batch
# norm does the same over batch x voxels when a method runs a batch of one patch (batch norm is
# held to the same rule rather than to the batch sizes, which the out-of-memory retry changes).
NORMALISED_BOTTLENECK_VOXELS = 2


def conv_unit(
    in_channels: int,
    out_channels: int,
    norm: Optional[str] = "INSTANCE",
    kernel_size: Union[int, Sequence[int]] = 3,
    stride: int = 1,
    transposed: bool = False,
    spatial_dims: int = 3,
) -> Convolution:
    """One convolution (with bias) followed by ``norm`` (MONAI name or None) and ReLU.

    ``spatial_dims`` 2 builds the 2D unit (Conv2d, InstanceNorm2d) of the slice-wise network.

    kernel 3 / stride 1 keeps the size (padding 1); kernel 2 / stride 2 halves it (or doubles it
    when ``transposed``) without padding. A per-axis kernel such as (3, 3, 1) (an in-plane
    convolution for thick slices) is padded per axis, (1, 1, 0), and keeps the size too.
    """
    if isinstance(kernel_size, int):
        padding = (kernel_size - 1) // 2 if stride == 1 else 0
    else:
        kernel_size = tuple(int(k) for k in kernel_size)
        padding = tuple((k - 1) // 2 for k in kernel_size) if stride == 1 else 0
    return Convolution(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=stride,
        kernel_size=kernel_size,
        act="RELU",
        norm=norm,
        bias=True,
        padding=padding,
        output_padding=0 if transposed else None,
        is_transposed=transposed,
    )


def conv_stage(
    n_convs: int, in_channels: int, out_channels: int, norm: Optional[str], kernel_size: Union[int, Sequence[int]] = 3,
    spatial_dims: int = 3,
) -> nn.Sequential:
    """``n_convs`` conv units (3x3x3 by default) in a row, the first one changing the channel count."""
    units = [
        conv_unit(in_channels if i == 0 else out_channels, out_channels, norm, kernel_size=kernel_size,
                  spatial_dims=spatial_dims)
        for i in range(n_convs)
    ]
    return nn.Sequential(*units)


class ProjectionHead(nn.Module):
    """Bottleneck features -> patch embeddings for the contrastive loss (FeCL).

    ``(B, C_in, X/16, Y/16, Z/16)`` -> trilinear x2 upsampling (``align_corners=True``) ->
    1x1x1 conv C_in->hidden (bias) -> BatchNorm -> ReLU -> 1x1x1 conv hidden->out -> BatchNorm
    -> ``(B, out, X/8, Y/8, Z/8)``. No final activation and no L2 normalisation (the loss does it).
    ``forward(features, size)``: trilinear resizing to ``size`` instead of x2 (a network that pools
    a thick-slice axis fewer times has a bottleneck at Z/8, which then stays as it is); with
    ``align_corners=True`` the sampling grid depends only on the two sizes, so ``size = 2 x``
    the bottleneck is exactly the x2 upsampling.
    """

    def __init__(self, in_channels: int, hidden: int = 512, out_channels: int = 256):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv3d(in_channels, hidden, kernel_size=1),
            nn.BatchNorm3d(hidden),
            nn.ReLU(),
            nn.Conv3d(hidden, out_channels, kernel_size=1),
            nn.BatchNorm3d(out_channels),
        )

    def forward(self, features: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        if size is None:
            upsampled = F.interpolate(features, scale_factor=2, mode="trilinear", align_corners=True)
        else:
            upsampled = F.interpolate(features, size=tuple(int(s) for s in size), mode="trilinear", align_corners=True)
        return self.layers(upsampled)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU gain) convolution weights; BatchNorm weight ~ N(1, 0.02), bias 0.

    Apply with ``model.apply(init_weights)``. Convolution biases keep PyTorch's default.
    For a transposed convolution whose kernel equals its stride (the V-Net's upsampling), every
    output voxel sees exactly ``in_channels`` inputs, so that is its true fan-in; torch's own
    fan computation would count ``out_channels * kernel volume`` instead, hence the explicit std.
    """
    if isinstance(module, (nn.Conv3d, nn.Conv2d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    elif isinstance(module, nn.ConvTranspose3d):
        std = math.sqrt(2.0 / module.in_channels)
        nn.init.normal_(module.weight, 0.0, std)
    elif isinstance(module, nn.BatchNorm3d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def check_spatial_size(x: torch.Tensor, divisor: Union[int, Sequence[int]], network: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, C, X, Y, Z)`` with X, Y, Z divisible by ``divisor``
    (one number for every axis, or one per axis)."""
    if x.dim() != 5:
        raise ValueError(f"{network} expects a 5-D input (B, C, X, Y, Z); got shape {tuple(x.shape)}.")
    divisors = (int(divisor),) * 3 if isinstance(divisor, int) else tuple(int(d) for d in divisor)
    bad = [s for s, d in zip(x.shape[2:], divisors) if s % d]
    if bad:
        shown = divisors[0] if len(set(divisors)) == 1 else "x".join(map(str, divisors))
        raise ValueError(
            f"{network} needs every spatial size divisible by {shown} (it downsamples 4 times); "
            f"got {tuple(x.shape[2:])}. Pad or crop the input to a multiple of {shown}."
        )


def normalization_name(normalization: str, network: str) -> Optional[str]:
    """Map a user-facing normalisation name ('none', 'batch', 'instance') to MONAI's name."""
    from ..errors import InputError

    key = str(normalization).lower()
    if key not in NORMALIZATIONS:
        raise InputError(
            f"Unknown normalization '{normalization}' for network '{network}'.",
            f"Use one of {sorted(NORMALIZATIONS)}.",
        )
    return NORMALIZATIONS[key]


def as_widths(widths: Sequence[int], count: int, network: str) -> tuple:
    """Validate a channel-width sequence of length ``count`` with positive entries."""
    from ..errors import InputError

    widths = tuple(int(w) for w in widths)
    if len(widths) != count or min(widths) < 1:
        raise InputError(
            f"Network '{network}' needs {count} positive channel widths; got {widths}.",
            "For example widths=[16, 32, 64, 128, 256].",
        )
    return widths
