"""Configuration defaults that depend on the device: the sliding-window overlap."""

from __future__ import annotations

import pytest
import torch

from semisupseg.config import DEFAULTS, resolve_config, sliding_window_overlap
from semisupseg.errors import InputError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SHAPES, SPACINGS = [(96, 96, 64)], [(1.0, 1.0, 1.0)]


def test_overlap_default_depends_on_the_device():
    assert DEFAULTS["sw_overlap"] is None
    assert sliding_window_overlap(DEFAULTS, CPU) == 0.25
    assert sliding_window_overlap(DEFAULTS, CUDA) == 0.5  # a torch.device, no GPU needed


def test_resolved_config_stores_the_overlap_and_keeps_an_explicit_one():
    assert resolve_config(DEFAULTS, CPU, SHAPES, SPACINGS)["sw_overlap"] == 0.25
    chosen = {**DEFAULTS, "sw_overlap": 0.5}
    assert resolve_config(chosen, CPU, SHAPES, SPACINGS)["sw_overlap"] == 0.5


@pytest.mark.parametrize("bad", [1.0, -0.1, 3])
def test_overlap_out_of_range_is_an_input_error(bad):
    with pytest.raises(InputError, match="sw_overlap must be in"):
        resolve_config({**DEFAULTS, "sw_overlap": bad}, CPU, SHAPES, SPACINGS)
