"""ResNet-34 encoder + V-Net decoder ("resnet_vnet"): subnet A of the dual-network method.

Architecture (docs/reference/companion-methods.md §1.2; b = base_width = 16 by default):

- stem: one 7x7x7 conv (stride 1, no bias) b channels -> norm -> ReLU, **no max-pool**, so the
  stem output keeps the full resolution (unlike torchvision/MONAI ResNets: stride-2 stem + pool)
- four ResNet stages of 3, 4, 6, 3 basic blocks (ResNet-34) at widths 2b, 4b, 8b, 16b; the first
  block of each stage has stride 2 and a 1x1x1 conv + norm shortcut
- basic block: conv3 (stride s) -> norm -> ReLU -> conv3 -> norm, + shortcut, -> ReLU
- encoder outputs: b @ 1, 2b @ 1/2, 4b @ 1/4, 8b @ 1/8, 16b @ 1/16
- V-Net decoder: at each level a stride-2 2x2x2 transposed conv unit (conv -> norm -> ReLU)
  halves the width, the encoder output of that level is ADDED (additive skips, as in the V-Net),
  then 3, 3, 2, 1 conv units (3x3x3 conv -> norm -> ReLU) at levels 1/8, 1/4, 1/2, 1
- Dropout3d(p) -> 1x1x1 conv b -> num_classes (the logits)
- optional projection head on the bottleneck (the same head as ``unet3d``/``vnet``), so that
  ``forward_features`` follows the engine contract (256-d embeddings on the 1/8 grid)

Features for the dual method's prototypes: ``forward_decoder_features`` returns the last decoder
feature map (b channels, full resolution, *before* the head dropout), the paper's voxel
embedding h. Trained from scratch, one input channel in the paper.

At the defaults (b = 16, BatchNorm) the network has 17,930,354 parameters without the projection
head (the V-Net has 9.4 M): most sit in the 8b and 16b stages.

The encoder is written here rather than taken from MONAI because MONAI's ``resnet34`` has the
stride-2 stem and max-pool that this network must not have.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

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

RESNET34_BLOCKS = (3, 4, 6, 3)
DECODER_CONVS = (3, 3, 2, 1)  # levels 1/8, 1/4, 1/2, 1 (bottom-up), as in the V-Net


def _norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm3d (the paper) or InstanceNorm3d(affine=True) for tiny batches."""
    return nn.BatchNorm3d(channels) if kind == "BATCH" else nn.InstanceNorm3d(channels, affine=True)


class BasicBlock3d(nn.Module):
    """ResNet basic block in 3D: relu(norm(conv(relu(norm(conv_s(x))))) + shortcut(x)).

    ``(B, c_in, X, Y, Z) -> (B, c_out, X/s, Y/s, Z/s)``; the shortcut is a 1x1x1 conv (stride s)
    + norm when the shape changes, the identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False), _norm(norm, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.relu(h + self.shortcut(x))


def resnet_stage(n_blocks: int, in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """``n_blocks`` basic blocks; the first one halves the size and changes the width."""
    blocks = [BasicBlock3d(in_channels, out_channels, 2, norm)]
    blocks += [BasicBlock3d(out_channels, out_channels, 1, norm) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNetVNet(nn.Module):
    """3D ResNet-34 encoder (stride-1 stem, no pool) with an additive-skip V-Net decoder.

    Args:
        in_channels, num_classes: input and output channels.
        base_width: stem width b; the stages have 2b, 4b, 8b, 16b channels (16 -> 16..256, the
            V-Net's 16 filters, which keeps the decoder identical to the V-Net's).
        blocks: basic blocks per stage, (3, 4, 6, 3) for ResNet-34.
        normalization: 'batch' (default, the paper) or 'instance'.
        dropout: Dropout3d probability before the 1x1x1 output conv (0.5 in the paper).
        projection, proj_hidden, proj_dim: projection head as in ``UNet3D`` (for
            ``forward_features``); the dual method builds the network without it.

    ``forward(x)``: ``(B, in, X, Y, Z) -> (B, num_classes, X, Y, Z)``, X, Y, Z divisible by 16.
    ``forward_decoder_features(x)``: ``(logits, h (B, b, X, Y, Z))``, h before the head dropout.
    ``forward_features(x)``: ``(logits, embedding (B, proj_dim, X/8, Y/8, Z/8))``, not normalised.
    """

    size_divisor = 16

    @staticmethod
    def min_bottleneck_voxels(**options) -> int:
        """Always normalised (batch or instance), down to the 1/16 stage: see blocks."""
        return NORMALISED_BOTTLENECK_VOXELS

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_width: int = 16,
        blocks: Sequence[int] = RESNET34_BLOCKS,
        normalization: str = "batch",
        dropout: float = 0.5,
        projection: bool = True,
        proj_hidden: int = 512,
        proj_dim: int = 256,
    ):
        super().__init__()
        norm = normalization_name(normalization, "resnet_vnet")
        if norm is None:
            raise ValueError("resnet_vnet needs a normalisation ('batch' or 'instance'): residual blocks assume one")
        blocks = tuple(int(n) for n in blocks)
        if len(blocks) != 4 or min(blocks) < 1 or base_width < 1:
            raise ValueError(
                f"resnet_vnet needs 4 positive stage depths and base_width >= 1, got {blocks}, {base_width}"
            )
        widths = [base_width * 2**k for k in range(5)]
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], 7, padding=3, bias=False), _norm(norm, widths[0]), nn.ReLU()
        )
        self.stages = nn.ModuleList(resnet_stage(n, widths[k], widths[k + 1], norm) for k, n in enumerate(blocks))
        # up[k] and decoder[k] produce level k (k = 0..3) from level k + 1, as in networks/vnet.py
        self.up = nn.ModuleList(
            conv_unit(widths[k + 1], widths[k], norm, kernel_size=2, stride=2, transposed=True) for k in range(4)
        )
        self.decoder = nn.ModuleList(conv_stage(DECODER_CONVS[3 - k], widths[k], widths[k], norm) for k in range(4))
        self.head_dropout = nn.Dropout3d(p=dropout)
        self.head = nn.Conv3d(widths[0], num_classes, kernel_size=1)
        self.projection = ProjectionHead(widths[4], proj_hidden, proj_dim) if projection else None
        self.apply(init_weights)

    def _backbone(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (logits, last decoder features before dropout, bottleneck features)."""
        check_spatial_size(x, self.size_divisor, "resnet_vnet")
        skips: List[torch.Tensor] = [self.stem(x)]
        for stage in self.stages:
            skips.append(stage(skips[-1]))
        bottleneck = skips.pop()
        h = bottleneck
        for k in reversed(range(4)):
            h = self.decoder[k](self.up[k](h) + skips[k])
        logits = self.head(self.head_dropout(h))
        return logits, h, bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._backbone(x)[0]

    def forward_decoder_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, decoder_features, _ = self._backbone(x)
        return logits, decoder_features

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.projection is None:
            raise RuntimeError("resnet_vnet was built with projection=False; forward_features needs the head.")
        logits, _, bottleneck = self._backbone(x)
        return logits, self.projection(bottleneck)
