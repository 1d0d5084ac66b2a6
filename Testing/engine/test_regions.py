"""Uncertain regions on a synthetic map with known blobs, on a rotated anisotropic grid."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from semisupseg.errors import InputError
from semisupseg.inference.regions import (
    boundary_band,
    default_class_weights,
    find_uncertain_regions,
    read_regions_json,
    write_regions_json,
)

SHAPE = (40, 24, 12)
SPACING = np.array([0.5, 1.0, 2.0])  # voxel volume 1 mm^3
ORIGIN = np.array([10.0, -5.0, 3.0])


def _direction() -> np.ndarray:
    """Rotation by 30 degrees about z, then 20 degrees about x."""
    cz, sz = math.cos(math.radians(30)), math.sin(math.radians(30))
    cx, sx = math.cos(math.radians(20)), math.sin(math.radians(20))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ rx


DIRECTION = _direction()


def physical(index) -> np.ndarray:
    """Independent of SimpleITK: p = origin + D diag(spacing) index (LPS mm)."""
    return ORIGIN + DIRECTION @ (SPACING * np.asarray(index, dtype=float))


@pytest.fixture
def reference() -> sitk.Image:
    image = sitk.Image(list(SHAPE), sitk.sitkFloat32)
    image.SetSpacing(SPACING.tolist())
    image.SetOrigin(ORIGIN.tolist())
    image.SetDirection(DIRECTION.ravel().tolist())
    return image


@pytest.fixture
def blobs() -> np.ndarray:
    """A: 5^3 at 0.8 (sum 100); B: 4^3 with u = 0.6..0.9 along x (sum 16 * 3.0 = 48);
    C: 3^3 at 1.0 (sum 27, 27 mm^3 >= 20); a 2-voxel speck at 1.0 (2 mm^3 < 20: dropped)."""
    u = np.zeros(SHAPE, dtype=np.float32)
    u[2:7, 2:7, 2:7] = 0.8
    u[15:19, 2:6, 2:6] = np.array([0.6, 0.7, 0.8, 0.9])[:, None, None]
    u[30:33, 15:18, 6:9] = 1.0
    u[20:22, 20, 10] = 1.0
    u[10, 15, 3] = 0.5  # exactly at the threshold: not uncertain (u > threshold)
    return u


NEUTRAL = {0: 1.0, 1: 1.0}


def test_regions_count_order_and_fields(blobs, reference):
    labelmap = np.zeros(SHAPE, dtype=np.uint8)
    regions = find_uncertain_regions(blobs, labelmap, reference)
    assert len(regions) == 3  # the speck is below min_volume_mm3
    assert [r["rank"] for r in regions] == [1, 2, 3]
    assert [r["score"] for r in regions] == pytest.approx([100.0, 48.0, 27.0], rel=1e-5)
    a, b, c = regions
    assert [r["voxels"] for r in regions] == [125, 64, 27]
    assert a["volume_ml"] == pytest.approx(0.125)
    assert a["mean_uncertainty"] == pytest.approx(0.8) and b["sum_uncertainty"] == pytest.approx(48.0)
    assert a["bbox_voxels"] == {"min": [2, 2, 2], "max": [6, 6, 6]}
    assert c["bbox_voxels"] == {"min": [30, 15, 6], "max": [32, 17, 8]}
    assert a["predicted_class"] == 0 and a["boundary_fraction"] == 0.0
    json.dumps(regions, allow_nan=False)  # plain JSON types only


def test_centres_are_physical_lps_points(blobs, reference):
    regions = find_uncertain_regions(blobs, np.zeros(SHAPE, np.uint8), reference)
    a, b, c = regions
    # A and C are uniform: the density plateau's voxel nearest the centroid is their middle voxel.
    assert a["center_voxel"] == [4, 4, 4]
    assert c["center_voxel"] == [31, 16, 7]
    # B rises along x (0.6 .. 0.9): the target lies in B, on a voxel at least as hot as B's mean.
    i, j, k = b["center_voxel"]
    assert 15 <= i <= 18 and 2 <= j <= 5 and 2 <= k <= 5
    assert blobs[i, j, k] >= 0.75 and b["center_uncertainty"] == pytest.approx(float(blobs[i, j, k]))
    for region in regions:
        lps = physical(region["center_voxel"])
        assert region["center_lps_mm"] == pytest.approx(lps.tolist(), abs=1e-6)
        assert region["center_ras_mm"] == pytest.approx([-lps[0], -lps[1], lps[2]], abs=1e-6)
    # A's box spans the outer faces of its voxels: index 1.5 .. 6.5 on every axis.
    ends = (1.5, 6.5)
    corners = np.array([physical([i, j, k]) for i in ends for j in ends for k in ends])
    assert a["bbox_mm"]["min"] == pytest.approx(corners.min(0).tolist(), abs=1e-6)
    assert a["bbox_mm"]["max"] == pytest.approx(corners.max(0).tolist(), abs=1e-6)


def _labelmap_cutting_c() -> np.ndarray:
    """Foreground box x 28..31: its face between x = 31 and 32 runs through blob C (x 30..32),
    so every C voxel is within 2 voxels of a label change; A and B are far from it."""
    labelmap = np.zeros(SHAPE, dtype=np.uint8)
    labelmap[28:32, 12:20, 4:11] = 1
    return labelmap


def test_boundary_weight_changes_the_order(blobs, reference):
    labelmap = _labelmap_cutting_c()
    plain = find_uncertain_regions(blobs, labelmap, reference, boundary_weight=0.0, class_weights=NEUTRAL)
    assert [r["voxels"] for r in plain] == [125, 64, 27]  # A 100, B 48, C 27
    weighted = find_uncertain_regions(blobs, labelmap, reference, boundary_weight=2.0, class_weights=NEUTRAL)
    # C: 27 voxels, all near the boundary, weight 1 + 2 = 3 -> 81 > B's 48.
    assert [r["voxels"] for r in weighted] == [125, 27, 64]
    assert weighted[1]["score"] == pytest.approx(81.0)
    assert weighted[1]["boundary_fraction"] == 1.0
    assert weighted[1]["predicted_class"] == 1  # 18 of its 27 voxels are predicted foreground


def test_default_class_weights_favour_rare_classes(blobs, reference):
    labelmap = _labelmap_cutting_c()
    # class 1 has 4*8*7 = 224 voxels, background 11520 - 224 = 11296: 11296/224 = 50.4 -> cap 10
    assert default_class_weights(labelmap) == {0: 1.0, 1: 10.0}
    regions = find_uncertain_regions(blobs, labelmap, reference, boundary_weight=0.0)
    # C: 18 voxels predicted 1 (weight 10) + 9 background -> 189 > A's 100
    assert regions[0]["voxels"] == 27 and regions[0]["score"] == pytest.approx(189.0)
    assert [r["voxels"] for r in regions] == [27, 125, 64]


def test_max_regions_and_threshold(blobs, reference):
    labelmap = np.zeros(SHAPE, np.uint8)
    top = find_uncertain_regions(blobs, labelmap, reference, max_regions=2)
    assert [r["rank"] for r in top] == [1, 2] and [r["voxels"] for r in top] == [125, 64]
    high = find_uncertain_regions(blobs, labelmap, reference, threshold=0.85)
    # only u > 0.85: C (1.0) and B's x = 18 slice (0.9, 16 voxels, 16 mm^3 < 20: dropped)
    assert [r["voxels"] for r in high] == [27]
    tiny = find_uncertain_regions(blobs, labelmap, reference, min_volume_mm3=0.0)
    assert len(tiny) == 4


def test_diagonal_neighbours_join(reference):
    u = np.zeros(SHAPE, np.float32)
    u[5, 5, 5] = u[6, 6, 6] = 0.9  # touching only at a corner
    regions = find_uncertain_regions(u, np.zeros(SHAPE, np.uint8), reference, min_volume_mm3=0.0)
    assert len(regions) == 1 and regions[0]["voxels"] == 2


def test_boundary_band_width():
    labelmap = np.zeros((12, 3, 3), dtype=np.uint8)
    labelmap[6:] = 1  # the label changes between x = 5 and x = 6
    band = boundary_band(labelmap, width=2)
    assert band[:, 1, 1].tolist() == [False] * 4 + [True] * 4 + [False] * 4
    assert not boundary_band(labelmap, width=0).any()


def test_shape_mismatch_is_an_error(blobs, reference):
    with pytest.raises(ValueError):
        find_uncertain_regions(blobs[:-1], np.zeros(SHAPE, np.uint8)[:-1], reference)


def test_regions_json_round_trip(blobs, reference, tmp_path):
    regions = find_uncertain_regions(blobs, np.zeros(SHAPE, np.uint8), reference)
    path = tmp_path / "run" / "regions.json"
    write_regions_json(path, {"case0": regions, "case1": []}, {"round": "final", "iteration": 10})
    raw = json.loads(path.read_text())
    assert raw["coordinate_system"] == "LPS" and raw["units"] == "mm"
    assert raw["meta"] == {"round": "final", "iteration": 10}
    document = read_regions_json(path)
    assert document["cases"]["case0"] == regions  # JSON floats round-trip exactly
    assert document["cases"]["case1"] == []
    assert [p.name for p in path.parent.iterdir()] == ["regions.json"]  # no temporary left behind


def test_read_regions_json_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_regions_json(tmp_path / "regions.json")
    (tmp_path / "regions.json").write_text("{not json")
    with pytest.raises(InputError, match="not readable"):
        read_regions_json(tmp_path / "regions.json")
    (tmp_path / "regions.json").write_text('{"format": 1}')
    with pytest.raises(InputError, match="no 'cases'"):
        read_regions_json(tmp_path / "regions.json")


def test_region_thresholds_adapt_to_an_uncertain_map():
    from semisupseg.inference.predictor import region_thresholds

    cfg = {"threshold": 0.5, "max_fraction": 0.02}
    confident = np.zeros((50, 40, 10), np.float32)
    confident[:5, :4, :] = 0.9  # 1 % of the volume is uncertain: the fixed threshold applies at once
    assert region_thresholds(confident, cfg) == [0.5]
    uncertain = np.linspace(0.6, 1.0, 20000, dtype=np.float32).reshape(50, 40, 10)  # everything > 0.5
    thresholds = region_thresholds(uncertain, cfg)
    shares = [(uncertain > t).mean() for t in thresholds]
    assert shares[:3] == pytest.approx([0.02, 0.04, 0.08], abs=0.001)
    assert thresholds == sorted(thresholds, reverse=True) and thresholds[-1] == 0.5
    assert region_thresholds(uncertain, {"threshold": 0.5, "max_fraction": 1.0}) == [0.5]


def test_a_two_class_threshold_is_capped_for_more_classes():
    """Normalised entropy H / ln C of a voxel split evenly between two of C classes is ln 2 / ln C (0.5 for
    C = 4). The threshold tuned on two-class LA (0.7) is capped there for more classes: a 4-class
    model's regions keep the threshold they had (0.5: voxels where a third class mixes in), instead of
    needing near three-way ties."""
    import torch
    from semisupseg.inference.predictor import region_thresholds, two_class_ceiling, uncertain_regions
    from semisupseg.inference.uncertainty import normalised_entropy

    assert two_class_ceiling(2) == 1.0 and two_class_ceiling(None) == 1.0
    assert two_class_ceiling(4) == pytest.approx(0.5) and two_class_ceiling(3) == pytest.approx(0.6309, abs=1e-4)
    coin = normalised_entropy(torch.tensor([0.5, 0.5, 0.0, 0.0]).reshape(4, 1, 1, 1)).item()
    assert coin == pytest.approx(two_class_ceiling(4), abs=1e-6)
    probs = np.zeros((4, 20, 20, 20), np.float32)
    probs[1] = 1.0
    probs[:, 8:12] = np.array([0.1, 0.6, 0.3, 0.0], np.float32)[:, None, None, None]  # a third class mixes in
    u = normalised_entropy(torch.from_numpy(probs)).numpy()
    labels = probs.argmax(0)
    assert 0.6 < u.max() < 0.7  # by hand: (0.6 ln 0.6 + 0.3 ln 0.3 + 0.1 ln 0.1) / -ln 4 = 0.648
    cfg = {"threshold": 0.7, "max_fraction": 0.02, "min_volume_mm3": 1.0, "max_regions": 5}
    assert region_thresholds(u, cfg, num_classes=4)[-1] == pytest.approx(0.5)
    assert region_thresholds(u, {"threshold": 0.7, "max_fraction": 1.0}, num_classes=2) == [0.7]
    reference = sitk.Image([20, 20, 20], sitk.sitkUInt8)
    assert uncertain_regions(u, labels, reference, cfg) == []  # C unknown: nothing above 0.7
    found = uncertain_regions(u, labels, reference, cfg, num_classes=4)
    assert found and all(8 <= r["center_voxel"][0] < 12 for r in found)
    assert found[0]["threshold"] == pytest.approx(0.5)


def test_uncertain_regions_fall_back_until_a_region_is_found():
    from semisupseg.inference.predictor import uncertain_regions

    reference = sitk.Image([20, 20, 20], sitk.sitkUInt8)
    u = np.full((20, 20, 20), 0.6, np.float32)
    u[::4, ::4, ::4] = 0.99  # the top 2 % are isolated specks: too small to be regions
    labels = np.zeros(u.shape, np.uint8)
    cfg = {"threshold": 0.5, "max_fraction": 0.02, "min_volume_mm3": 20.0, "max_regions": 5, "boundary_weight": 2.0}
    regions = uncertain_regions(u, labels, reference, cfg)
    assert regions and regions[0]["threshold"] < 0.99


def _shell(shape, centre, radius, thickness=1.5):
    """Boolean spherical shell |r - radius| <= thickness / 2 (voxel units)."""
    grid = np.indices(shape).astype(np.float64)
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    return np.abs(r - radius) <= thickness / 2, r


def test_a_large_shell_is_cut_into_places_with_targets_inside():
    """The LA finding in miniature: a thin uncertain shell 60 mm across around a predicted sphere.

    Every region must fit 40 mm per image axis, every target must be a voxel of its region
    where u is above the threshold, and the pieces must cover the shell without overlap.
    """
    shape = (64, 64, 32)
    spacing = (1.0, 1.0, 2.0)
    reference = sitk.Image(list(shape), sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    shell, r = _shell(shape, (32, 32, 16), 15.0)
    # Anisotropic: along z the grid is coarser, so the physical shell is an ellipsoid 60 x 60 x 60 mm.
    u = np.where(shell, 0.7, 0.0).astype(np.float32)
    labels = (r < 15).astype(np.uint8)
    regions, masks = find_uncertain_regions(u, labels, reference, threshold=0.5, min_volume_mm3=0.0,
                                            max_regions=1000, return_masks=True)
    assert len(regions) >= 5
    covered = np.zeros(shape, np.int32)
    for region, (lo, mask) in zip(regions, masks):
        assert max(region["extent_mm"]) <= 20.0
        hi = np.array(region["bbox_voxels"]["max"])
        assert np.array_equal(hi - lo + 1, mask.shape)
        target = np.array(region["center_voxel"])
        assert np.all(target >= lo) and np.all(target <= hi) and mask[tuple(target - lo)]
        assert u[tuple(target)] > 0.5
        covered[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] += mask
    assert covered.max() == 1 and np.array_equal(covered > 0, shell)


def test_a_thick_uncertain_patch_outranks_the_thin_shell():
    """Expected errors: a thick confused zone on the shell holds more error than an equal-length thin stretch."""
    shape = (64, 64, 32)
    reference = sitk.Image(list(shape), sitk.sitkFloat32)
    reference.SetSpacing((1.0, 1.0, 2.0))
    shell, r = _shell(shape, (32, 32, 16), 15.0)
    u = np.where(shell, 0.7, 0.0).astype(np.float32)
    thick = (np.abs(r - 15.0) <= 4.0) & (np.indices(shape)[0] > 44)  # the +x cap, 8 voxels thick
    u[thick] = 0.9
    regions = find_uncertain_regions(u, (r < 15).astype(np.uint8), reference, threshold=0.5, min_volume_mm3=0.0)
    top = regions[0]
    assert top["center_voxel"][0] > 44 and u[tuple(top["center_voxel"])] == pytest.approx(0.9)
    assert top["expected_errors"] > 2 * regions[-1]["expected_errors"]


def test_error_probability_sets_the_score(blobs, reference):
    q = np.where(blobs > 0, 0.1, 0.0).astype(np.float32)
    q[30:33, 15:18, 6:9] = 0.5  # C: 27 voxels at 0.5 -> 13.5; A: 125 x 0.1 = 12.5; B: 64 x 0.1 = 6.4
    regions = find_uncertain_regions(blobs, np.zeros(SHAPE, np.uint8), reference, error_probability=q)
    assert [r["voxels"] for r in regions] == [27, 125, 64]
    assert regions[0]["score"] == pytest.approx(13.5) and regions[0]["expected_errors"] == pytest.approx(13.5)


def test_error_boxes_are_disjoint_boxes_ranked_by_the_errors_they_hold():
    """placement="error_boxes": boxes of side max_extent_mm centred on uncertain voxels, taken in
    descending expected errors of the whole box, never overlapping; the score is the box's sum
    of q (counted here by hand from the map), the target an uncertain voxel inside the box."""
    shape = (64, 64, 32)
    reference = sitk.Image(list(shape), sitk.sitkFloat32)
    reference.SetSpacing((1.0, 1.0, 2.0))
    shell, r = _shell(shape, (32, 32, 16), 15.0)
    u = np.where(shell, 0.7, 0.0).astype(np.float32)
    q = np.where(shell, 0.05, 0.0).astype(np.float32)
    q[(np.abs(r - 15.0) <= 4.0) & (np.indices(shape)[0] > 44)] = 0.6  # confused zone, mostly off the shell
    regions, masks = find_uncertain_regions(u, (r < 15).astype(np.uint8), reference, threshold=0.5,
                                            min_volume_mm3=0.0, max_regions=6, max_extent_mm=11.0,
                                            error_probability=q, class_weights={}, placement="error_boxes",
                                            return_masks=True)
    assert len(regions) == 6
    occupied = np.zeros(shape, np.int32)
    for region, (lo, mask) in zip(regions, masks):
        hi = np.array(region["bbox_voxels"]["max"])
        box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
        assert max(region["extent_mm"]) <= 11.0
        assert region["score"] == pytest.approx(float(q[box].sum()), rel=1e-4)  # whole box, not just the shell
        assert np.array_equal(mask, u[box] > 0.5)  # the region's voxels: the uncertain ones of its box
        target = np.array(region["center_voxel"])
        assert mask[tuple(target - lo)]
        occupied[box] += 1
    assert occupied.max() == 1
    scores = [r["score"] for r in regions]
    assert scores == sorted(scores, reverse=True)
    assert regions[0]["center_voxel"][0] > 40  # the confused zone comes first
    with pytest.raises(ValueError, match="placement"):
        find_uncertain_regions(u, (r < 15).astype(np.uint8), reference, placement="grid")
