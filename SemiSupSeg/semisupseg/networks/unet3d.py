"""The DyCON 3D U-Net ("unet3d"): instance-normalised encoder-decoder with a projection head.

Architecture (widths w = 16, 32, 64, 128, 256 by default):

- block(a -> b) = 2 x [Conv3d 3x3x3 (bias, pad 1) -> InstanceNorm3d(affine=False) -> ReLU]
- encoder: block(in -> w0), then four times max-pool 2 -> block(w_{k-1} -> w_k); the last block
  ("center", 1/16 resolution) is followed by Dropout(p)
- decoder, k = 3..0: trilinear x2 upsampling (align_corners=False) -> concat [skip_k, up] ->
  block(w_k + w_{k+1} -> w_k); Dropout(p) -> 1x1x1 conv w0 -> num_classes (the logits)
- projection head (FeCL) on the center features after their dropout: see ``ProjectionHead``.

Thin slabs (``networks/anisotropy.py``): ``pool_sizes`` (4 x [p_x, p_y, p_z], each 1 or 2) and
``kernel_sizes`` (5 x [k_x, k_y, k_z], each 1 or 3, encoder stage k and decoder stage k) replace
the isotropic max-pool 2 / 3x3x3; upsampling then mirrors each pooling. The bottleneck is
``X / prod p_x`` etc., the projection head's grid stays X/8, Y/8, Z/8 (sizes must be multiples of
``max(prod p_a, 8)`` per axis: ``size_divisors``). ``resolve_config`` chooses them from the spacing.

At the defaults the backbone has 5,884,050 parameters and the head 264,448 (6,148,498 in all).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .anisotropy import DEFAULT_KERNEL, DEFAULT_POOL, LEVELS, total_pooling
from .blocks import NORMALISED_BOTTLENECK_VOXELS, ProjectionHead, as_widths, check_spatial_size, conv_stage, init_weights

# The projection head's embedding grid (FeCL's blocks, losses.patch_labels) is 1/8 of the patch.
EMBEDDING_STRIDE = 8


class UNet3D(nn.Module):
    """3D U-Net of DyCON.

    Args:
        in_channels: image channels.
        num_classes: output channels (classes including background).
        widths: five channel widths, encoder top to bottom.
        dropout: element-wise dropout probability after the center and before the head.
        projection: build the projection head (needed for ``forward_features``).
        proj_hidden, proj_dim: hidden and output widths of the projection head.
        pool_sizes: 4 x [p_x, p_y, p_z] in {1, 2}, the poolings (None: 2 everywhere).
        kernel_sizes: 5 x [k_x, k_y, k_z] in {1, 3}, each stage's kernel (None: 3 everywhere).

    ``forward(x)``: ``(B, in, X, Y, Z) -> (B, num_classes, X, Y, Z)`` logits, X, Y, Z divisible by
    ``size_divisors(...)`` (16 each by default).
    ``forward_features(x)``: ``(logits, embedding (B, proj_dim, X/8, Y/8, Z/8))``, not normalised.
    """

    size_divisor = 16  # of the default (isotropic) network; ``size_divisors(**options)`` per axis

    @staticmethod
    def size_divisors(**options) -> tuple:
        """Per axis: the total pooling, at least the embedding stride 8 (FeCL's block grid)."""
        pools = _pool_sizes(options.get("pool_sizes"))
        return tuple(max(t, EMBEDDING_STRIDE) for t in total_pooling(pools))

    @staticmethod
    def bottleneck_strides(**options) -> tuple:
        """Per axis: how many input voxels one bottleneck voxel spans (the total pooling)."""
        return tuple(total_pooling(_pool_sizes(options.get("pool_sizes"))))

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
        pool_sizes: Optional[Sequence[Sequence[int]]] = None,
        kernel_sizes: Optional[Sequence[Sequence[int]]] = None,
    ):
        super().__init__()
        w = as_widths(widths, 5, "unet3d")
        self.widths = w
        self.pool_sizes = _pool_sizes(pool_sizes)
        # 3 (not (3, 3, 3)) for isotropic stages: exactly the reference network's modules
        kernels = [3 if k == DEFAULT_KERNEL else tuple(k) for k in _kernel_sizes(kernel_sizes)]
        self.size_divisors = tuple(max(t, EMBEDDING_STRIDE) for t in total_pooling(self.pool_sizes))
        self.encoder = nn.ModuleList([conv_stage(2, in_channels, w[0], "INSTANCE", kernels[0])])
        self.encoder.extend(conv_stage(2, w[k - 1], w[k], "INSTANCE", kernels[k]) for k in range(1, 5))
        # decoder[k] produces width w[k] from [skip (w[k]), upsampled (w[k+1])]; k = 0..3
        self.decoder = nn.ModuleList(conv_stage(2, w[k] + w[k + 1], w[k], "INSTANCE", kernels[k]) for k in range(4))
        self.center_dropout = nn.Dropout(p=dropout)
        self.head_dropout = nn.Dropout(p=dropout)
        self.head = nn.Conv3d(w[0], num_classes, kernel_size=1)
        self.projection = ProjectionHead(w[4], proj_hidden, proj_dim) if projection else None
        self.apply(init_weights)

    def _backbone(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, center features after dropout)."""
        check_spatial_size(x, self.size_divisors, "unet3d")
        skips: List[torch.Tensor] = []
        h = x
        for k, stage in enumerate(self.encoder):
            if k > 0:
                h = F.max_pool3d(h, kernel_size=_scale(self.pool_sizes[k - 1]))
            h = stage(h)
            skips.append(h)
        center = self.center_dropout(skips.pop())
        h = center
        for k in reversed(range(4)):
            scale = _scale(self.pool_sizes[k])
            up = F.interpolate(h, scale_factor=scale if isinstance(scale, int) else tuple(float(p) for p in scale),
                               mode="trilinear", align_corners=False)
            h = self.decoder[k](torch.cat([skips[k], up], dim=1))
        logits = self.head(self.head_dropout(h))
        return logits, center

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._backbone(x)[0]

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.projection is None:
            raise RuntimeError("unet3d was built with projection=False; forward_features needs the head.")
        logits, center = self._backbone(x)
        if all(p == DEFAULT_POOL for p in self.pool_sizes):
            return logits, self.projection(center)  # the reference x2 upsampling
        return logits, self.projection(center, [s // EMBEDDING_STRIDE for s in x.shape[2:]])


def _scale(pool: Sequence[int]):
    """2 for the isotropic pooling (the reference network's exact calls), else the per-axis tuple."""
    return 2 if list(pool) == DEFAULT_POOL else tuple(int(p) for p in pool)


def _triples(value, count: int, allowed: tuple, name: str, default: list) -> List[List[int]]:
    if value is None:
        return [list(default) for _ in range(count)]
    try:
        triples = [[int(v) for v in item] for item in value]
        valid = len(triples) == count and all(len(t) == 3 and set(t) <= set(allowed) for t in triples)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise InputError(
            f"Network 'unet3d': {name} must be {count} triples [x, y, z] of values in {list(allowed)}; got {value!r}.",
            f"Leave {name} out (it is chosen from the voxel spacing) or give e.g. "
            f"{[list(default)] * count}.",
        )
    return triples


def _pool_sizes(value) -> List[List[int]]:
    return _triples(value, LEVELS, (1, 2), "pool_sizes", DEFAULT_POOL)


def _kernel_sizes(value) -> List[List[int]]:
    return _triples(value, LEVELS + 1, (1, 3), "kernel_sizes", DEFAULT_KERNEL)
