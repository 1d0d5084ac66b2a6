"""The V-Net of the LA semi-supervised literature ("vnet", as in UA-MT), plus a projection head.

Architecture (n = n_filters = 16 by default; every conv unit is conv -> [norm] -> ReLU):

- encoder stages with 1, 2, 3, 3, 3 plain 3x3x3 conv units at widths n, 2n, 4n, 8n, 16n; between
  stages a stride-2 2x2x2 conv unit doubles the width and halves the size
- Dropout3d(p) on the bottleneck (16n channels, 1/16 resolution)
- decoder: a stride-2 2x2x2 transposed conv unit halves the width and doubles the size, the
  encoder feature of that level is ADDED, then 3, 3, 2, 1 conv units
- Dropout3d(p) -> 1x1x1 conv n -> num_classes (the logits)
- projection head (for FeCL) on the bottleneck after its dropout, the same head as ``unet3d``'s.

The blocks are plain (no residual additions inside stages), as in the reference implementation.
At the defaults the backbone has 9,443,300 parameters (the classic UA-MT V-Net) and the head
264,448 (9,707,714 in all).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from .blocks import (
    NORMALISED_BOTTLENECK_VOXELS,
    ProjectionHead,
    check_spatial_size,
    conv_stage,
    conv_unit,
    init_weights,
    normalization_name,
)

ENCODER_CONVS = (1, 2, 3, 3, 3)
DECODER_CONVS = (3, 3, 2, 1)  # levels 3, 2, 1, 0 (bottom-up)


class VNet(nn.Module):
    """V-Net with additive skips.

    Args:
        in_channels, num_classes: input and output channels.
        n_filters: width of the top level (16 in the literature).
        normalization: 'none' (default, as in UA-MT), 'batch' or 'instance'.
        dropout: Dropout3d probability on the bottleneck and before the output conv.
        projection, proj_hidden, proj_dim: projection head as in ``UNet3D``.

    ``forward(x)``: ``(B, in, X, Y, Z) -> (B, num_classes, X, Y, Z)``, X, Y, Z divisible by 16.
    ``forward_features(x)``: ``(logits, embedding (B, proj_dim, X/8, Y/8, Z/8))``, not normalised.
    """

    size_divisor = 16

    @staticmethod
    def min_bottleneck_voxels(normalization: str = "none", **options) -> int:
        """1 without normalisation (the default: a 16^3 patch works); otherwise see blocks."""
        return 1 if str(normalization).lower() == "none" else NORMALISED_BOTTLENECK_VOXELS

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        n_filters: int = 16,
        normalization: str = "none",
        dropout: float = 0.5,
        projection: bool = True,
        proj_hidden: int = 512,
        proj_dim: int = 256,
    ):
        super().__init__()
        norm = normalization_name(normalization, "vnet")
        widths = [n_filters * 2**k for k in range(5)]
        self.encoder = nn.ModuleList(
            conv_stage(n, in_channels if k == 0 else widths[k], widths[k], norm) for k, n in enumerate(ENCODER_CONVS)
        )
        self.down = nn.ModuleList(conv_unit(widths[k], widths[k + 1], norm, kernel_size=2, stride=2) for k in range(4))
        # up[k] and decoder[k] produce level k (k = 0..3) from level k + 1
        self.up = nn.ModuleList(
            conv_unit(widths[k + 1], widths[k], norm, kernel_size=2, stride=2, transposed=True) for k in range(4)
        )
        self.decoder = nn.ModuleList(conv_stage(DECODER_CONVS[3 - k], widths[k], widths[k], norm) for k in range(4))
        self.bottleneck_dropout = nn.Dropout3d(p=dropout)
        self.head_dropout = nn.Dropout3d(p=dropout)
        self.head = nn.Conv3d(widths[0], num_classes, kernel_size=1)
        self.projection = ProjectionHead(widths[4], proj_hidden, proj_dim) if projection else None
        self.apply(init_weights)

    def _backbone(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, bottleneck features after dropout)."""
        check_spatial_size(x, self.size_divisor, "vnet")
        skips: List[torch.Tensor] = []
        h = x
        for k, stage in enumerate(self.encoder):
            if k > 0:
                h = self.down[k - 1](h)
            h = stage(h)
            skips.append(h)
        bottleneck = self.bottleneck_dropout(skips.pop())
        h = bottleneck
        for k in reversed(range(4)):
            h = self.decoder[k](self.up[k](h) + skips[k])
        logits = self.head(self.head_dropout(h))
        return logits, bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._backbone(x)[0]

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.projection is None:
            raise RuntimeError("vnet was built with projection=False; forward_features needs the head.")
        logits, bottleneck = self._backbone(x)
        return logits, self.projection(bottleneck)
