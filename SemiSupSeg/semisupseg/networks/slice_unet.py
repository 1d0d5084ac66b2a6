"""A 2D U-Net applied slice by slice ("unet2d"): nnU-Net's 2D configuration inside the 3D engine.

Thin-slab scans (cine MRI: about ten 5-10 mm slices at 1.5 mm in-plane) carry little across
slices, and on a CPU the 3D convolutions' backward pass is what a training step waits for. This
network folds the slice axis into the batch, runs a 2D U-Net on every slice, and unfolds the
result, so everything around it (patches, sampler, losses, sliding window, regions) stays 3D:

    x (B, C, X, Y, Z) -> slices (B*Z, C, X, Y) -> 2D U-Net -> (B*Z, K, X, Y) -> (B, K, X, Y, Z)

- block(a -> b) = 2 x [Conv2d 3x3 (bias, pad 1) -> InstanceNorm2d(affine=False) -> ReLU]
  (each slice is normalised on its own, as nnU-Net's 2D network does)
- encoder: block(in -> w0), then four times max-pool 2 in-plane -> block(w_{k-1} -> w_k); the
  center (1/16 in-plane) is followed by Dropout(p)
- decoder, k = 3..0: bilinear x2 upsampling -> concat [skip_k, up] -> block(w_k + w_{k+1} -> w_k);
  Dropout(p) -> 1x1 conv w0 -> num_classes
- projection head (FeCL): the center features, unfolded to (B, w4, X/16, Y/16, Z), resized to the
  engine's embedding grid (X/8, Y/8, Z/8) by the shared ``ProjectionHead``.

With the same widths as ``unet3d`` a supervised step at the ACDC CPU patch (144 x 144 x 8, widths
8-128) takes about 0.6x the planned 3D U-Net's on the 2-core CPU, DyCON's step 0.63x
(``bench_train_step.py --thin-slab``, table thin_slab of docs/benchmarks.md).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import NORMALISED_BOTTLENECK_VOXELS, ProjectionHead, as_widths, check_spatial_size, conv_stage, init_weights

EMBEDDING_STRIDE = 8  # FeCL's block grid (losses.patch_labels) is 1/8 of the patch on every axis
IN_PLANE_POOLING = 16  # four 2x poolings of x and y


class SliceUNet(nn.Module):
    """2D U-Net run on every slice (z) of a 3D patch.

    Args:
        in_channels: image channels.
        num_classes: output channels (classes including background).
        widths: five channel widths, encoder top to bottom.
        dropout: element-wise dropout probability after the center and before the head.
        projection: build the projection head (needed for ``forward_features``).
        proj_hidden, proj_dim: hidden and output widths of the projection head.

    ``forward(x)``: ``(B, in, X, Y, Z) -> (B, num_classes, X, Y, Z)`` logits; X and Y multiples of
    16, Z of 8 (only for FeCL's embedding grid; the slices themselves are independent).
    ``forward_features(x)``: ``(logits, embedding (B, proj_dim, X/8, Y/8, Z/8))``, not normalised.
    """

    size_divisor = IN_PLANE_POOLING

    @staticmethod
    def size_divisors(**options) -> tuple:
        return (IN_PLANE_POOLING, IN_PLANE_POOLING, EMBEDDING_STRIDE)

    @staticmethod
    def bottleneck_strides(**options) -> tuple:
        """What one bottleneck voxel spans per axis; z is 0 (does not count): each slice is
        normalised on its own, so X/16 * Y/16 >= 2 is the rule whatever the slab's depth."""
        return (IN_PLANE_POOLING, IN_PLANE_POOLING, 0)

    @staticmethod
    def min_bottleneck_voxels(**options) -> int:
        return NORMALISED_BOTTLENECK_VOXELS

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: float = 0.3,
        projection: bool = True,
        proj_hidden: int = 512,
        proj_dim: int = 256,
    ):
        super().__init__()
        w = as_widths(widths, 5, "unet2d")
        self.widths = w
        self.encoder = nn.ModuleList([conv_stage(2, in_channels, w[0], "INSTANCE", 3, spatial_dims=2)])
        self.encoder.extend(conv_stage(2, w[k - 1], w[k], "INSTANCE", 3, spatial_dims=2) for k in range(1, 5))
        self.decoder = nn.ModuleList(conv_stage(2, w[k] + w[k + 1], w[k], "INSTANCE", 3, spatial_dims=2) for k in range(4))
        self.center_dropout = nn.Dropout(p=dropout)
        self.head_dropout = nn.Dropout(p=dropout)
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)
        self.projection = ProjectionHead(w[4], proj_hidden, proj_dim) if projection else None
        self.apply(init_weights)

    def _backbone(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return (logits (B, K, X, Y, Z), center features (B, w4, X/16, Y/16, Z) after dropout)."""
        check_spatial_size(x, self.size_divisors(), "unet2d")
        batch, _, _, _, depth = x.shape
        h = _slices(x)
        skips: List[torch.Tensor] = []
        for k, stage in enumerate(self.encoder):
            if k > 0:
                h = F.max_pool2d(h, kernel_size=2)
            h = stage(h)
            skips.append(h)
        center = self.center_dropout(skips.pop())
        h = center
        for k in reversed(range(4)):
            up = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = self.decoder[k](torch.cat([skips[k], up], dim=1))
        logits = self.head(self.head_dropout(h))
        return _volume(logits, batch, depth), _volume(center, batch, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._backbone(x)[0]

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.projection is None:
            raise RuntimeError("unet2d was built with projection=False; forward_features needs the head.")
        logits, center = self._backbone(x)
        return logits, self.projection(center, [s // EMBEDDING_STRIDE for s in x.shape[2:]])


def _slices(x: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B*Z, C, X, Y), slice-major within each patch."""
    batch, channels, sx, sy, depth = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(batch * depth, channels, sx, sy)


def _volume(slices: torch.Tensor, batch: int, depth: int) -> torch.Tensor:
    """(B*Z, C, X, Y) -> (B, C, X, Y, Z): the inverse of ``_slices``."""
    _, channels, sx, sy = slices.shape
    return slices.reshape(batch, depth, channels, sx, sy).permute(0, 2, 3, 4, 1).contiguous()
