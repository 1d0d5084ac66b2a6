"""The DyCON 3D U-Net ("unet3d"): instance-normalised encoder-decoder with a projection head.

Architecture (widths w = 16, 32, 64, 128, 256 by default):

- block(a -> b) = 2 x [Conv3d 3x3x3 (bias, pad 1) -> InstanceNorm3d(affine=False) -> ReLU]
- encoder: block(in -> w0), then four times max-pool 2 -> block(w_{k-1} -> w_k); the last block
  ("center", 1/16 resolution) is followed by Dropout(p)
- decoder, k = 3..0: trilinear x2 upsampling (align_corners=False) -> concat [skip_k, up] ->
  block(w_k + w_{k+1} -> w_k); Dropout(p) -> 1x1x1 conv w0 -> num_classes (the logits)
- projection head (FeCL) on the center features after their dropout: see ``ProjectionHead``.

At the defaults the backbone has 5,884,050 parameters and the head 264,448 (6,148,498 in all).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import NORMALISED_BOTTLENECK_VOXELS, ProjectionHead, as_widths, check_spatial_size, conv_stage, init_weights


class UNet3D(nn.Module):
    """3D U-Net of DyCON.

    Args:
        in_channels: image channels.
        num_classes: output channels (classes including background).
        widths: five channel widths, encoder top to bottom.
        dropout: element-wise dropout probability after the center and before the head.
        projection: build the projection head (needed for ``forward_features``).
        proj_hidden, proj_dim: hidden and output widths of the projection head.

    ``forward(x)``: ``(B, in, X, Y, Z) -> (B, num_classes, X, Y, Z)`` logits, X, Y, Z divisible by 16.
    ``forward_features(x)``: ``(logits, embedding (B, proj_dim, X/8, Y/8, Z/8))``, not normalised.
    """

    size_divisor = 16

    @staticmethod
    def min_bottleneck_voxels(**options) -> int:
        """Instance norm at the 1/16 center needs more than one voxel per channel (see blocks)."""
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
        w = as_widths(widths, 5, "unet3d")
        self.widths = w
        self.encoder = nn.ModuleList([conv_stage(2, in_channels, w[0], "INSTANCE")])
        self.encoder.extend(conv_stage(2, w[k - 1], w[k], "INSTANCE") for k in range(1, 5))
        # decoder[k] produces width w[k] from [skip (w[k]), upsampled (w[k+1])]; k = 0..3
        self.decoder = nn.ModuleList(conv_stage(2, w[k] + w[k + 1], w[k], "INSTANCE") for k in range(4))
        self.center_dropout = nn.Dropout(p=dropout)
        self.head_dropout = nn.Dropout(p=dropout)
        self.head = nn.Conv3d(w[0], num_classes, kernel_size=1)
        self.projection = ProjectionHead(w[4], proj_hidden, proj_dim) if projection else None
        self.apply(init_weights)

    def _backbone(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, center features after dropout)."""
        check_spatial_size(x, self.size_divisor, "unet3d")
        skips: List[torch.Tensor] = []
        h = x
        for k, stage in enumerate(self.encoder):
            if k > 0:
                h = F.max_pool3d(h, kernel_size=2)
            h = stage(h)
            skips.append(h)
        center = self.center_dropout(skips.pop())
        h = center
        for k in reversed(range(4)):
            up = F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False)
            h = self.decoder[k](torch.cat([skips[k], up], dim=1))
        logits = self.head(self.head_dropout(h))
        return logits, center

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._backbone(x)[0]

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.projection is None:
            raise RuntimeError("unet3d was built with projection=False; forward_features needs the head.")
        logits, center = self._backbone(x)
        return logits, self.projection(center)
