"""Normalised entropy and mutual information on hand-made maps; case scores and case ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semisupseg.errors import InputError
from semisupseg.inference.scores import case_score, rank_cases
from semisupseg.inference.uncertainty import mutual_information, normalised_entropy

# ----------------------------------------------------------------------------- entropy


def test_entropy_known_values():
    # Four voxels along a (C=2, 4) map: uniform, one-hot, (0.9, 0.1), (0.1, 0.9).
    # H(0.9, 0.1) = -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.9 * 0.1053605 + 0.1 * 2.3025851
    #             = 0.0948245 + 0.2302585 = 0.3250830 nats;  / ln 2 (0.6931472) = 0.4689956
    probs = torch.tensor([[0.5, 1.0, 0.9, 0.1], [0.5, 0.0, 0.1, 0.9]])
    h = normalised_entropy(probs)
    assert h.dtype == torch.float32 and h.shape == (4,)
    assert h.tolist() == pytest.approx([1.0, 0.0, 0.4689956, 0.4689956], abs=1e-6)
    assert not torch.isnan(h).any()  # 0 ln 0 = 0, no NaN


def test_entropy_three_classes_and_numpy():
    # H(0.5, 0.25, 0.25) = 0.5 ln 2 + 2 * 0.25 ln 4 = 0.3465736 + 0.6931472 = 1.0397208 nats;
    # / ln 3 (1.0986123) = 0.9463946.  Uniform over 3 -> 1.
    probs = np.zeros((3, 2, 1, 1), dtype=np.float64)
    probs[:, 0, 0, 0] = [0.5, 0.25, 0.25]
    probs[:, 1, 0, 0] = 1 / 3
    h = normalised_entropy(probs)
    assert isinstance(h, np.ndarray) and h.dtype == np.float32 and h.shape == (2, 1, 1)
    assert h[:, 0, 0] == pytest.approx([0.9463946, 1.0], abs=1e-6)


def test_entropy_bounds_on_random_maps():
    logits = torch.randn(4, 6, 5, 3) * 5
    h = normalised_entropy(torch.softmax(logits, dim=0))
    assert h.shape == (6, 5, 3) and h.min() >= 0.0 and h.max() <= 1.0


def test_entropy_needs_two_classes():
    with pytest.raises(ValueError):
        normalised_entropy(torch.ones(1, 3))


# ---------------------------------------------------------------------- mutual information


def test_mutual_information_identical_samples_is_zero():
    p = torch.softmax(torch.randn(3, 4, 4, 4), dim=0)
    samples = p.expand(5, *p.shape)
    assert torch.allclose(mutual_information(samples), torch.zeros(4, 4, 4), atol=1e-6)


def test_mutual_information_known_values():
    # voxel 0: samples (1, 0) and (0, 1): H(mean) = ln 2, mean H = 0 -> MI = 1.
    # voxel 1: samples (0.9, 0.1) and (0.1, 0.9): H(mean) = ln 2 -> 1, mean H = 0.4689956
    #          -> MI = 1 - 0.4689956 = 0.5310044.
    samples = np.array(
        [
            [[1.0, 0.9], [0.0, 0.1]],
            [[0.0, 0.1], [1.0, 0.9]],
        ]
    )  # (K=2, C=2, 2 voxels)
    mi = mutual_information(samples)
    assert isinstance(mi, np.ndarray) and mi.dtype == np.float32
    assert mi == pytest.approx([1.0, 0.5310044], abs=1e-6)


def test_mutual_information_is_at_most_entropy():
    samples = torch.softmax(torch.randn(6, 3, 50) * 3, dim=1)
    mi = mutual_information(samples)
    h = normalised_entropy(samples.mean(0))
    assert (mi >= 0).all() and (mi <= h + 1e-6).all()


# ----------------------------------------------------------------------------- case score


def _sphere_case(shape=(24, 24, 24)):
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    labelmap = (sum((g - 8) ** 2 for g in grid) <= 16).astype(np.uint8)  # radius 4 around (8, 8, 8)
    return labelmap


def test_case_score_prefers_uncertainty_near_the_structure():
    labelmap = _sphere_case()
    near = np.zeros(labelmap.shape, dtype=np.float32)
    far = np.zeros(labelmap.shape, dtype=np.float32)
    near[5:12, 5:12, 11:13] = 0.4  # a slab across the sphere's edge (z = 11..12)
    far[15:22, 15:22, 21:23] = 0.4  # the same 98 voxels at 0.4, in far background
    assert near.sum() == pytest.approx(far.sum())
    near_score = case_score(near, labelmap, num_classes=2)
    far_score = case_score(far, labelmap, num_classes=2)
    assert near_score > 0.0
    assert far_score == 0.0  # below 0.5 and away from the foreground: not counted
    # The whole-volume mean, which the score deliberately is not, cannot tell them apart.
    assert near.mean() == pytest.approx(far.mean())


def test_case_score_values():
    labelmap = np.zeros((10, 10, 10), dtype=np.uint8)
    labelmap[4:6, 4:6, 4:6] = 1
    u = np.zeros((10, 10, 10), dtype=np.float32)
    u[4:6, 4:6, 4:6] = 0.3
    # Region = the 2^3 foreground dilated twice with a 3^3 structure = 6^3 = 216 voxels.
    assert case_score(u, labelmap, 2) == pytest.approx(8 * 0.3 / 216)
    assert case_score(u, labelmap, 2, boundary_width=0) == pytest.approx(0.3)


def test_case_score_structure_missed_entirely():
    labelmap = np.zeros((10, 10, 10), dtype=np.uint8)  # the model predicts nothing
    u = np.zeros((10, 10, 10), dtype=np.float32)
    assert case_score(u, labelmap, 2) == 0.0
    u[2:4, 2:4, 2:4] = 0.8
    u[7, 7, 7] = 0.2  # below 0.5 and no foreground: ignored
    assert case_score(u, labelmap, 2) == pytest.approx(0.8)


def test_case_score_checks_labels():
    with pytest.raises(ValueError):
        case_score(np.zeros((2, 2, 2)), np.full((2, 2, 2), 3), num_classes=2)


# ----------------------------------------------------------------------------- ranking


def test_rank_cases_orders():
    scores = {"a": 0.2, "b": 0.9, "c": 0.5, "d": 0.5, "e": float("nan")}
    assert rank_cases(scores) == ["b", "c", "d", "a", "e"]
    shuffled = rank_cases(scores, order="random", seed=1)
    assert sorted(shuffled) == sorted(scores)
    assert shuffled == rank_cases(scores, order="random", seed=1)
    assert any(rank_cases(scores, order="random", seed=s) != shuffled for s in range(2, 8))
    stamps = {"a": 100.0, "b": 50.0, "c": 200.0}
    # never labelled (d, e) first, ties by score (d 0.5 before e NaN), then oldest label first
    assert rank_cases(scores, order="least_recently_labelled", labelled_at=stamps) == ["d", "e", "b", "a", "c"]


def test_rank_cases_unknown_order():
    with pytest.raises(InputError, match="Unknown case order"):
        rank_cases({"a": 1.0}, order="alphabetical")
