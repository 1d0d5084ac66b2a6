"""Dice, IoU, HD95, ASD in mm against hand-computed cases, evaluate_folders and the evaluate CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from semisupseg.errors import InputError
from semisupseg.evaluation import metrics
from semisupseg.evaluation.cli import add_evaluate_parser, main, run_evaluate
from semisupseg.evaluation.metrics import (
    ASD_DEFINITION,
    HD95_DEFINITION,
    asd,
    binary_metrics,
    dice,
    evaluate_case,
    evaluate_folders,
    hd95,
    iou,
    largest_connected_component,
)

SHAPE = (20, 12, 10)
SPACING = (0.5, 1.0, 2.0)
DIAGONAL = math.sqrt((20 * 0.5) ** 2 + (12 * 1.0) ** 2 + (10 * 2.0) ** 2)  # sqrt(644) ~ 25.377 mm


def cube(z0: int) -> np.ndarray:
    """4x4x4 cube at x, y in [2, 6) and z in [z0, z0 + 4)."""
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:6, 2:6, z0 : z0 + 4] = True
    return mask


# ---------------------------------------------------------------------------- hand-made cases


def test_cubes_offset_along_z_match_hand_computation():
    truth, pred = cube(2), cube(3)  # prediction shifted by one voxel = 2 mm along z
    # Overlap 4*4*3 = 48 of 64 + 64 voxels: Dice = 96/128 = 0.75, IoU = 48/80 = 0.6.
    # Surfaces (cube minus its 6-connected erosion) have 64 - 8 = 56 voxels each.
    # pred -> truth: pred's top face z=6 (16 voxels) is 2 mm (one z step) above truth's top face;
    #   the 4 inner voxels of pred's bottom face z=3 lie inside truth, nearest truth surface is
    #   the side face one x step away = 0.5 mm; the other 36 pred surface voxels are on truth's
    #   surface (side faces for z = 3..5) -> 0.  truth -> pred is the mirror image (z=2 face at
    #   2 mm, 4 inner voxels of z=5 at 0.5 mm, 36 zeros).
    # Pooled 112 distances: 72 x 0, 8 x 0.5, 32 x 2.0.
    #   ASD  = (8 * 0.5 + 32 * 2) / 112 = 68 / 112
    #   HD95 = value at position 0.95 * 111 = 105.45 of the sorted list -> indices 105, 106 -> 2.0
    result = binary_metrics(pred, truth, SPACING)
    assert result["dice"] == pytest.approx(0.75, abs=1e-12)
    assert result["iou"] == pytest.approx(0.6, abs=1e-12)
    assert result["hd95_mm"] == pytest.approx(2.0, abs=1e-6)
    assert result["asd_mm"] == pytest.approx(68 / 112, abs=1e-6)
    assert dice(pred, truth) == result["dice"] and iou(pred, truth) == result["iou"]
    assert hd95(pred, truth, SPACING) == result["hd95_mm"]
    assert asd(pred, truth, SPACING) == result["asd_mm"]
    # Symmetric: swapping prediction and truth changes nothing.
    assert binary_metrics(truth, pred, SPACING) == pytest.approx(result)


def test_spacing_is_applied_per_axis():
    """Same shift along x instead of z: the 2 mm become one x step of 0.5 mm."""
    truth = np.zeros(SHAPE, dtype=bool)
    truth[2:6, 2:6, 2:6] = True
    pred = np.roll(truth, 1, axis=0)
    # As in the z case, 36 + 36 surface voxels are shared (distance 0). The 16-voxel end faces
    # are now one x step = 0.5 mm from the other cube's end face, and the 4 inner voxels of the
    # overlapping end face are 0.5 mm from the other cube's end face too (closer than a side
    # face along y, 1 mm, or z, 2 mm). Pooled: 72 x 0, 40 x 0.5 -> ASD = 20 / 112, HD95 = 0.5.
    result = binary_metrics(pred, truth, SPACING)
    assert result["asd_mm"] == pytest.approx(20 / 112, abs=1e-6)
    assert result["hd95_mm"] == pytest.approx(0.5, abs=1e-6)


def test_identical_masks():
    mask = cube(2)
    assert binary_metrics(mask, mask, SPACING) == {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}


def test_empty_prediction_gets_image_diagonal():
    empty = np.zeros(SHAPE, dtype=bool)
    result = binary_metrics(empty, cube(2), SPACING)
    assert result == pytest.approx({"dice": 0.0, "iou": 0.0, "hd95_mm": DIAGONAL, "asd_mm": DIAGONAL})
    # and the reverse (prediction where the truth has nothing)
    assert binary_metrics(cube(2), empty, SPACING)["hd95_mm"] == pytest.approx(DIAGONAL)


def test_both_empty_is_perfect():
    empty = np.zeros(SHAPE, dtype=bool)
    assert binary_metrics(empty, empty, SPACING) == {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own internal deprecation notice
def test_hd95_pools_both_directions():
    """A far speck that is 7 % of the prediction surface but under 5 % of the pooled distances.

    truth = 6^3 cube (surface 216 - 64 = 152 voxels); pred = the same cube + a 2x2x3 blob (12
    voxels, all surface) far away. truth -> pred: 152 zeros. pred -> truth: 152 zeros + 12 large.
    Pooled: 304 zeros then 12 large; 0.95 * 315 = 299.25 -> both neighbours are 0 -> HD95 = 0.
    The max-of-directed definition (MONAI's compute_hausdorff_distance) looks at pred -> truth
    alone: 0.95 * 163 = 154.85 lands among the 12 large values, so it is > 0.
    """
    truth = np.zeros((30, 12, 12), dtype=bool)
    truth[2:8, 2:8, 2:8] = True
    pred = truth.copy()
    pred[24:26, 8:10, 8:11] = True
    assert hd95(pred, truth, (1.0, 1.0, 1.0)) == 0.0
    from monai.metrics import compute_hausdorff_distance

    directed_max = compute_hausdorff_distance(
        pred[None, None], truth[None, None], percentile=95, include_background=True
    )
    assert float(directed_max) > 10.0
    assert "pooled" in HD95_DEFINITION and "symmetric" in ASD_DEFINITION


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour outside the mask (outside the image counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def test_against_brute_force_pooled_definition():
    """Irregular masks: HD95/ASD equal a plain all-pairs implementation of the named definitions."""
    rng = np.random.default_rng(3)
    truth = np.zeros((12, 10, 8), dtype=bool)
    truth[2:9, 2:8, 1:6] = True
    pred = truth.copy()
    pred[rng.random(truth.shape) < 0.15] ^= True
    spacing = np.array([0.7, 1.3, 2.5])
    a = np.argwhere(_surface(pred)) * spacing
    b = np.argwhere(_surface(truth)) * spacing
    pairwise = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    pooled = np.concatenate([pairwise.min(axis=1), pairwise.min(axis=0)])
    assert hd95(pred, truth, spacing) == pytest.approx(np.percentile(pooled, 95), rel=1e-5)
    assert asd(pred, truth, spacing) == pytest.approx(pooled.mean(), rel=1e-5)


def test_largest_connected_component_uses_26_connectivity():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[0:2, 0:2, 0:2] = True  # 8 voxels
    mask[2, 2, 2] = True  # touches the first block only at a corner: joins it (9 voxels)
    mask[5:8, 5:8, 6:9] = True  # 27 voxels: the largest
    kept = largest_connected_component(mask)
    assert kept.sum() == 27 and kept[6, 6, 7] and not kept[0, 0, 0]
    mask[5:8, 5:8, 6:9] = False
    assert largest_connected_component(mask).sum() == 9
    assert not largest_connected_component(np.zeros((3, 3, 3), bool)).any()


def test_evaluate_case_multiclass_and_lcc():
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[cube(2)] = 1
    truth[12:16, 2:6, 2:6] = 2
    pred = truth.copy()
    pred[18, 10, 8] = 1  # a false-positive speck of class 1
    plain = evaluate_case(pred, truth, SPACING, classes=[1, 2])
    assert set(plain) == {1, 2}
    assert plain[2] == {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}
    assert plain[1]["dice"] == pytest.approx(128 / 129)
    assert plain[1]["asd_mm"] > 0
    cleaned = evaluate_case(pred, truth, SPACING, classes=[1, 2], lcc=True)
    assert cleaned[1] == {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}


# -------------------------------------------------------------------------------- folders, CLI


def _write(path, array, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def folders(tmp_path):
    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    _write(pred_dir / "a.nii.gz", cube(3).astype(np.uint8))
    _write(truth_dir / "a.nii.gz", cube(2).astype(np.uint8))
    _write(pred_dir / "b.nrrd", cube(2).astype(np.uint8))  # extensions may differ
    _write(truth_dir / "b.nii.gz", cube(2).astype(np.uint8))
    _write(pred_dir / "c.nii.gz", cube(2).astype(np.uint8))  # no truth: skipped with a warning
    _write(truth_dir / "d.nii.gz", cube(2).astype(np.uint8))  # no prediction: ignored
    (pred_dir / "notes.txt").write_text("not an image")
    return pred_dir, truth_dir


def test_evaluate_folders(folders):
    report = evaluate_folders(*folders)
    assert sorted(report["cases"]) == ["a", "b"]
    assert report["classes"] == [1]
    assert report["skipped"] == ["c"] and "'c'" in report["warnings"][0]
    assert report["cases"]["a"]["1"]["dice"] == pytest.approx(0.75)
    assert report["cases"]["b"]["1"]["hd95_mm"] == 0.0
    mean = report["mean"]["1"]
    assert mean["dice"] == pytest.approx((0.75 + 1.0) / 2)
    assert mean["asd_mm"] == pytest.approx((68 / 112) / 2, abs=1e-6)
    assert report["mean"]["all"] == pytest.approx(mean)
    assert report["definitions"]["hd95"] == HD95_DEFINITION
    # A class present nowhere, asked explicitly: both empty everywhere -> perfect.
    explicit = evaluate_folders(*folders, classes=[1, 3])
    assert explicit["mean"]["3"] == {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}


def test_evaluate_folders_bad_inputs(folders, tmp_path):
    pred_dir, truth_dir = folders
    with pytest.raises(InputError, match="does not exist"):
        evaluate_folders(tmp_path / "nowhere", truth_dir)
    _write(truth_dir / "b.nii.gz", cube(2).astype(np.uint8), origin=(0.0, 5.0, 0.0))
    with pytest.raises(InputError, match="Case 'b'.*origin"):
        evaluate_folders(pred_dir, truth_dir)
    uncertainty_dir = tmp_path / "uncertainty"
    _write(uncertainty_dir / "a.nii.gz", np.full(SHAPE, 0.3, dtype=np.float32))
    with pytest.raises(InputError, match="Case 'a'.*non-integer"):
        evaluate_folders(uncertainty_dir, truth_dir)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(InputError, match="No label maps"):
        evaluate_folders(empty_dir, truth_dir)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="semisupseg")
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_json_and_table(folders, capsys):
    pred_dir, truth_dir = folders
    args = _parse(["evaluate", "--pred", str(pred_dir), "--truth", str(truth_dir), "--json", "--classes", "1"])
    assert args.func is run_evaluate
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cases"]["a"]["1"]["iou"] == pytest.approx(0.6)
    assert report["classes"] == [1] and report["skipped"] == ["c"]

    assert run_evaluate(_parse(["evaluate", "--pred", str(pred_dir), "--truth", str(truth_dir), "--lcc"])) == 0
    captured = capsys.readouterr()
    assert "HD95 mm" in captured.out
    flat = " ".join(captured.out.split())  # definitions are wrapped for the terminal
    assert HD95_DEFINITION in flat and ASD_DEFINITION in flat
    mean_row = next(line for line in captured.out.splitlines() if line.startswith("mean"))
    assert mean_row.split()[2] == f"{0.875:.4f}"
    assert "'c'" in captured.err


def test_standalone_cli_exit_codes(folders, tmp_path, capsys):
    pred_dir, truth_dir = folders
    assert main(["--pred", str(tmp_path / "missing"), "--truth", str(truth_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--pred", str(pred_dir), "--truth", str(truth_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean"]["1"]["iou"] == pytest.approx((0.6 + 1.0) / 2)


def test_module_exports_definitions():
    assert metrics.EMPTY_DEFINITION and "diagonal" in metrics.EMPTY_DEFINITION
