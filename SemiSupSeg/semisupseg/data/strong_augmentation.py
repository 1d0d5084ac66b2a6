"""Stronger training augmentation: in-plane rotation and scaling, intensity jitter (config
``augmentation: "strong"``).

The default ("standard") is dycon.md's: random crop, 90-degree in-plane turns and x / y flips.
With a handful of labelled volumes (ACDC's 7 patients) a network also has to meet hearts of
other sizes, angles and contrasts than the few it trained on; "strong" adds, per patch and
independently, the nnU-Net family of transforms with their probabilities and ranges:

- rotation about the slice axis by an angle in [-45, 45] degrees (p 0.2; with the 90-degree
  turns every angle of the plane occurs),
- scaling of the in-plane sampling coordinates by s in [0.7, 1.4] (p 0.2; s < 1 magnifies),
- multiplicative brightness x * b, b in [0.75, 1.25] (p 0.15),
- contrast (x - mean) * c + mean, c in [0.75, 1.25], clipped to the patch's range (p 0.15),
- gamma: the patch scaled to [0, 1], raised to g in [0.7, 1.5], scaled back (p 0.3),
- Gaussian noise of variance in [0, 0.1] (p 0.1).

Spatial transforms stay in the (x, y) plane: a thin-slab volume's slices are 5 mm apart, and
resampling across them would blur structures the network has to tell apart; the slice axis is
never mixed. Samples outside the cropped patch (corners of a rotation, the rim when s > 1) take
the patch's minimum in the image and ``NOT_ANNOTATED`` in the label, so the losses ignore them
instead of learning "background" where the patch never looked.

Written here rather than with MONAI's RandAffine / RandGamma...: those transform one sample at
a time with NumPy random states, while the sampler transforms the whole batch on the training
device with one torch generator (same seed, same batches) and no Python loop over samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..losses.annotation import NOT_ANNOTATED

AUGMENTATIONS = ("standard", "strong")


def check_augmentation(value) -> str:
    """The configured augmentation name, or an InputError that lists the valid ones."""
    if value not in AUGMENTATIONS:
        raise InputError(
            f"augmentation must be one of {', '.join(AUGMENTATIONS)} (got {value!r}).",
            '"standard": crops, 90-degree turns and flips (dycon.md); "strong": also in-plane rotation, '
            "scaling and intensity changes, for small labelled sets.",
        )
    return value


@dataclass
class StrongAugmentation:
    """Random in-plane affine and intensity transforms of a batch, each sample drawn independently.

    ``__call__(images (B, 1, X, Y, Z) float, labels (B, X, Y, Z) int64 or None, generator)``
    returns the transformed pair (same shapes and dtypes). Every random draw comes from
    ``generator`` (CPU; the noise field is drawn there and moved to the images' device), so the
    sampler's one generator state is all a checkpoint needs to resume the same batches.
    """

    p_rotate: float = 0.2
    max_angle_deg: float = 45.0
    p_scale: float = 0.2
    scale_range: Tuple[float, float] = (0.7, 1.4)
    p_brightness: float = 0.15
    brightness_range: Tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: Tuple[float, float] = (0.75, 1.25)
    p_gamma: float = 0.3
    gamma_range: Tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.1
    max_noise_variance: float = 0.1

    def __call__(self, images: torch.Tensor, labels: Optional[torch.Tensor], generator: torch.Generator):
        if images.shape[0] == 0:
            return images, labels
        images, labels = self.spatial(images, labels, generator)
        return self.intensity(images, generator), labels

    # ------------------------------------------------------------------ spatial
    def spatial(self, images, labels, generator):
        n = images.shape[0]
        rotate = _chance(n, self.p_rotate, generator)
        scale = _chance(n, self.p_scale, generator)
        angles = torch.where(rotate, _uniform(n, -self.max_angle_deg, self.max_angle_deg, generator), torch.zeros(n))
        factors = torch.where(scale, _uniform(n, *self.scale_range, generator), torch.ones(n))
        chosen = rotate | scale
        if not bool(chosen.any()):
            return images, labels
        grid = in_plane_grid(torch.deg2rad(angles), factors, images.shape[2:]).to(images.device)
        return _resample_chosen(images, labels, grid, chosen.to(images.device))

    # ---------------------------------------------------------------- intensity
    def intensity(self, images, generator):
        n = images.shape[0]
        shape = (n, 1, 1, 1, 1)

        brightness = self._factor(n, self.p_brightness, self.brightness_range, generator).to(images.device)
        images = images * brightness.view(shape)

        contrast = self._factor(n, self.p_contrast, self.contrast_range, generator).to(images.device).view(shape)
        mean = images.mean(dim=(1, 2, 3, 4), keepdim=True)
        lo, hi = images.amin(dim=(1, 2, 3, 4), keepdim=True), images.amax(dim=(1, 2, 3, 4), keepdim=True)
        images = torch.where(contrast != 1, torch.minimum(torch.maximum((images - mean) * contrast + mean, lo), hi), images)

        gamma = self._factor(n, self.p_gamma, self.gamma_range, generator).to(images.device).view(shape)
        images = torch.where(gamma != 1, apply_gamma(images, gamma), images)

        variance = torch.where(_chance(n, self.p_noise, generator), _uniform(n, 0.0, self.max_noise_variance, generator),
                               torch.zeros(n))
        if bool((variance > 0).any()):
            noise = torch.randn(images.shape, generator=generator).to(images.device)
            images = images + noise * variance.sqrt().to(images.device).view(shape)
        return images

    @staticmethod
    def _factor(n, p, bounds, generator) -> torch.Tensor:
        """Per sample: a factor drawn from ``bounds`` with probability ``p``, else 1."""
        return torch.where(_chance(n, p, generator), _uniform(n, *bounds, generator), torch.ones(n))


def apply_gamma(images: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Each sample scaled to [0, 1] over its own range, raised to its ``gamma`` (B, 1, 1, 1, 1),
    scaled back; a constant sample is returned unchanged."""
    low = images.amin(dim=(1, 2, 3, 4), keepdim=True)
    span = images.amax(dim=(1, 2, 3, 4), keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    unit = ((images - low) / safe).clamp(0.0, 1.0)
    return torch.where(span > 0, unit.pow(gamma) * safe + low, images)


def in_plane_grid(angles: torch.Tensor, factors: torch.Tensor, size) -> torch.Tensor:
    """Sampling grid (B, X, Y, Z, 3) for ``F.grid_sample`` on (B, C, X, Y, Z) tensors: output voxel
    p samples the input at centre + s * R(angle) (p - centre) in voxel units of the (x, y) plane.

    grid_sample's last grid axis is (W, H, D) = (z, y, x) here, in coordinates normalised to
    [-1, 1] per axis; the rotation is written in voxels and converted, so that a non-square
    patch still rotates rigidly.
    """
    sx, sy, sz = (int(s) for s in size)
    n = angles.shape[0]
    cos, sin = torch.cos(angles) * factors, torch.sin(angles) * factors
    theta = torch.zeros(n, 3, 4)
    theta[:, 0, 0] = 1.0  # z (W) unchanged
    # y_in = sin * x + cos * y and x_in = cos * x - sin * y, in voxels; normalised u = 2v / size.
    theta[:, 1, 1], theta[:, 1, 2] = cos, sin * sx / sy
    theta[:, 2, 1], theta[:, 2, 2] = -sin * sy / sx, cos
    return F.affine_grid(theta, (n, 1, sx, sy, sz), align_corners=False)


def _resample_chosen(images, labels, grid, chosen):
    """Images bilinearly, labels by nearest voxel; outside the patch: the image minimum and
    NOT_ANNOTATED; samples not ``chosen`` are returned as they were."""
    low = images.amin(dim=(1, 2, 3, 4), keepdim=True)
    moved = F.grid_sample(images - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low
    images = torch.where(chosen.view(-1, 1, 1, 1, 1), moved, images)
    if labels is not None:
        # Shifted by one so that grid_sample's zero padding reads back as NOT_ANNOTATED (-1).
        shifted = (labels - NOT_ANNOTATED).unsqueeze(1).float()
        moved_labels = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        moved_labels = moved_labels.squeeze(1).round().long() + NOT_ANNOTATED
        labels = torch.where(chosen.view(-1, 1, 1, 1), moved_labels, labels)
    return images, labels


def _chance(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


__all__ = ["AUGMENTATIONS", "StrongAugmentation", "apply_gamma", "check_augmentation", "in_plane_grid"]
