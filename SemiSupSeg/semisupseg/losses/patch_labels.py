"""Labels, entropies and anchor caps on FeCL's patch grid (one patch = one block^3 voxel block).

Every function returns (B, N) with N = X/b * Y/b * Z/b in C order over the block grid, the order
of ``embedding.flatten(2)`` for an embedding of shape (B, D, X/b, Y/b, Z/b).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_divisible(spatial: tuple[int, ...], block: int) -> None:
    # The embedding grid is exactly input / block; a remainder would misalign labels and vectors.
    if len(spatial) != 3 or any(size % block for size in spatial):
        raise ValueError(f"spatial shape {tuple(spatial)} must be 3-D and divisible by block={block}")


def block_mean(volume: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Mean of each block: volume (B, X, Y, Z) float -> (B, N). Keeps the gradient."""
    _check_divisible(tuple(volume.shape[1:]), block)
    return F.avg_pool3d(volume[:, None], kernel_size=block, stride=block).flatten(1)


def block_labels(voxel_labels: torch.Tensor, block: int = 8, num_classes: int = 2) -> torch.Tensor:
    """Majority class of each block's annotated voxels: voxel_labels (B, X, Y, Z) int in [0, C)
    or -1 (not annotated, partial labels) -> (B, N) int64.

        label_n = argmax_c #{v in block n : y_v = c}   if block n has an annotated voxel, else -1

    Only annotated voxels vote, so a block half annotated as foreground takes the foreground
    label from the voxels someone labelled, and a block with no annotated voxel takes no part
    in FeCL (-1, FeCL's "excluded"). Ties go to the lowest class index (``argmax`` returns the
    first maximum). A fully labelled volume gives the plain majority of every block.
    """
    _check_divisible(tuple(voxel_labels.shape[1:]), block)
    # One pooled class fraction at a time: memory stays at one float volume, not C of them.
    fractions = torch.stack(
        [
            F.avg_pool3d((voxel_labels == c).float()[:, None], kernel_size=block, stride=block)[:, 0]
            for c in range(num_classes)
        ],
        dim=1,
    )  # (B, C, X/b, Y/b, Z/b); summed over c: the block's annotated fraction
    labels = fractions.argmax(dim=1).flatten(1)
    annotated = fractions.sum(dim=1).flatten(1) > 0
    return torch.where(annotated, labels, torch.full_like(labels, -1))


@torch.no_grad()
def teacher_block_labels(teacher_probs: torch.Tensor, block: int = 8, min_confidence: float = 0.8) -> torch.Tensor:
    """Pseudo-labels of unlabelled patches from the teacher (docs/dycon.md, D1).

    teacher_probs (B, C, X, Y, Z) softmax -> (B, N) int64: the majority of the teacher's argmax in
    each block, or -1 where the block's mean max-probability is below ``min_confidence``.
    """
    confidence, prediction = teacher_probs.max(dim=1)
    labels = block_labels(prediction, block, teacher_probs.shape[1])
    confident = block_mean(confidence.float(), block) >= min_confidence
    return torch.where(confident, labels, torch.full_like(labels, -1))


def _balanced_quotas(class_counts: dict[int, int], max_anchors: int) -> dict[int, int]:
    """Split ``max_anchors`` as evenly as possible over classes; a class with fewer patches than
    its share gives all of them and the rest goes to the larger classes (water filling)."""
    quotas = {}
    remaining = max_anchors
    by_size = sorted(class_counts.items(), key=lambda item: item[1])
    for position, (label, count) in enumerate(by_size):
        share = remaining // (len(by_size) - position)
        quotas[label] = min(count, share)
        remaining -= quotas[label]
    return quotas


def cap_anchors(labels: torch.Tensor, max_anchors: int = 2048, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep at most ``max_anchors`` labelled patches per sample, class-balanced, set the rest to -1.

    labels (B, N) int, -1 = excluded -> new (B, N) tensor. In a sample with more than
    ``max_anchors`` patches of label >= 0, each present class gets an equal share (classes with
    fewer patches keep all of theirs and leave the surplus to the others), drawn at random with
    ``generator`` (on any device; ``None`` uses the global CPU RNG). FeCL's cost is quadratic in this
    number, so it bounds memory for large patches.
    """
    capped = labels.clone()
    draw_device = generator.device if generator is not None else torch.device("cpu")
    for b in range(labels.shape[0]):
        row = labels[b]
        present, counts = torch.unique(row[row >= 0], return_counts=True)
        if int(counts.sum()) <= max_anchors:
            continue
        quotas = _balanced_quotas(dict(zip(present.tolist(), counts.tolist())), max_anchors)
        keep = torch.zeros_like(row, dtype=torch.bool)
        for label, quota in quotas.items():
            members = (row == label).nonzero().squeeze(1)
            order = torch.randperm(members.numel(), generator=generator, device=draw_device).to(members.device)
            keep[members[order[:quota]]] = True
        capped[b] = torch.where(keep, row, torch.full_like(row, -1))
    return capped
