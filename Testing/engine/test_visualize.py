"""The demo overview PNG: rendered from tiny files, atomically, with outlines where expected."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from semisupseg.errors import InputError  # noqa: E402
from semisupseg.visualize import _choose_slices, render_overview  # noqa: E402

SIZE = (32, 28, 12)


def write(array: np.ndarray, path) -> str:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.T))
    img.SetSpacing((0.8, 0.8, 2.0))
    img.SetOrigin((10.0, -5.0, 3.0))
    sitk.WriteImage(img, str(path))
    return str(path)


@pytest.fixture
def case_files(tmp_path):
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*[np.arange(n) for n in SIZE], indexing="ij")
    ball = ((x - 16) / 7.0) ** 2 + ((y - 12) / 6.0) ** 2 + ((z - 7) / 3.0) ** 2 <= 1
    image = (100 * ball + rng.normal(0, 10, SIZE)).astype(np.float32)
    truth = ball.astype(np.uint8)
    prediction = np.roll(truth, 2, axis=0)
    uncertainty = rng.uniform(0, 1, SIZE).astype(np.float32)
    return {
        "image": write(image, tmp_path / "img.nii.gz"),
        "prediction": write(prediction, tmp_path / "pred.nii.gz"),
        "empty": write(np.zeros(SIZE, np.uint8), tmp_path / "empty.nii.gz"),
        "uncertainty": write(uncertainty, tmp_path / "unc.nii.gz"),
        "calm": write(np.zeros(SIZE, np.float32), tmp_path / "calm.nii.gz"),
        "truth": write(truth, tmp_path / "truth.nii.gz"),
        "wrong_size": write(np.zeros((8, 8, 8), np.uint8), tmp_path / "small.nii.gz"),
    }


def test_overview_png_has_one_row_per_slice(case_files, tmp_path):
    f = case_files
    cases = [("a", f["image"], f["prediction"], f["uncertainty"], f["truth"]),
             ("b", f["image"], f["empty"], f["uncertainty"], None)]
    out = render_overview(cases, tmp_path / "sub" / "overview.png", slices_per_case=2)
    assert out.is_file() and out.stat().st_size > 20_000
    pixels = imread(str(out))
    assert pixels.shape[1] == 1100 and pixels.shape[0] == pytest.approx(4 * 340, abs=2)
    assert [p.name for p in out.parent.iterdir()] == ["overview.png"]  # no temporary file left


def _red_pixels(path) -> int:
    """Pixels of the middle panel close to class 1's outline colour (#e6194b)."""
    rgb = imread(str(path))[..., :3]
    width = rgb.shape[1]
    rgb = rgb[:, int(0.36 * width): int(0.64 * width)]  # the colour bar (inferno has reds) is right
    return int(((rgb[..., 0] > 0.75) & (rgb[..., 1] < 0.3) & (rgb[..., 2] > 0.15) & (rgb[..., 2] < 0.45)).sum())


def test_prediction_outline_is_drawn_only_when_there_is_a_prediction(case_files, tmp_path):
    f = case_files  # zero uncertainty: the inferno panel is black, so red comes only from outlines
    with_outline = render_overview([("a", f["image"], f["prediction"], f["calm"], None)], tmp_path / "with.png")
    without = render_overview([("a", f["image"], f["empty"], f["calm"], None)], tmp_path / "without.png")
    assert _red_pixels(with_outline) > 30
    assert _red_pixels(without) == 0


def test_slices_go_through_the_predicted_foreground():
    prediction = np.zeros(SIZE, np.uint8)
    prediction[5:10, 5:10, 3:6] = 1
    prediction[5:6, 5:6, 10] = 1  # a speck far away barely moves the centre
    uncertainty = np.zeros(SIZE, np.float32)
    uncertainty[..., 9] = 1
    uncertainty[..., 2] = 0.5
    assert _choose_slices(prediction, None, uncertainty, 1) == [4]
    assert _choose_slices(prediction, None, uncertainty, 3) == [3, 4, 5]
    truth = np.zeros(SIZE, np.uint8)
    truth[..., 8] = 1
    assert _choose_slices(np.zeros(SIZE, np.uint8), truth, uncertainty, 1) == [8]
    assert _choose_slices(np.zeros(SIZE, np.uint8), None, uncertainty, 1) == [9]
    assert _choose_slices(np.zeros(SIZE, np.uint8), None, uncertainty, 2) == [2, 9]


def test_mismatched_files_name_the_case(case_files, tmp_path):
    f = case_files
    with pytest.raises(InputError, match="'bad'"):
        render_overview([("bad", f["image"], f["wrong_size"], f["uncertainty"], None)], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
