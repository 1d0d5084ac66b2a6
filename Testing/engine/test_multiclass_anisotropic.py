"""Several classes in thin-slab scans (issue 19): spacing-planned U-Net, per-axis patch rule,
class-aware sampling, the supervised Dice's class average, per-class case scores, and a
real-data-like synthetic training (cardiac cine MRI in miniature) that must learn every class."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from semisupseg.config import load_config, resolve_config
from semisupseg.data.preprocess import PreparedCase
from semisupseg.data.patch_size import default_patch_size
from semisupseg.data.sampling import PatchSampler
from semisupseg.errors import InputError
from semisupseg.inference.scores import class_scores
from semisupseg.losses.supervised import SupervisedLoss, masked_dice_loss
from semisupseg.networks import build_network, patch_rule
from semisupseg.networks.anisotropy import spacing_plan

ACDC_SPACING = (1.5, 1.5, 5.0)
SMALL = {"widths": [4, 8, 16, 32, 64]}


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- the plan
def test_spacing_plan_follows_nnunet_rule():
    # stage 0 at (1.5, 1.5, 5): 5 > 2 * 1.5, so z is neither pooled nor convolved; at (3, 3, 5) it is comparable
    plan = spacing_plan(ACDC_SPACING)
    assert plan["pool_sizes"] == [[2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert plan["kernel_sizes"] == [[3, 3, 1]] + [[3, 3, 3]] * 4
    # 0.8 x 0.8 x 5 (ratio 6.25): two in-plane stages before z catches up at (3.2, 3.2, 5)
    plan = spacing_plan((0.8, 0.8, 5.0))
    assert plan["pool_sizes"][:3] == [[2, 2, 1], [2, 2, 1], [2, 2, 2]]
    assert plan["kernel_sizes"][:3] == [[3, 3, 1], [3, 3, 1], [3, 3, 3]]
    # isotropic and mildly anisotropic (LA, the tiny test grid): the plain network
    for spacing in [(1.25,) * 3, (0.625,) * 3, (0.8, 0.9, 1.5)]:
        plan = spacing_plan(spacing)
        assert plan["pool_sizes"] == [[2, 2, 2]] * 4 and plan["kernel_sizes"] == [[3, 3, 3]] * 5


def test_planned_unet_shapes_kernels_and_divisors(one_thread):
    net = build_network("unet3d", num_classes=4, **SMALL, **spacing_plan(ACDC_SPACING)).eval()
    assert net.size_divisors == (16, 16, 8)
    assert net.encoder[0][0].conv.kernel_size == (3, 3, 1) and net.encoder[0][0].conv.padding == (1, 1, 0)
    assert net.encoder[1][0].conv.kernel_size == (3, 3, 3)
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        logits, embedding = net.forward_features(x)
    assert logits.shape == (2, 4, 32, 32, 16)
    assert embedding.shape == (2, 256, 4, 4, 2)  # FeCL's 8^3 block grid, whatever the pooling
    with pytest.raises(ValueError, match="16x16x8"):
        net(torch.zeros(1, 1, 32, 32, 12))
    with torch.no_grad():  # 8 slices: z is pooled three times, so 8 is enough
        assert net(torch.zeros(1, 1, 32, 32, 8)).shape == (1, 4, 32, 32, 8)


def test_planned_unet_mixes_no_slices_in_its_first_stage(one_thread):
    """In-plane first convolutions: changing one slice changes their output on that slice only
    (the convolutions themselves; instance norm's statistics span the whole patch)."""
    net = build_network("unet3d", num_classes=2, **SMALL, **spacing_plan(ACDC_SPACING)).eval()
    first = torch.nn.Sequential(net.encoder[0][0].conv, torch.nn.ReLU(), net.encoder[0][1].conv)
    x = torch.randn(1, 1, 32, 32, 16)
    y = x.clone()
    y[..., 5] += 1.0
    with torch.no_grad():
        diff = (first(x) - first(y)).abs().amax(dim=(0, 1, 2, 3))
    assert diff[5] > 0 and torch.all(diff[torch.arange(16) != 5] == 0)


def test_default_plan_is_exactly_the_reference_network(one_thread):
    torch.manual_seed(0)
    plain = build_network("unet3d", **SMALL).eval()
    torch.manual_seed(0)
    explicit = build_network("unet3d", **SMALL, pool_sizes=[[2, 2, 2]] * 4, kernel_sizes=[[3, 3, 3]] * 5).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.forward_features(x), explicit.forward_features(x), rtol=0, atol=0)


def test_bad_pool_or_kernel_sizes_are_input_errors():
    with pytest.raises(InputError, match="pool_sizes"):
        build_network("unet3d", pool_sizes=[[2, 2, 3]] * 4)
    with pytest.raises(InputError, match="kernel_sizes"):
        build_network("unet3d", kernel_sizes=[[3, 3]] * 5)


def test_patch_rule_and_default_patch_follow_the_plan():
    rule = patch_rule("unet3d", spacing_plan(ACDC_SPACING))
    assert rule.axis_divisors == (16, 16, 8)
    assert rule.problem([96, 96, 16]) is None and rule.problem([96, 96, 8]) is None
    assert "[16, 16, 8]" in rule.problem([96, 96, 12])
    assert rule.problem([16, 16, 8]) is not None  # a 1x1x1 normalised bottleneck
    # ACDC-like median volume (232 x 256 x 10 slices): z rounded to 8 slices (16 would be 6 slices
    # of padding), the budget (64 * 64 * 48 voxels on a CPU) goes in-plane, square
    patch = default_patch_size([(232, 256, 10)] * 3, [ACDC_SPACING] * 3, divisor=rule.axis_divisors,
                               strides=rule.axis_strides)
    assert patch == (144, 144, 8)
    assert math.prod(patch) <= 64 * 64 * 48
    # the isotropic network would need 16 slices: 8 of them padding for an 8-slice slab
    assert default_patch_size([(160, 160, 8)], [ACDC_SPACING], divisor=16)[2] == 16
    assert default_patch_size([(160, 160, 8)], [ACDC_SPACING], divisor=(16, 16, 8))[2] == 8
    # isotropic data: the rule and the patch are what they were (LA's CPU patch)
    assert patch_rule("unet3d", {}).axis_divisors == (16, 16, 16)
    assert default_patch_size([(183, 140, 88)], [(0.625,) * 3]) == (64, 64, 48)


def test_resolve_config_writes_the_plan_for_thin_slabs_only():
    cpu = torch.device("cpu")
    thin = resolve_config(load_config(None), cpu, [(232, 256, 10)] * 2, [ACDC_SPACING] * 2)
    assert thin["network_options"]["pool_sizes"] == spacing_plan(ACDC_SPACING)["pool_sizes"]
    assert thin["network_options"]["kernel_sizes"] == spacing_plan(ACDC_SPACING)["kernel_sizes"]
    assert thin["patch_size"] == [144, 144, 8]
    iso = resolve_config(load_config(None), cpu, [(183, 140, 88)], [(0.625,) * 3])
    assert iso["network_options"] == {} and iso["patch_size"] == [64, 64, 48]
    # the user's own choice wins
    mine = load_config(None)
    mine["network_options"] = {"pool_sizes": [[2, 2, 2]] * 4}
    kept = resolve_config(mine, cpu, [(232, 256, 16)], [ACDC_SPACING])
    assert kept["network_options"] == {"pool_sizes": [[2, 2, 2]] * 4}
    # V-Nets keep their reference pooling
    vnet = load_config(None)
    vnet["network"] = "vnet"
    assert resolve_config(vnet, cpu, [(232, 256, 16)], [ACDC_SPACING])["network_options"] == {}


# ----------------------------------------------------------------------------- sampling
def _two_class_case(size=(64, 64, 8)) -> PreparedCase:
    """Class 1 a large block, class 2 a tiny one (1 % of the foreground), far apart."""
    label = np.zeros(size, np.uint8)
    label[4:36, 4:36, :] = 1  # 8192 voxels
    label[56:60, 56:58, 2:6] = 2  # 32 voxels
    image = label.astype(np.float32)
    return PreparedCase("c", image, label, sitk.Image(1, 1, 1, sitk.sitkUInt8), ACDC_SPACING)


@pytest.mark.parametrize("class_aware, low, high", [(True, 0.40, 0.60), (False, 0.0, 0.05)])
def test_class_aware_sampling_centres_small_classes_as_often_as_large_ones(class_aware, low, high):
    """fg_fraction 1 and a 16 x 16 x 8 patch: a patch holds class 2 iff it was centred near it.
    Class-aware: each class is drawn with p = 1/2; plain: class 2 has 32 / 8224 = 0.4 % of the
    foreground voxels (plus the few class-1 centres whose patch reaches it: none, they are far)."""
    sampler = PatchSampler([_two_class_case()], [], (16, 16, 8), "cpu", seed=3, fg_fraction=1.0,
                           rotate90=False, flip=False, class_aware=class_aware)
    holds_small = [bool((sampler.sample(1, 0).y_l == 2).any()) for _ in range(300)]
    assert low <= np.mean(holds_small) <= high


def test_class_aware_sampling_changes_nothing_for_one_foreground_class():
    case = _two_class_case()
    case.label[case.label == 2] = 1
    batches = [PatchSampler([case], [], (16, 16, 8), "cpu", seed=5, class_aware=aware).sample(4, 0)
               for aware in (True, False)]
    assert torch.equal(batches[0].x_l, batches[1].x_l) and torch.equal(batches[0].y_l, batches[1].y_l)


# ----------------------------------------------------------------------------- supervised Dice
def test_supervised_dice_is_the_plain_mean_over_foreground_classes():
    """Hand-worked: 3 classes on 4 voxels, batch pooled. Class 1 (truth voxels 0, 1), class 2 (voxel 2).

    p (c0, c1, c2) per voxel: v0 (0, 1, 0), v1 (.5, .5, 0), v2 (0, .5, .5), v3 (1, 0, 0)
    class 1: I = 1 + .5 = 1.5, sum p^2 = 1 + .25 + .25 = 1.5, sum g = 2 -> D1 = 3 / 3.5
    class 2: I = .5, sum p^2 = .25, sum g = 1 -> D2 = 1 / 1.25
    Dice loss = 1 - (D1 + D2) / 2 (smoothing 1e-5 is negligible at 1e-5 relative).
    """
    probs = torch.tensor([[0, 1, 0], [.5, .5, 0], [0, .5, .5], [1, 0, 0]], dtype=torch.float64)
    logits = torch.log(probs.clamp_min(1e-30)).T.reshape(1, 3, 4, 1, 1)
    target = torch.tensor([1, 1, 2, 0]).reshape(1, 4, 1, 1)
    expected = 1 - (3 / 3.5 + 1 / 1.25) / 2
    assert float(masked_dice_loss(logits, target)) == pytest.approx(expected, rel=1e-4)
    # the same through the module, in a batch of two samples that split the voxels: sums are pooled
    split_logits = logits[0, :, :, 0, 0].reshape(3, 2, 2).permute(1, 0, 2).reshape(2, 3, 2, 1, 1)
    loss = SupervisedLoss(3).parts(split_logits, target.reshape(2, 2, 1, 1))
    assert float(loss["dice"]) == pytest.approx(expected, rel=1e-4)


# ----------------------------------------------------------------------------- case scores
def test_class_scores_say_which_class_is_uncertain():
    labels = np.zeros((20, 20, 4), np.int64)
    labels[2:8, 2:8] = 1
    labels[12:18, 12:18] = 2
    u = np.zeros(labels.shape, np.float32)
    u[12:18, 12:18] = 0.6  # class 2 uncertain, class 1 confident
    scores = class_scores(u, labels, num_classes=3, boundary_width=0)
    assert scores == {1: 0.0, 2: pytest.approx(0.6)}
    # a class never predicted has no score (it is not a zero-uncertainty class)
    assert 3 not in class_scores(u, labels, num_classes=4)


# ----------------------------------------------------------------------------- real-data-like training
CARDIAC_SIZE = (64, 64, 8)
CARDIAC_CLASSES = {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"}


def cardiac_case(index: int):
    """A cine-MRI-like thin slab, (x, y, z) 64 x 64 x 8 at 1.5 x 1.5 x 5 mm: a bright left
    ventricle (disc, radius shrinking towards the apex), a dark myocardial ring 2-3 voxels thick
    around it, a bright crescent-shaped right ventricle beside it, textured tissue, noise. LV and
    RV blood are equally bright, so shape and context separate them, as in real scans. Classes
    take about 1-4 % of the voxels each."""
    rng = np.random.default_rng(index)
    x, y = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    image = 0.35 + 0.08 * rng.standard_normal(CARDIAC_SIZE)
    label = np.zeros(CARDIAC_SIZE, np.uint8)
    cx, cy = 32 + rng.integers(-6, 7), 32 + rng.integers(-6, 7)
    radius = 7.0 + rng.uniform(-1, 1.5)
    for z in range(CARDIAC_SIZE[2]):
        r = radius * (1.0 - 0.07 * z)
        d = np.hypot(x - cx, y - cy)
        lv, myo = d <= r, (d > r) & (d <= r + 2.5)
        rv_d = np.hypot(x - (cx - r - 6), y - (cy + 1))
        rv = (rv_d <= r * 0.9) & (d > r + 3.5)
        label[..., z][rv], label[..., z][myo], label[..., z][lv] = 1, 2, 3
    image[label == 3] = 0.85
    image[label == 1] = 0.85
    image[label == 2] = 0.15
    image += 0.05 * rng.standard_normal(CARDIAC_SIZE)
    return image.astype(np.float32), label


def write_cardiac_workspace(root: Path, n_labelled: int, n_held_out: int) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cases = []
    for i in range(n_labelled + n_held_out):
        image, label = cardiac_case(i)
        for array, folder in ((image, "images"), (label, "labels")):
            img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
            img.SetSpacing(ACDC_SPACING)
            sitk.WriteImage(img, str(root / folder / f"heart{i}.nii.gz"))
        cases.append({"id": f"heart{i}", "image": f"images/heart{i}.nii.gz",
                      "label": f"labels/heart{i}.nii.gz"})
    dataset = {"name": "cardiac", "modality": {"0": "MR"}, "labels": CARDIAC_CLASSES, "cases": cases}
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def per_class_dice(prediction: np.ndarray, truth: np.ndarray, classes=(1, 2, 3)) -> list:
    return [2 * np.sum((prediction == c) & (truth == c)) / max(np.sum(prediction == c) + np.sum(truth == c), 1)
            for c in classes]


@pytest.mark.slow
def test_thin_slab_multiclass_training_learns_every_class(tmp_path, one_thread):
    """What issue 19 met on ACDC, in miniature: the engine's automatic choices (patch, plan,
    sampling, sliding-window padding) with supervised training must predict every class on
    cases it never saw. Measured on this 2-core CPU (held-out Dice RV / MYO / LV):
    - with the fix: 0.42 / 0.59 / 0.94 and 0.45 / 0.64 / 0.95 (about 100 s);
    - before (every axis pooled 4 times, so the 8-slice slab was padded to 16 slices; training
      padded with the image minimum, the sliding window with 0; foreground patches in
      proportion to voxel counts): 0, 0, 0 on both cases: nothing but background predicted,
      as in the supervised ACDC run of the issue."""
    from semisupseg.training.trainer import train_workspace

    ws = write_cardiac_workspace(tmp_path / "ws", n_labelled=4, n_held_out=2)
    config = {"method": "supervised", "network_options": {"widths": [4, 8, 16, 32, 64]}, "iterations": 400,
              "device": "cpu", "batch_labelled": 2, "batch_unlabelled": 0, "log_every": 1000,
              "checkpoint_every": 0, "reload_every": 0,
              "split": {"labelled": 4, "held_out": "5-6"}, "predict_cases": "held_out"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = train_workspace(ws, tmp_path / "config.json", run_id="thin")
    assert state == "finished"
    run = ws / "runs" / "thin"
    saved = json.loads((run / "config.json").read_text())
    assert saved["network_options"]["pool_sizes"][0] == [2, 2, 1]  # chosen from the data, written down
    assert saved["patch_size"] == [64, 64, 8]
    for i in (4, 5):
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(run / "predictions" / f"heart{i}.nii.gz")))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(ws / "labels" / f"heart{i}.nii.gz")))
        dice = per_class_dice(prediction, truth)
        assert min(dice) >= 0.3, f"heart{i}: Dice per class {dice}"
    regions = json.loads((run / "regions.json").read_text())
    for case_regions in regions["cases"].values():
        for region in case_regions:
            assert region["predicted_class"] in (0, 1, 2, 3)


def test_a_region_says_which_class_it_is_about():
    """An uncertain band just outside a class-2 structure is mostly background voxels: its
    predicted_class is 0, its about_class is 2 (the structure in its box); an uncertain place
    with no foreground around is about class 0."""
    from semisupseg.inference.regions import find_uncertain_regions

    labels = np.zeros((40, 40, 6), np.int64)
    labels[5:15, 5:15] = 1
    labels[25:35, 25:35] = 2
    u = np.zeros(labels.shape, np.float32)
    u[24:36, 33:37] = 0.9  # mostly outside class 2 (columns 35-36), touching it (33-34)
    u[2:6, 30:34] = 0.9  # nothing predicted anywhere near
    reference = sitk.Image(list(labels.shape), sitk.sitkUInt8)
    regions = find_uncertain_regions(u, labels, reference, threshold=0.5, min_volume_mm3=1.0, max_extent_mm=100.0)
    by_place = {tuple(r["bbox_voxels"]["min"][:2]): r for r in regions}
    band, lonely = by_place[(24, 33)], by_place[(2, 30)]
    assert band["about_class"] == 2 and lonely["about_class"] == 0
    assert lonely["predicted_class"] == 0


class _WindowMean(torch.nn.Module):
    """Logits (0, mean of the whole window): what a window-normalised network sees of the padding."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3, 4), keepdim=True).expand(-1, 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(mean), mean], dim=1)


def test_sliding_window_pads_thin_slabs_like_the_sampler():
    """A 6-slice volume in an 8-slice window: the window is padded with the volume's minimum, as
    the sampler pads training patches (``_pad_to``), not with 0. Image: -1 everywhere, 1 in the
    middle voxel; its windows padded with -1 have mean -1 + 2 / 512, padded with 0 they would have
    mean (-6 * 64 + 2) / 512."""
    from semisupseg.data.sampling import _pad_to
    from semisupseg.inference.sliding_window import predict_probabilities

    image = -np.ones((8, 8, 6), np.float32)
    image[4, 4, 3] = 1.0
    probs, _ = predict_probabilities([_WindowMean()], image, (8, 8, 8), num_classes=2, overlap=0.0)
    window = _pad_to(image, (8, 8, 8), float(image.min()))
    expected = torch.sigmoid(torch.tensor(float(window.mean())))  # softmax of (0, m) for class 1
    torch.testing.assert_close(probs[1], torch.full((8, 8, 6), float(expected)), rtol=0, atol=1e-6)
    assert float(window.mean()) == pytest.approx(-1 + 2 / 512)
