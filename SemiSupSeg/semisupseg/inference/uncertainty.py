"""Voxel uncertainty maps shown to the user: normalised entropy and MC-dropout mutual information.

Both maps are divided by ln C so that they lie in [0, 1] whatever the number of classes C
(1 = all classes equally likely). This is the display convention of docs/engine-api.md; the
losses use un-normalised natural-log entropy and do not call this module.

Inputs may be numpy arrays or torch tensors; the result has the same kind (numpy in -> numpy
out, torch in -> torch out on the same device), always float32. ``0 ln 0`` is taken as 0
(``torch.special.xlogy``), so one-hot probabilities give exactly 0 and no NaN.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = ["entropy_nats", "normalised_entropy", "mutual_information"]


def _as_float_tensor(values: ArrayLike) -> tuple[torch.Tensor, bool]:
    """(float32 tensor, whether the input was numpy)."""
    if isinstance(values, torch.Tensor):
        return values.float(), False
    return torch.as_tensor(np.asarray(values), dtype=torch.float32), True


def _back(values: torch.Tensor, was_numpy: bool) -> ArrayLike:
    return values.cpu().numpy() if was_numpy else values


def _log_num_classes(num_classes: int) -> float:
    if num_classes < 2:
        raise ValueError(f"uncertainty needs at least 2 classes along the class axis, got {num_classes}")
    return math.log(num_classes)


def entropy_nats(probs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Shannon entropy in nats along ``dim``: H(p) = -sum_c p_c ln p_c, with 0 ln 0 = 0.

    probs: float tensor of probabilities (any shape); returns the same shape without ``dim``.
    """
    return -torch.special.xlogy(probs, probs).sum(dim=dim)


def normalised_entropy(probs: ArrayLike) -> ArrayLike:
    """Normalised entropy of a probability map: H(p) / ln C, clamped to [0, 1].

    probs: (C, ...) probabilities along axis 0 (e.g. (C, X, Y, Z) softmax).
    Returns (...) float32: 0 for a one-hot voxel, 1 for a uniform one.
    """
    p, was_numpy = _as_float_tensor(probs)
    scale = _log_num_classes(p.shape[0])
    # The clamp removes tiny float excursions (e.g. probabilities summing to 1 + 1e-7).
    return _back((entropy_nats(p, dim=0) / scale).clamp_(0.0, 1.0), was_numpy)


def mutual_information(prob_samples: ArrayLike) -> ArrayLike:
    """Mutual information between the prediction and the model (BALD), normalised by ln C.

    prob_samples: (K, C, ...) K stochastic predictions (e.g. MC-dropout passes).
        MI = H(mean_k p_k) - mean_k H(p_k)
    It is the part of the entropy that comes from disagreement between the samples, i.e. the
    model's own (epistemic) uncertainty. Returns (...) float32 in [0, 1]; identical samples
    give 0.
    """
    p, was_numpy = _as_float_tensor(prob_samples)
    if p.ndim < 2:
        raise ValueError(f"prob_samples must be (K, C, ...), got shape {tuple(p.shape)}")
    scale = _log_num_classes(p.shape[1])
    total = entropy_nats(p.mean(dim=0), dim=0)
    expected = entropy_nats(p, dim=1).mean(dim=0)
    # MI >= 0 by concavity of entropy; clamp float round-off below 0.
    return _back(((total - expected) / scale).clamp_(0.0, 1.0), was_numpy)
