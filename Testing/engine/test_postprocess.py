"""Post-processing of the predicted label map (config ``postprocess``): the largest connected group
of foreground structures stays whole, a far blob goes; checked by hand, through ``predict_cases``
and against the config check."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from semisupseg.config import DEFAULTS, resolve_config
from semisupseg.data.io import read_image, to_array
from semisupseg.data.preprocess import PreparedCase
from semisupseg.errors import InputError
from semisupseg.evaluation.metrics import largest_connected_component
from semisupseg.inference.postprocess import check_postprocess, postprocessed, removed_by_postprocess
from semisupseg.inference.predictor import predict_cases


def heart_with_a_far_blob() -> tuple[np.ndarray, np.ndarray]:
    """(label map, what largest_foreground must leave) on a (20, 12, 6) grid.

    A thin-slab "heart": class 2 (myocardium) a slab at x 4-6, class 1 (RV) left of it, class 3
    (LV) right of it in two pieces that touch the myocardium but not each other, one more LV
    voxel joined only by a corner (26-connectivity), and a far class-3 blob (x 16-18) that touches
    nothing.
    """
    labels = np.zeros((20, 12, 6), np.uint8)
    labels[4:7, 2:10, 1:5] = 2
    labels[1:4, 3:9, 1:5] = 1
    labels[7:10, 2:5, 1:5] = 3
    labels[7:10, 7:10, 1:5] = 3
    labels[10, 10, 5] = 3  # touches labels[9, 9, 4] by a corner only
    kept = labels.copy()
    labels[16:19, 4:8, 2:4] = 3
    return labels, kept


def test_largest_foreground_removes_the_far_blob_and_keeps_split_classes():
    labels, kept = heart_with_a_far_blob()
    np.testing.assert_array_equal(postprocessed(labels, "largest_foreground"), kept)
    assert removed_by_postprocess(labels, "largest_foreground").sum() == 3 * 4 * 2
    # keeping each class's largest component instead would drop an LV piece of the heart itself
    per_class_lv = largest_connected_component(labels == 3)
    assert per_class_lv.sum() < (kept == 3).sum()


def test_off_and_clean_maps_are_unchanged_and_the_input_is_not_modified():
    labels, kept = heart_with_a_far_blob()
    before = labels.copy()
    np.testing.assert_array_equal(postprocessed(labels, "off"), labels)
    postprocessed(labels, "largest_foreground")
    np.testing.assert_array_equal(labels, before)
    np.testing.assert_array_equal(postprocessed(kept, "largest_foreground"), kept)
    empty = np.zeros((4, 4, 4), np.uint8)
    np.testing.assert_array_equal(postprocessed(empty, "largest_foreground"), empty)


def test_unknown_postprocess_is_refused_with_the_choices():
    assert check_postprocess("largest_foreground") == "largest_foreground"
    with pytest.raises(InputError, match="postprocess must be one of off, largest_foreground"):
        check_postprocess("lcc")
    with pytest.raises(InputError, match="postprocess must be one of"):
        resolve_config({**DEFAULTS, "postprocess": "largest"}, torch.device("cpu"), [(32, 32, 16)], [(1.0, 1.0, 1.0)])
    assert DEFAULTS["postprocess"] == "off"  # D14: an option, off by default


class _IntensityNet(nn.Module):
    """Pointwise: class-1 logit 8 (x - 0.5), so bright voxels are class 1 with p = sigmoid(4) there."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 8.0 * (x - 0.5)], dim=1)


class _Events:
    def emit(self, event, **fields):
        pass


@pytest.mark.parametrize("mode", ["off", "largest_foreground"])
def test_predict_cases_writes_the_postprocessed_labels(tmp_path, mode):
    shape = (16, 12, 8)
    image = np.zeros(shape, np.float32)
    image[2:8, 2:8, 2:6] = 1.0  # the structure
    image[12:14, 9:11, 3:5] = 1.0  # a small bright blob apart from it
    reference = sitk.Image(list(shape), sitk.sitkUInt8)
    case = PreparedCase("c", image, None, reference, (1.0, 1.0, 1.0))
    config = copy.deepcopy(DEFAULTS)
    config.update(patch_size=list(shape), sw_overlap=0.25, postprocess=mode)
    predict_cases([_IntensityNet()], [case], tmp_path, config, 2, torch.device("cpu"), _Events())
    labels = to_array(read_image(tmp_path / "predictions" / "c.nii.gz"))
    expected = (image > 0.5).astype(np.uint8)
    if mode == "largest_foreground":
        expected[12:14, 9:11, 3:5] = 0
    np.testing.assert_array_equal(labels, expected)
