"""labels_and_confidence: the one-pass label map against numpy's argmax and max."""

import numpy as np
import pytest
import torch

from semisupseg.inference.label_maps import labels_and_confidence


@pytest.mark.parametrize("classes", [1, 2, 4])
def test_matches_argmax_and_max(classes):
    rng = np.random.default_rng(classes)
    probs = rng.dirichlet(np.ones(classes), size=(7, 5, 3)).transpose(3, 0, 1, 2).astype(np.float32)
    labels, top = labels_and_confidence(probs)
    assert labels.dtype == np.uint8 and top.dtype == np.float32
    np.testing.assert_array_equal(labels, probs.argmax(0))
    np.testing.assert_array_equal(top, probs.max(0))


def test_ties_go_to_the_lower_class_as_in_argmax():
    probs = np.zeros((3, 2, 1, 1), np.float32)
    probs[:, 0, 0, 0] = [0.4, 0.4, 0.2]   # tie between 0 and 1
    probs[:, 1, 0, 0] = [0.2, 0.4, 0.4]   # tie between 1 and 2
    labels, top = labels_and_confidence(probs)
    assert labels[:, 0, 0].tolist() == [0, 1] == probs.argmax(0)[:, 0, 0].tolist()
    np.testing.assert_allclose(top[:, 0, 0], [0.4, 0.4])


def test_cpu_tensor_input_and_input_left_unchanged():
    probs = torch.softmax(torch.randn(3, 4, 4, 2), dim=0)
    before = probs.clone()
    labels, top = labels_and_confidence(probs)
    np.testing.assert_array_equal(labels, probs.argmax(0).numpy())
    np.testing.assert_allclose(top, probs.max(0).values.numpy())
    assert torch.equal(probs, before)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(C, \.\.\.\)"):
        labels_and_confidence(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        labels_and_confidence(np.zeros((300, 2, 2), np.float32))
