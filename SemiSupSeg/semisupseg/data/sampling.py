"""Training patches: device-resident volumes, foreground-biased crops, batched augmentation.

Every prepared volume is uploaded once to the training device (when it fits), so a training
step only slices tensors that are already there: no per-step disk reads, no host-to-device
copies of whole volumes, no data-loader workers. The augmentation of dycon.md "Training step"
(random crop, foreground-biased for labelled patches, random 90-degree in-plane rotation when
the in-plane patch is square, random flips of x and y) runs on the batch, on the device.
Foreground-biased crops are class-aware: with several foreground classes, a class is drawn first
(uniformly among those the case holds), then one of its voxels, so every class is centred on.

All randomness comes from one CPU ``torch.Generator`` seeded with ``seed`` (plus a device
generator for the optional noise), so the same seed and the same cases give the same batches.

Partial labels. A labelled case whose label holds "not annotated" voxels (255 in
``PreparedCase.label``) is *partially labelled*:
- its labelled patches are centred on a random annotated voxel (foreground-centred ones on a
  random annotated foreground voxel), never uniform, so every labelled patch holds at least one
  annotated voxel; fully labelled cases are sampled exactly as before (same random stream);
- ``Batch.y_l`` carries its unannotated voxels as ``losses.NOT_ANNOTATED`` (-1);
- it also joins the unlabelled stream (sharing the image tensor, no extra memory), so the
  semi-supervised terms see its unannotated voxels as unlabelled data; only when the sampler
  has an unlabelled stream (``unlabelled_stream=True``, the trainer's setting for every method
  that uses unlabelled data);
- if none of its voxels is annotated on the training grid (a tiny region lost to resampling),
  it is left out of the labelled stream with a warning (and still feeds the unlabelled one).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..losses.annotation import NOT_ANNOTATED
from ..methods.base import Batch
from .patch_size import PatchSize
from .preprocess import NOT_ANNOTATED_STORED, PreparedCase
from .strong_augmentation import StrongAugmentation

logger = logging.getLogger(__name__)

GPU_MEMORY_SHARE = 0.5  # volumes may take at most this share of the free GPU memory


@dataclass
class _Volume:
    """One case as the sampler holds it: padded to at least the patch size."""

    id: str
    image: torch.Tensor  # float32 (X, Y, Z) on the storage device
    label: Optional[torch.Tensor]  # uint8 (X, Y, Z) on the storage device, 255 = not annotated
    foreground: np.ndarray  # int64 C-order flat indices of annotated label > 0 (empty when unlabelled)
    # {class: int64 flat indices of its annotated voxels}, foreground classes present in the volume
    # (several only for multi-class labels; one class shares ``foreground``'s array)
    class_voxels: Optional[dict] = None
    # int64 flat indices of the annotated voxels of a partially labelled volume; None when every
    # voxel is annotated (fully labelled) or none is used (unlabelled stream).
    annotated: Optional[np.ndarray] = None

    @property
    def partial(self) -> bool:
        return self.annotated is not None

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.image.shape)


class PatchSampler:
    """Draws augmented batches of labelled and unlabelled patches.

    Args:
        labelled: cases with labels (at least one); drawn with replacement, so one is enough.
        unlabelled: cases used without labels (may be empty).
        patch_size: (x, y, z) voxels. Volumes smaller than it are zero-padded once, here.
        device: where batches are returned (and volumes kept, if they fit).
        seed: seeds every random choice.
        fg_fraction: share of labelled patches centred on a random foreground voxel
            (the others are uniform random crops). 0.5 as in dycon.md; 1 makes every labelled
            patch contain foreground (for cases that have any).
        class_aware: a foreground-centred patch first draws one of the foreground classes present
            in the chosen case (uniformly), then one of that class's voxels, so a small class (the
            thin myocardium, a lesion beside an organ) is centred as often as a large one instead
            of in proportion to its voxel count. With one foreground class nothing changes (no
            extra random draw: the same batches as without it).
        rotate90: random k * 90 degree rotation in the (x, y) plane (only when patch x == y).
        flip: random flip of x and of y, each with p = 0.5.
        noise: standard deviation of Gaussian noise added to all image patches (None: off).
        unlabelled_stream: whether partially labelled cases of ``labelled`` also join the
            unlabelled stream (the trainer passes the method's ``uses_unlabelled``, as it passes
            an empty ``unlabelled`` list to methods that use no unlabelled data).
        strong: also in-plane rotation and scaling and intensity jitter after the turns and
            flips (``strong_augmentation.StrongAugmentation``; config ``augmentation: "strong"``).
            Off: the batches are exactly those of a sampler without the option.

    ``sample(n_l, n_u)`` returns ``Batch(x_l (n_l, 1, X, Y, Z) float32, y_l (n_l, X, Y, Z)
    int64 with -1 = not annotated, x_u (n_u, 1, X, Y, Z) float32)`` on ``device``; image and
    label share one transform. ``labelled_case_ids``, ``unlabelled_case_ids`` and
    ``partially_labelled_case_ids`` say which cases each stream draws from.
    """

    def __init__(
        self,
        labelled: Sequence[PreparedCase],
        unlabelled: Sequence[PreparedCase],
        patch_size: Sequence[int],
        device: torch.device | str,
        seed: int,
        fg_fraction: float = 0.5,
        rotate90: bool = True,
        flip: bool = True,
        noise: Optional[float] = None,
        unlabelled_stream: bool = True,
        class_aware: bool = True,
        strong: bool = False,
    ):
        if len(patch_size) != 3 or min(int(p) for p in patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers, got {patch_size}")
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
        self.patch_size: PatchSize = tuple(int(p) for p in patch_size)
        self.device = torch.device(device)
        self.fg_fraction = float(fg_fraction)
        self.rotate90 = bool(rotate90)
        self.flip = bool(flip)
        self.noise = float(noise) if noise else None
        self.unlabelled_stream = bool(unlabelled_stream)
        self.class_aware = bool(class_aware)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._noise_generator = (
            torch.Generator(device=self.device).manual_seed(int(seed) + 1) if self.noise else None
        )
        # Draws from ``generator`` like the crops, so a checkpoint's sampler state resumes it too.
        self.strong = StrongAugmentation() if strong else None
        self._labelled: List[_Volume] = []
        self._unlabelled: List[_Volume] = []
        self.storage_device = self.device
        self.replace_cases(labelled, unlabelled)

    # ------------------------------------------------------------------ cases
    def replace_cases(self, labelled: Sequence[PreparedCase], unlabelled: Sequence[PreparedCase]) -> None:
        """Swap in a new set of cases (the trainer re-read the workspace); the random stream
        continues where it was."""
        if not labelled:
            raise InputError(
                "No labelled case to train on.",
                "Label at least one case (segment it and mark it as labelled) before training.",
            )
        missing = [case.id for case in labelled if case.label is None]
        if missing:
            raise ValueError(f"labelled cases without a label array: {missing}")
        self._labelled, self._unlabelled = [], []  # release the old tensors before measuring memory
        self.storage_device = self._choose_storage(list(labelled) + list(unlabelled))
        uploaded = [self._upload(case, with_label=True) for case in labelled]
        partial = [volume for volume in uploaded if volume.partial]
        self._labelled = self._drawable(uploaded)
        self._unlabelled = [self._upload(case, with_label=False) for case in unlabelled]
        if self.unlabelled_stream:
            # The same image tensor, without its label: no second copy on the device.
            self._unlabelled += [_Volume(v.id, v.image, None, np.empty(0, dtype=np.int64)) for v in partial]

    @staticmethod
    def _drawable(volumes: List[_Volume]) -> List[_Volume]:
        """Labelled volumes with at least one annotated voxel; the others are left out with a
        warning (their annotation vanished on the training grid), or an InputError if none is left."""
        empty = [v.id for v in volumes if v.partial and v.annotated.size == 0]
        if empty:
            logger.warning(
                "No annotated voxel left on the training grid in case(s) %s (the annotated regions "
                "are smaller than a training voxel): they train as unlabelled cases.", ", ".join(empty),
            )
        kept = [v for v in volumes if v.id not in empty]
        if not kept:
            raise InputError(
                f"No annotated voxel in any labelled case on the training grid ({', '.join(empty)}).",
                "Annotate larger regions, or train at a finer target_spacing.",
            )
        return kept

    @property
    def num_labelled(self) -> int:
        return len(self._labelled)

    @property
    def num_unlabelled(self) -> int:
        return len(self._unlabelled)

    @property
    def labelled_case_ids(self) -> List[str]:
        """Ids of the cases labelled patches are drawn from (fully and partially labelled)."""
        return [v.id for v in self._labelled]

    @property
    def unlabelled_case_ids(self) -> List[str]:
        """Ids of the cases unlabelled patches are drawn from (unlabelled, then partially labelled)."""
        return [v.id for v in self._unlabelled]

    @property
    def partially_labelled_case_ids(self) -> List[str]:
        """Ids of the labelled-stream cases that have "not annotated" voxels."""
        return [v.id for v in self._labelled if v.partial]

    @property
    def resident_bytes(self) -> int:
        """Bytes held by the volumes (on ``storage_device``); a shared image tensor counts once."""
        volumes = self._labelled + self._unlabelled
        images = {id(v.image): v.image.nelement() * 4 for v in volumes}
        return sum(images.values()) + sum(v.label.nelement() for v in volumes if v.label is not None)

    def _choose_storage(self, cases: Sequence[PreparedCase]) -> torch.device:
        """The training device when the padded volumes take at most half its free memory, else CPU."""
        if self.device.type != "cuda":
            return self.device
        needed = sum(
            _padded_voxels(case.image.shape, self.patch_size) * (4 + (1 if case.label is not None else 0))
            for case in cases
        )
        torch.cuda.empty_cache()  # the previous volumes' memory is cached, not free, until emptied
        free, _ = torch.cuda.mem_get_info(self.device)
        if needed > GPU_MEMORY_SHARE * free:
            logger.warning(
                "Volumes need %.2f GiB, more than %.0f%% of the %.2f GiB free on %s: keeping them "
                "in CPU memory and copying each batch (slower).",
                needed / 2**30, 100 * GPU_MEMORY_SHARE, free / 2**30, self.device,
            )
            return torch.device("cpu")
        return self.device

    def _upload(self, case: PreparedCase, with_label: bool) -> _Volume:
        image = np.asarray(case.image, dtype=np.float32)
        # Pad with the image minimum: "outside" is the darkest value after normalisation
        # (air in CT, background in MR), not the mean that 0 would be.
        image = _pad_to(image, self.patch_size, float(image.min()) if image.size else 0.0)
        label, foreground, annotated = None, np.empty(0, dtype=np.int64), None
        if with_label:
            label_arr = np.asarray(case.label, dtype=np.uint8)
            partial = bool(np.any(label_arr == NOT_ANNOTATED_STORED))
            # Padding of a partial volume is "not annotated" too, so a patch drawn around an
            # annotated voxel never counts padding as labelled background.
            label_arr = _pad_to(label_arr, self.patch_size, NOT_ANNOTATED_STORED if partial else 0)
            # Indices stay on the CPU: crop starts must be Python ints for slicing, and reading
            # them from GPU memory would synchronise the device once per patch.
            if partial:
                is_annotated = label_arr != NOT_ANNOTATED_STORED
                annotated = np.flatnonzero(is_annotated).astype(np.int64)
                foreground = np.flatnonzero(is_annotated & (label_arr > 0)).astype(np.int64)
            else:
                foreground = np.flatnonzero(label_arr).astype(np.int64)
            label = torch.from_numpy(np.ascontiguousarray(label_arr)).to(self.storage_device)
        return _Volume(
            id=case.id,
            image=torch.from_numpy(np.ascontiguousarray(image)).to(self.storage_device),
            label=label,
            foreground=foreground,
            annotated=annotated,
            class_voxels=_class_voxels(label_arr, foreground) if with_label else None,
        )

    # --------------------------------------------------------------- sampling
    def sample(self, n_labelled: int, n_unlabelled: int) -> Batch:
        """One augmented batch: ``n_labelled`` labelled and ``n_unlabelled`` unlabelled patches."""
        x_l, y_l = self._labelled_patches(int(n_labelled))
        x_u = self._unlabelled_patches(int(n_unlabelled))
        x_l, y_l = self._augment(x_l, y_l)
        x_u, _ = self._augment(x_u, None)
        if self.strong is not None:
            x_l, y_l = self.strong(x_l, y_l, self.generator)
            x_u, _ = self.strong(x_u, None, self.generator)
        if self.noise:
            x_l, x_u = self._add_noise(x_l), self._add_noise(x_u)
        return Batch(x_l=x_l, y_l=y_l, x_u=x_u)

    def _labelled_patches(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        # floor(f * n) patches are foreground-centred, plus one more with probability equal to
        # the fractional part: exact expectation f * n, and a batch of 1 still gets some.
        whole = math.floor(self.fg_fraction * n)
        extra = self._uniform() < (self.fg_fraction * n - whole)
        n_foreground = whole + int(extra)
        picks = self._randint(len(self._labelled), n)
        starts = [
            self._start(self._labelled[c], foreground=i < n_foreground) for i, c in enumerate(picks)
        ]
        images = [_crop(self._labelled[c].image, s, self.patch_size) for c, s in zip(picks, starts)]
        labels = self._batch([_crop(self._labelled[c].label, s, self.patch_size) for c, s in zip(picks, starts)], torch.int64)
        labels = torch.where(labels == NOT_ANNOTATED_STORED, torch.full_like(labels, NOT_ANNOTATED), labels)
        return self._batch(images, torch.float32).unsqueeze(1), labels

    def _unlabelled_patches(self, n: int) -> torch.Tensor:
        if not self._unlabelled or n == 0:
            return torch.zeros((0, 1) + self.patch_size, dtype=torch.float32, device=self.device)
        picks = self._randint(len(self._unlabelled), n)
        images = [
            _crop(self._unlabelled[c].image, self._start(self._unlabelled[c], False), self.patch_size)
            for c in picks
        ]
        return self._batch(images, torch.float32).unsqueeze(1)

    def _start(self, volume: _Volume, foreground: bool) -> Tuple[int, int, int]:
        """Crop corner: around a random (annotated) foreground voxel when ``foreground``; else
        around a random annotated voxel of a partially labelled volume; else uniform."""
        limits = [size - patch for size, patch in zip(volume.shape, self.patch_size)]
        if foreground and volume.foreground.size:
            return self._start_around(volume, self._foreground_choices(volume), limits)
        if volume.partial:
            return self._start_around(volume, volume.annotated, limits)
        return tuple(self._randint(limit + 1, 1)[0] for limit in limits)

    def _foreground_choices(self, volume: _Volume) -> np.ndarray:
        """The voxels a foreground-centred patch is drawn from: those of one class drawn uniformly
        among the volume's foreground classes (class-aware), or every foreground voxel."""
        classes = volume.class_voxels
        if not self.class_aware or not classes or len(classes) < 2:
            return volume.foreground
        present = sorted(classes)
        return classes[present[self._randint(len(present), 1)[0]]]

    def _start_around(self, volume: _Volume, flat_indices: np.ndarray, limits: List[int]) -> Tuple[int, int, int]:
        """Crop corner of a patch holding one of ``flat_indices`` (chosen at random)."""
        flat = int(flat_indices[self._randint(flat_indices.size, 1)[0]])
        centre = np.unravel_index(flat, volume.shape)
        # Clamping keeps the centre voxel inside: start <= centre < start + patch.
        return tuple(min(max(int(c) - p // 2, 0), limit) for c, p, limit in zip(centre, self.patch_size, limits))

    def _batch(self, patches: List[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        if not patches:
            return torch.zeros((0,) + self.patch_size, dtype=dtype, device=self.device)
        return torch.stack(patches).to(self.device, non_blocking=True).to(dtype)

    # ----------------------------------------------------------- augmentation
    def _augment(
        self, images: torch.Tensor, labels: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Same random rotation/flips for a sample's image (B, 1, X, Y, Z) and label (B, X, Y, Z).

        Samples sharing a transform are processed together: at most 3 rotation and 2 flip
        tensor operations per batch whatever its size, no Python loop over samples.
        """
        n = images.shape[0]
        if n == 0:
            return images, labels
        if self.rotate90 and self.patch_size[0] == self.patch_size[1]:
            turns = torch.randint(4, (n,), generator=self.generator)
            for k in (1, 2, 3):
                images, labels = self._apply(images, labels, turns == k, lambda t, d: torch.rot90(t, k, (d, d + 1)))
        if self.flip:
            for axis in (0, 1):
                chosen = torch.rand(n, generator=self.generator) < 0.5
                images, labels = self._apply(images, labels, chosen, lambda t, d: torch.flip(t, (d + axis,)))
        return images, labels

    @staticmethod
    def _apply(images, labels, chosen: torch.Tensor, op):
        """``op(tensor, first_spatial_dim)`` on the chosen samples of images and labels.

        ``torch.where`` over the whole batch instead of indexing the chosen samples: no
        host-device synchronisation (a boolean index would need the count on the host), and
        the extra work is a few patch-sized copies.
        """
        if not bool(chosen.any()):  # CPU tensor: no device synchronisation
            return images, labels
        mask = chosen.to(images.device)
        images = torch.where(mask.view(-1, 1, 1, 1, 1), op(images, 2), images)
        if labels is not None:
            labels = torch.where(mask.view(-1, 1, 1, 1), op(labels, 1), labels)
        return images, labels

    def _add_noise(self, images: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(images.shape, generator=self._noise_generator, device=images.device)
        return images + self.noise * noise

    # ----------------------------------------------------------------- random
    def _randint(self, high: int, n: int) -> List[int]:
        return torch.randint(high, (n,), generator=self.generator).tolist()

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))


def _class_voxels(label: np.ndarray, foreground: np.ndarray) -> dict:
    """{class: flat indices} of the foreground voxels (``foreground``: flat indices of annotated
    label > 0), for the classes present; one class reuses ``foreground`` (no copy)."""
    values = label.ravel()[foreground]
    present = np.unique(values)
    if present.size <= 1:
        return {int(c): foreground for c in present}
    order = np.argsort(values, kind="stable")
    bounds = np.searchsorted(values[order], present, side="left").tolist() + [order.size]
    return {int(c): foreground[order[bounds[i]:bounds[i + 1]]] for i, c in enumerate(present)}


def _padded_voxels(shape: Sequence[int], patch: Sequence[int]) -> int:
    return int(np.prod([max(s, p) for s, p in zip(shape, patch)]))


def _pad_to(arr: np.ndarray, patch: Sequence[int], value: float) -> np.ndarray:
    """Pad each axis shorter than the patch, centring the volume (extra voxel at the end)."""
    widths = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(arr.shape, patch)]
    if not any(before or after for before, after in widths):
        return arr
    return np.pad(arr, widths, mode="constant", constant_values=value)


def _crop(volume: torch.Tensor, start: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
    return volume[tuple(slice(s, s + p) for s, p in zip(start, patch))]
