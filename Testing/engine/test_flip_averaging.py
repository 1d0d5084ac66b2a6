"""Test-time flips (config ``tta``): the average over the trained flips, checked by hand, through
``predict_cases`` and against the time budget's pass count."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from semisupseg.config import DEFAULTS
from semisupseg.data.io import read_image, to_array
from semisupseg.data.preprocess import PreparedCase
from semisupseg.errors import InputError
from semisupseg.inference.predictor import predict_cases
from semisupseg.inference.flip_averaging import TRAINED_FLIPS, check_tta, flip_averaged, tta_passes

SHAPE = (8, 6, 4)


class _RampNet(nn.Module):
    """Not flip-equivariant on purpose: the class-1 logit ramps from -3 to +1 along x of the window
    (class 0's is 0), so only the last quarter of x is class 1 unflipped."""

    def forward(self, x):
        ramp = torch.linspace(-3.0, 1.0, x.shape[2]).view(1, 1, -1, 1, 1).expand_as(x)
        return torch.cat([torch.zeros_like(x), ramp + 0 * x], dim=1)


def _softmax_of(image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(_RampNet()(image[None, None]), dim=1)[0]


def test_the_flips_are_those_training_uses():
    # data/sampling.py flips x and y at random and never z
    assert TRAINED_FLIPS == ((), (0,), (1,), (0, 1))


def test_flip_average_by_hand():
    image = torch.zeros(SHAPE)
    plain = _softmax_of(image)
    # the net ignores y, so the y flips repeat the plain and x-flipped predictions: the average is
    # the mean of the plain prediction and its mirror along x
    expected = 0.5 * (plain + plain.flip(1))
    assert torch.allclose(flip_averaged(_softmax_of, image), expected, atol=1e-6)
    # and the unflipped prediction handed in is used, not computed again
    calls = []

    def counting(volume):
        calls.append(1)
        return _softmax_of(volume)

    flip_averaged(counting, image, first=plain)
    assert len(calls) == len(TRAINED_FLIPS) - 1


def test_a_flip_equivariant_prediction_is_unchanged():
    image = torch.rand(SHAPE)

    def pointwise(volume):  # depends on each voxel's intensity only: flips commute with it
        return torch.stack([1 - volume, volume])

    assert torch.allclose(flip_averaged(pointwise, image), pointwise(image), atol=1e-6)


def test_unknown_tta_is_refused_with_the_choices():
    assert check_tta("flips") == "flips"
    with pytest.raises(InputError, match="tta must be one of off, flips"):
        check_tta("xyz")


def test_the_time_budget_counts_four_passes_with_flips():
    assert tta_passes({"tta": "off"}) == 1
    assert tta_passes({}) == 1  # runs from before the option
    assert tta_passes({"tta": "flips"}) == 4


class _Events:
    def __init__(self):
        self.emitted = []

    def emit(self, event, **fields):
        self.emitted.append((event, fields))


@pytest.mark.parametrize("tta", ["off", "flips"])
def test_predict_cases_writes_the_flip_averaged_labels(tmp_path, tta):
    reference = sitk.Image(list(SHAPE), sitk.sitkUInt8)
    case = PreparedCase("c", np.zeros(SHAPE, np.float32), None, reference, (1.0, 1.0, 1.0))
    config = copy.deepcopy(DEFAULTS)
    config.update(patch_size=list(SHAPE), sw_overlap=0.25, tta=tta)
    predict_cases([_RampNet()], [case], tmp_path, config, 2, torch.device("cpu"), _Events())
    labels = to_array(read_image(tmp_path / "predictions" / "c.nii.gz"))
    # by hand: p1(x) = sigmoid(r(x)) with r from -3 to 1 over x; the flip average pairs r(x) with
    # r(7 - x), whose sum is -2, so p1 < 0.5 everywhere: no class 1 at all
    ramp = np.linspace(-3.0, 1.0, SHAPE[0])
    p1 = 1 / (1 + np.exp(-ramp))
    if tta == "flips":
        p1 = 0.5 * (p1 + p1[::-1])
    expected = np.broadcast_to((p1 > 0.5)[:, None, None], SHAPE)
    assert labels.any() == (tta == "off")
    np.testing.assert_array_equal(labels, expected)
