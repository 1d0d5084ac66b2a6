"""The "strong" augmentation: in-plane affine and intensity transforms, checked against
independent operations (torch.rot90, nearest-neighbour zoom by index arithmetic, the gamma
formula), and its place in the sampler and the configuration."""

import math

import numpy as np
import pytest
import torch

from semisupseg.config import DEFAULTS, resolve_config
from semisupseg.data.preprocess import PreparedCase
from semisupseg.data.sampling import PatchSampler
from semisupseg.data.strong_augmentation import StrongAugmentation, apply_gamma, check_augmentation, in_plane_grid
from semisupseg.data import strong_augmentation as strong_module
from semisupseg.errors import InputError
from semisupseg.losses import NOT_ANNOTATED


def _labels(shape=(1, 8, 8, 3), classes=4, seed=0):
    return torch.randint(classes, shape, generator=torch.Generator().manual_seed(seed))


def _resample(images, labels, angle_deg, factor):
    grid = in_plane_grid(torch.tensor([math.radians(angle_deg)]), torch.tensor([float(factor)]), images.shape[2:])
    return strong_module._resample_chosen(images, labels, grid, torch.tensor([True]))


def test_quarter_turn_equals_rot90_in_every_slice():
    """A 90-degree rotation of a square patch maps voxel centres onto voxel centres: labels and
    image must equal torch.rot90 in the (x, y) plane exactly, slice by slice, z untouched."""
    labels = _labels()
    images = labels.unsqueeze(1).float() * 10 + torch.arange(3).view(1, 1, 1, 1, 3)
    moved_images, moved_labels = _resample(images, labels, 90.0, 1.0)
    turned = [torch.equal(moved_labels, torch.rot90(labels, k, (1, 2))) for k in (1, 3)]
    assert any(turned), "a quarter turn must equal rot90 one way or the other"
    k = 1 if turned[0] else 3
    assert torch.allclose(moved_images, torch.rot90(images, k, (2, 3)), atol=1e-4)


def test_rotation_of_a_non_square_patch_is_rigid():
    """On a 16 x 8 patch, a 90-degree turn about the centre keeps a centred 8 x 8 block's content
    (rot90 of that block); what comes from outside the patch is NOT_ANNOTATED / the minimum."""
    labels = _labels((1, 16, 8, 2), seed=3)
    images = labels.unsqueeze(1).float()
    moved_images, moved_labels = _resample(images, labels, 90.0, 1.0)
    block = labels[:, 4:12, :, :]
    inner = moved_labels[:, 4:12, :, :]
    assert torch.equal(inner, torch.rot90(block, 1, (1, 2))) or torch.equal(inner, torch.rot90(block, 3, (1, 2)))
    assert bool((moved_labels[:, :4] == NOT_ANNOTATED).all()) and bool((moved_labels[:, 12:] == NOT_ANNOTATED).all())
    assert float(moved_images[:, :, :4].max()) == pytest.approx(float(images.min()), abs=1e-4)


def test_scaling_half_magnifies_twice_by_nearest_voxel():
    """s = 0.5 samples the central half: output voxel i reads input voxel 2 + i // 2 (8 voxels,
    centre 4): every label voxel equals that index arithmetic."""
    labels = _labels(seed=5)
    _, moved = _resample(labels.unsqueeze(1).float(), labels, 0.0, 0.5)
    index = torch.tensor([2 + i // 2 for i in range(8)])
    expected = labels[:, index][:, :, index]
    assert torch.equal(moved, expected)


def test_zooming_out_marks_the_rim_not_annotated():
    labels = torch.ones(1, 8, 8, 2, dtype=torch.long)
    _, moved = _resample(labels.unsqueeze(1).float(), labels, 0.0, 1.4)
    assert bool((moved[:, 0, 0] == NOT_ANNOTATED).all())
    assert bool((moved[:, 3:5, 3:5] == 1).all())


def test_gamma_matches_the_formula():
    images = torch.tensor([0.0, 1.0, 2.0, 4.0]).view(1, 1, 4, 1, 1)
    gamma = torch.full((1, 1, 1, 1, 1), 2.0)
    expected = 4 * (torch.tensor([0.0, 1.0, 2.0, 4.0]) / 4) ** 2  # range [0, 4]: x = 4 (x / 4)^g
    assert torch.allclose(apply_gamma(images, gamma).flatten(), expected)
    constant = torch.full((1, 1, 2, 2, 1), 3.0)
    assert torch.equal(apply_gamma(constant, gamma), constant)


def test_zero_probabilities_change_nothing():
    augment = StrongAugmentation(p_rotate=0, p_scale=0, p_brightness=0, p_contrast=0, p_gamma=0, p_noise=0)
    images = torch.randn(3, 1, 8, 8, 4)
    labels = _labels((3, 8, 8, 4))
    out_images, out_labels = augment(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(out_images, images) and torch.equal(out_labels, labels)


def test_always_on_changes_every_sample_and_keeps_labels_valid():
    augment = StrongAugmentation(p_rotate=1, p_scale=1, p_brightness=1, p_contrast=1, p_gamma=1, p_noise=1)
    images = torch.randn(4, 1, 16, 16, 4)
    labels = _labels((4, 16, 16, 4))
    out_images, out_labels = augment(images, labels, torch.Generator().manual_seed(1))
    assert out_images.shape == images.shape and out_labels.dtype == torch.int64
    for i in range(4):
        assert not torch.allclose(out_images[i], images[i])
    assert set(torch.unique(out_labels).tolist()) <= {NOT_ANNOTATED, 0, 1, 2, 3}


def _case(case_id, seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(24, 24, 6)).astype(np.float32)
    label = np.zeros((24, 24, 6), dtype=np.uint8)
    label[6:14, 6:14, 1:5] = 1
    label[14:20, 8:16, 1:5] = 2
    return PreparedCase(id=case_id, image=image, label=label, reference=None, spacing=(1.5, 1.5, 5.0))


def test_sampler_strong_is_reproducible_and_resumes_from_the_generator_state():
    cases = [_case("a", 0), _case("b", 1)]
    first = PatchSampler(cases, [], (16, 16, 4), "cpu", seed=7, strong=True)
    again = PatchSampler(cases, [], (16, 16, 4), "cpu", seed=7, strong=True)
    standard = PatchSampler(cases, [], (16, 16, 4), "cpu", seed=7)
    a, b, c = ([s.sample(2, 0) for _ in range(6)] for s in (first, again, standard))
    assert all(torch.equal(x.x_l, y.x_l) and torch.equal(x.y_l, y.y_l) for x, y in zip(a, b))
    assert not all(torch.equal(x.x_l, z.x_l) for x, z in zip(a, c))
    # A checkpoint stores sampler.generator's state: a sampler given it continues the same batches.
    state = first.generator.get_state()
    resumed = PatchSampler(cases, [], (16, 16, 4), "cpu", seed=99, strong=True)
    resumed.generator.set_state(state)
    for _ in range(3):
        x, y = first.sample(2, 0), resumed.sample(2, 0)
        assert torch.equal(x.x_l, y.x_l) and torch.equal(x.y_l, y.y_l)
    labels = torch.cat([x.y_l for x in a])
    assert set(torch.unique(labels).tolist()) <= {NOT_ANNOTATED, 0, 1, 2}


def test_config_accepts_strong_and_refuses_unknown():
    assert DEFAULTS["augmentation"] == "standard"
    assert check_augmentation("strong") == "strong"
    with pytest.raises(InputError, match="augmentation must be one of standard, strong"):
        resolve_config({**DEFAULTS, "augmentation": "heavy"}, torch.device("cpu"), [(32, 32, 8)], [(1.5, 1.5, 5.0)])


def test_brightness_and_contrast_match_their_formulas():
    images = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 4, 1, 1)
    off = dict(p_rotate=0, p_scale=0, p_gamma=0, p_noise=0)
    brighter = StrongAugmentation(**off, p_brightness=1, brightness_range=(0.5, 0.5), p_contrast=0)
    assert torch.allclose(brighter.intensity(images, torch.Generator()).flatten(), torch.tensor([0.0, 0.5, 1.0, 1.5]))
    # (x - 1.5) * 2 + 1.5 = -1.5, 0.5, 2.5, 4.5, clipped to the patch's range [0, 3]
    contrast = StrongAugmentation(**off, p_brightness=0, p_contrast=1, contrast_range=(2.0, 2.0))
    assert torch.allclose(contrast.intensity(images, torch.Generator()).flatten(), torch.tensor([0.0, 0.5, 2.5, 3.0]))
