"""Candidate voxel maps of "this prediction may be wrong", each computed from a trained method.

On real LA data the teacher's entropy traces the predicted outline whether it is right or wrong,
and confident errors (a neighbouring vessel taken for atrium) stay cold. These are the
alternatives measured against it (Testing/benchmarks/bench_uncertainty_errors.py); every map
is in [0, 1] on the grid of the image given, shape (X, Y, Z):

- ``entropy``: H(p) / ln C of the inference networks' mean softmax p (the map shown today).
- ``mutual_information``: MC dropout, K stochastic passes p_k of each inference network:
  [H(mean_k p_k) - mean_k H(p_k)] / ln C (the part of the entropy that is model disagreement).
- ``disagreement``: two networks trained together, a and b (a mean teacher's student and EMA
  teacher; the dual method's two students): total variation 0.5 * sum_c |p_a,c - p_b,c|.
- ``flip_tta``: the same mutual-information formula over test-time flips: the inference
  networks on the image flipped along none, x, y and x+y (the flips training used:
  flip_averaging.TRAINED_FLIPS), each prediction flipped back. Until 2026-11-28 the set was
  none, x, y, z; a z flip is an image training never showed (on ACDC it wrecks the prediction).

``error_probability(probs)`` = 1 - max_c p_c: for a calibrated model the chance the predicted
class is wrong; regions.py sums it to rank regions by expected errors.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .flip_averaging import TRAINED_FLIPS, flipped_back
from .uncertainty import mutual_information, normalised_entropy

__all__ = ["SOURCES", "disagreement_pair", "total_variation", "flipped_probabilities", "error_probability", "source_map"]

SOURCES = ("entropy", "mutual_information", "disagreement", "flip_tta")
FLIP_AXES = TRAINED_FLIPS  # axes of the (X, Y, Z) volume

# predict(networks, image (X, Y, Z), mc_samples) -> (probs (C, X, Y, Z), mutual_info (X, Y, Z) or None)
PredictFn = Callable[[Sequence[torch.nn.Module], torch.Tensor, int], tuple]


def disagreement_pair(method) -> Optional[tuple]:
    """The two networks a method trains side by side (student, teacher) or (net_a, net_b); None if it has one."""
    for first, second in (("student", "teacher"), ("net_a", "net_b")):
        a, b = getattr(method, first, None), getattr(method, second, None)
        if isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module):
            return a, b
    return None


def total_variation(p_a: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
    """0.5 * sum_c |p_a - p_b| over axis 0: (C, ...) x 2 -> (...) in [0, 1]."""
    return (0.5 * (p_a.float() - p_b.float()).abs().sum(dim=0)).clamp_(0.0, 1.0)


def error_probability(probs: torch.Tensor) -> torch.Tensor:
    """1 - max_c p_c: (C, ...) -> (...) in [0, 1 - 1/C]."""
    return 1.0 - probs.float().max(dim=0).values


def flipped_probabilities(networks, image: torch.Tensor, predict: PredictFn) -> torch.Tensor:
    """(F, C, X, Y, Z): one prediction per entry of FLIP_AXES, each flipped back to the image's orientation."""
    return torch.stack([flipped_back(lambda volume: predict(networks, volume, 0)[0], image, axes)
                        for axes in FLIP_AXES])


def source_map(source: str, method, image: torch.Tensor, predict: PredictFn, mc_samples: int = 8) -> tuple:
    """(map (X, Y, Z) in [0, 1], probs (C, X, Y, Z)) for ``source``; probs are what the label map comes from.

    ``flip_tta`` also returns the flip-averaged probabilities (test-time augmentation improves
    the prediction a little); every other source returns the inference networks' plain mean.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown uncertainty source '{source}'; expected one of {SOURCES}")
    networks = method.inference_networks()
    if source == "flip_tta":
        samples = flipped_probabilities(networks, image, predict)
        return mutual_information(samples), samples.mean(dim=0)
    if source == "mutual_information":
        probs, mi = predict(networks, image, int(mc_samples))
        return mi, probs
    probs, _ = predict(networks, image, 0)
    if source == "entropy":
        return normalised_entropy(probs), probs
    pair = disagreement_pair(method)
    if pair is None:
        raise ValueError(f"method '{method.name}' trains one network: 'disagreement' needs two")
    p_a, _ = predict([pair[0]], image, 0)
    p_b, _ = predict([pair[1]], image, 0)
    return total_variation(p_a, p_b), probs
