"""Tests of semisupseg.data: dataset loading, validation, I/O, preprocessing, patch sampling."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from semisupseg.data import (
    PatchSampler,
    PreparedCase,
    default_patch_size,
    from_array,
    load_dataset,
    normalise_intensity,
    prepare_case,
    read_image,
    resample_like,
    resample_to_spacing,
    to_array,
    validate_dataset,
    write_image_atomic,
)
from semisupseg.data.io import strip_image_extension
from semisupseg.data.preprocess import header_image
from semisupseg.errors import InputError

LA2018 = Path(__file__).resolve().parents[2].parent / "shared/datasets/LA2018"


def _load_fixture_helpers():
    """This folder's conftest.py under a unique module name: a plain ``import conftest`` may
    return another test folder's conftest when the whole suite runs."""
    spec = importlib.util.spec_from_file_location("_engine_conftest_helpers", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _load_fixture_helpers()
TINY_DIRECTION, TINY_ORIGIN = _helpers.TINY_DIRECTION, _helpers.TINY_ORIGIN
TINY_SIZE, TINY_SPACING = _helpers.TINY_SIZE, _helpers.TINY_SPACING
sphere_mask, xyz_image = _helpers.sphere_mask, _helpers.xyz_image


def _geometry(img: sitk.Image):
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def _write_json(root: Path, description: dict) -> None:
    (root / "dataset.json").write_text(json.dumps(description))


# ---------------------------------------------------------------------------------- loading
def test_load_workspace(tiny_workspace):
    spec = load_dataset(tiny_workspace)
    assert spec.layout == "workspace"
    assert spec.name == "tiny" and spec.modality == "MR"
    assert spec.labels == {0: "background", 1: "sphere"} and spec.num_classes == 2
    assert [c.id for c in spec.cases] == ["case0", "case1", "case2"]
    assert spec.cases[0].image == tiny_workspace.resolve() / "images/case0.nii.gz"
    assert spec.cases[1].label == tiny_workspace.resolve() / "labels/case1.nii.gz"
    assert spec.cases[2].label is None
    assert [c.id for c in spec.labelled_cases] == ["case0", "case1"]
    assert [c.id for c in spec.unlabelled_cases] == ["case2"]
    validate_dataset(spec)  # the fixture is valid


def _write_msd(root: Path, test_entries=True) -> Path:
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True)
    mask = sphere_mask((20, 20, 16), (10, 10, 8), 4)
    for name in ("la_003", "la_007"):
        sitk.WriteImage(xyz_image(mask * 5.0 + 1.0), str(root / f"imagesTr/{name}.nii.gz"))
        sitk.WriteImage(xyz_image(mask.astype(np.uint8)), str(root / f"labelsTr/{name}.nii.gz"))
    sitk.WriteImage(xyz_image(mask * 5.0), str(root / "imagesTs/la_010.nii.gz"))
    description = {
        "name": "Task02_Heart",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "left atrium"},
        "training": [
            {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in ("la_003", "la_007")
        ],
    }
    if test_entries:
        description["test"] = ["./imagesTs/la_010.nii.gz"]
    _write_json(root, description)
    return root


def test_load_msd_layout(tmp_path):
    root = _write_msd(tmp_path / "Task02_Heart")
    spec = load_dataset(root)
    assert spec.layout == "msd" and spec.modality == "MRI" and spec.num_classes == 2
    assert [(c.id, c.label is not None) for c in spec.cases] == [("la_003", True), ("la_007", True), ("la_010", False)]
    assert spec.cases[0].image == root.resolve() / "imagesTr/la_003.nii.gz"
    assert spec.cases[0].image.is_file() and spec.cases[0].label.is_file()
    validate_dataset(spec)


def test_load_msd_nnunet_v1_channel_suffix(tmp_path):
    """nnU-Net v1 lists imagesTr/x.nii.gz but stores imagesTr/x_0000.nii.gz."""
    root = _write_msd(tmp_path / "Task", test_entries=False)
    os.replace(root / "imagesTr/la_003.nii.gz", root / "imagesTr/la_003_0000.nii.gz")
    spec = load_dataset(root)
    assert spec.cases[0].id == "la_003"
    assert spec.cases[0].image.name == "la_003_0000.nii.gz"


def test_load_nnunet_v2_layout(tmp_path):
    root = _write_msd(tmp_path / "Dataset002", test_entries=False)
    for name in ("la_003", "la_007"):
        os.replace(root / f"imagesTr/{name}.nii.gz", root / f"imagesTr/{name}_0000.nii.gz")
    os.replace(root / "imagesTs/la_010.nii.gz", root / "imagesTs/la_010_0000.nii.gz")
    _write_json(root, {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "LA": 1},
                       "numTraining": 2, "file_ending": ".nii.gz"})
    spec = load_dataset(root)
    assert spec.labels == {0: "background", 1: "LA"} and spec.modality == "MRI"
    assert [(c.id, c.label is not None) for c in spec.cases] == [("la_003", True), ("la_007", True), ("la_010", False)]
    validate_dataset(spec)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "No dataset.json"),
        ("{not json", "not valid JSON"),
        ({"labels": {"0": "bg", "1": "fg"}}, "neither a 'cases' list"),
        ({"labels": {"0": "bg", "2": "fg"}, "cases": []}, "not 0..1"),
        ({"labels": {"0": "bg"}, "cases": []}, "at least one structure"),
        ({"labels": {"0": "bg", "one": "fg"}, "cases": []}, "not an integer"),
        ({"cases": []}, "no 'labels'"),
        ({"labels": {"0": "bg", "1": "fg"},
          "cases": [{"id": "a", "image": "images/a.nii.gz"}, {"id": "a", "image": "images/b.nii.gz"}]},
         "more than once"),
        ({"labels": {"0": "bg", "1": "fg"}, "cases": [{"id": "../a", "image": "a.nii.gz"}]}, "file name"),
        ({"labels": {"0": "bg", "1": "fg"}, "cases": [{"id": "a"}]}, "no 'image'"),
    ],
)
def test_load_errors(tmp_path, content, expected):
    if content is not None:
        (tmp_path / "dataset.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InputError) as info:
        load_dataset(tmp_path)
    assert expected in info.value.message
    assert info.value.hint


def test_labels_are_int_keys_sorted(tmp_path):
    _write_json(tmp_path, {"labels": {"2": "b", "0": "bg", "1": "a"}, "cases": []})
    assert list(load_dataset(tmp_path).labels.items()) == [(0, "bg"), (1, "a"), (2, "b")]


# ------------------------------------------------------------------------------- validation
def _label_variant(size=TINY_SIZE, spacing=TINY_SPACING, origin=TINY_ORIGIN, direction=TINY_DIRECTION, value=1):
    return xyz_image(sphere_mask(size, (14, 15, 11), 6).astype(np.uint8) * value, spacing, origin, direction)


def _image_2d():
    return sitk.GetImageFromArray(np.ones((32, 32), np.float32))


def _image_4d():
    return sitk.GetImageFromArray(np.ones((3, 24, 32, 32), np.float32), isVector=False)


def _image_vector():
    return sitk.GetImageFromArray(np.ones((24, 32, 32, 3), np.float32), isVector=True)




@pytest.mark.parametrize(
    "target, make, expected",
    [
        ("images/case0.nii.gz", None, ["image file images/case0.nii.gz does not exist"]),
        ("labels/case0.nii.gz", None, ["label file labels/case0.nii.gz does not exist"]),
        ("images/case0.nii.gz", "garbage", ["cannot be read"]),
        ("labels/case0.nii.gz", lambda: _label_variant(size=(32, 32, 20)), ["size differs", "(32, 32, 24)", "(32, 32, 20)"]),
        ("labels/case0.nii.gz", lambda: _label_variant(spacing=(0.8, 0.9, 1.6)), ["spacing differs", "1.6"]),
        ("labels/case0.nii.gz", lambda: _label_variant(origin=(-12.5, 31.25, 7.0)), ["origin differs", "31.25"]),
        ("labels/case0.nii.gz", lambda: _label_variant(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)), ["direction differs"]),
        ("labels/case0.nii.gz", lambda: _label_variant(value=3), ["value(s) 3", "not declared"]),
        ("images/case0.nii.gz", _image_2d, ["2D"]),
        ("images/case0.nii.gz", _image_4d, ["4D"]),
        ("images/case0.nii.gz", _image_vector, ["3 components"]),
        ("labels/case0.nii.gz", _image_vector, ["label file", "3 components"]),
    ],
    ids=["missing-image", "missing-label", "unreadable", "size", "spacing", "origin", "direction",
         "undeclared-value", "2d", "4d", "vector", "vector-label"],
)
def test_validation_failures(tiny_workspace, target, make, expected):
    path = tiny_workspace / target
    if make is None:
        path.unlink()
    elif make == "garbage":
        path.write_bytes(b"not an image")
    else:
        sitk.WriteImage(make(), str(path))
    spec = load_dataset(tiny_workspace)
    with pytest.raises(InputError) as info:
        validate_dataset(spec)
    assert "case0" in info.value.message
    for fragment in expected:
        assert fragment in info.value.message
    assert len(info.value.hint) > 20
    # The other cases are fine: validating only them passes.
    validate_dataset(spec, [c for c in spec.cases if c.id != "case0"])


def test_validation_nan_voxel(tiny_workspace):
    # NRRD: ITK's NIfTI reader already turns non-finite voxels into 0, NRRD keeps them.
    arr = np.ones(TINY_SIZE, np.float32)
    arr[3, 4, 5], arr[6, 7, 8] = np.nan, np.inf
    sitk.WriteImage(xyz_image(arr), str(tiny_workspace / "images/case1.nrrd"))
    description = json.loads((tiny_workspace / "dataset.json").read_text())
    description["cases"][1]["image"] = "images/case1.nrrd"
    _write_json(tiny_workspace, description)
    with pytest.raises(InputError) as info:
        validate_dataset(load_dataset(tiny_workspace))
    assert "case1" in info.value.message and "images/case1.nrrd has 2 NaN or infinite" in info.value.message
    assert info.value.hint


def test_grid_mismatch_hint_says_resample(tiny_workspace):
    sitk.WriteImage(_label_variant(spacing=(0.8, 0.9, 1.6)), str(tiny_workspace / "labels/case1.nii.gz"))
    with pytest.raises(InputError) as info:
        validate_dataset(load_dataset(tiny_workspace))
    assert "case1" in info.value.message and "Resample the label" in info.value.hint


def test_grid_within_tolerance_passes(tiny_workspace):
    """Float32 storage noise (1e-6 relative) in the label's geometry is not a mismatch."""
    nudged_spacing = tuple(s * (1 + 1e-6) for s in TINY_SPACING)
    nudged_origin = tuple(o + 1e-5 for o in TINY_ORIGIN)
    sitk.WriteImage(_label_variant(spacing=nudged_spacing, origin=nudged_origin), str(tiny_workspace / "labels/case0.nii.gz"))
    validate_dataset(load_dataset(tiny_workspace))


def test_no_labelled_case(tiny_workspace):
    description = json.loads((tiny_workspace / "dataset.json").read_text())
    for case in description["cases"]:
        case["label"] = None
    _write_json(tiny_workspace, description)
    spec = load_dataset(tiny_workspace)
    with pytest.raises(InputError) as info:
        validate_dataset(spec)
    assert "no labelled case" in info.value.message and info.value.hint
    headers = validate_dataset(spec, require_labelled=False)
    assert headers["case2"].size == TINY_SIZE and headers["case2"].spacing == pytest.approx(TINY_SPACING)


# --------------------------------------------------------------------------------------- io
def _awkward_image(dtype=np.float32) -> sitk.Image:
    arr = np.arange(np.prod((5, 6, 7)), dtype=dtype).reshape(5, 6, 7)
    return xyz_image(arr, spacing=(0.7, 1.1, 2.5), origin=(3.25, -7.5, 12.0))


def test_to_array_axis_order():
    img = _awkward_image()
    arr = to_array(img)
    assert arr.shape == img.GetSize() == (5, 6, 7)
    for index in [(0, 0, 0), (4, 0, 0), (0, 5, 0), (0, 0, 6), (1, 2, 3), (4, 5, 6)]:
        assert arr[index] == img.GetPixel(*index)


def test_from_array_round_trip_keeps_geometry():
    img = _awkward_image()
    back = from_array(to_array(img), img)
    assert _geometry(back) == _geometry(img)
    assert back.GetDirection() == TINY_DIRECTION
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    assert from_array(np.zeros((5, 6, 7), bool), img).GetPixelID() == sitk.sitkUInt8


def test_write_image_atomic(tmp_path):
    img = _awkward_image()
    for name in ("out.nii.gz", "out.nrrd", "out.mha"):
        target = write_image_atomic(img, tmp_path / "sub" / name)
        back = read_image(target)
        np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), rtol=1e-6)
        np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-6)
        np.testing.assert_array_equal(to_array(back), to_array(img))
    write_image_atomic(img, tmp_path / "sub" / "out.nii.gz")  # overwriting works
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.mha", "out.nii.gz", "out.nrrd"]


def test_write_image_atomic_cleans_up_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        write_image_atomic(_awkward_image(), tmp_path / "out.unknownformat")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        write_image_atomic(_awkward_image(), tmp_path / "out.nhdr")


def test_read_image_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot be read") as info:
        read_image(tmp_path / "bad.nii.gz")
    assert "sitk::ERROR" not in info.value.message


def test_strip_image_extension():
    assert strip_image_extension("LA_001.nii.gz") == "LA_001"
    assert strip_image_extension("a.b.nrrd") == "a.b"
    assert strip_image_extension("x.mha") == "x" and strip_image_extension("x.nhdr") == "x"
    assert strip_image_extension("x.nii") == "x"


# ------------------------------------------------------------------------------- preprocess
def test_normalise_mr_zscore():
    arr = np.random.default_rng(0).normal(300.0, 40.0, (20, 20, 10))
    out = normalise_intensity(arr, "MR")
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1.0) < 1e-5
    np.testing.assert_allclose(out, (arr - arr.mean()) / arr.std(), atol=1e-5)
    assert np.array_equal(normalise_intensity(arr, "T2w"), out)  # unknown modality -> z-score


def test_normalise_mr_masked_uses_nonzero_voxels():
    arr = np.zeros((20, 20, 10))
    arr[5:10, 5:10, 2:8] = np.random.default_rng(1).normal(50.0, 10.0, (5, 5, 6))
    out = normalise_intensity(arr, "MR")
    inside = arr != 0
    assert np.all(out[~inside] == 0.0)
    assert abs(out[inside].mean()) < 1e-5 and abs(out[inside].std() - 1.0) < 1e-5


def test_normalise_constant_image_is_finite():
    out = normalise_intensity(np.full((4, 4, 4), 7.0), "MR")
    assert np.all(out == 0.0)


def test_normalise_ct_window():
    arr = np.array([-3000.0, -1000.0, 0.0, 500.0, 1000.0, 4000.0]).reshape(6, 1, 1)
    out = normalise_intensity(arr, "ct")
    np.testing.assert_allclose(out.ravel(), [-1.0, -1.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    out = normalise_intensity(arr, "CT", ct_window=(-100.0, 300.0))
    np.testing.assert_allclose(out.ravel(), [-1.0, -1.0, -0.5, 1.0, 1.0, 1.0], atol=1e-6)


def test_resample_round_trip_keeps_geometry():
    # A linear ramp along x is reproduced exactly by linear interpolation (away from the
    # far edge, where the coarse grid extends past the image).
    ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[:, None, None], TINY_SIZE).copy()
    img = xyz_image(ramp)
    coarse = resample_to_spacing(img, (1.6, 1.8, 3.0), is_label=False)
    assert coarse.GetSize() == (16, 16, 12)
    assert coarse.GetSpacing() == pytest.approx((1.6, 1.8, 3.0))
    assert coarse.GetOrigin() == img.GetOrigin() and coarse.GetDirection() == img.GetDirection()
    np.testing.assert_allclose(to_array(coarse)[:15, 0, 0], np.arange(0, 30, 2), atol=1e-4)
    back = resample_like(coarse, header_image(img), is_label=False)
    assert _geometry(back) == _geometry(img)
    # The last coarse voxel sits half a fine voxel inside the edge: compare the interior.
    np.testing.assert_allclose(to_array(back)[:29, :30, :22], ramp[:29, :30, :22], atol=1e-3)

    label = xyz_image(sphere_mask(TINY_SIZE, (14, 15, 11), 6).astype(np.uint8))
    coarse_label = resample_to_spacing(label, (1.6, 1.8, 3.0), is_label=True)
    assert coarse_label.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(to_array(coarse_label))) == {0, 1}
    back_label = resample_like(coarse_label, label, is_label=True)
    assert _geometry(back_label) == _geometry(label)
    # Nearest-neighbour down and up again keeps most of a 6-voxel sphere.
    overlap = np.logical_and(to_array(back_label), to_array(label)).sum()
    assert overlap / to_array(label).sum() > 0.7


def test_prepare_case(tiny_workspace):
    spec = load_dataset(tiny_workspace)
    prepared = prepare_case(spec.cases[0], spec.modality)
    assert prepared.id == "case0" and prepared.image.shape == TINY_SIZE == prepared.label.shape
    assert prepared.image.dtype == np.float32 and prepared.label.dtype == np.uint8
    assert abs(prepared.image.mean()) < 1e-4
    assert prepared.spacing == pytest.approx(TINY_SPACING)
    assert _geometry(prepared.reference) == _geometry(read_image(spec.cases[0].image))
    np.testing.assert_array_equal(prepared.label, sphere_mask(TINY_SIZE, (14, 15, 11), 6))

    coarse = prepare_case(spec.cases[0], spec.modality, target_spacing=(1.6, 1.8, 1.5))
    assert coarse.image.shape == (16, 16, 24) == coarse.label.shape
    assert coarse.spacing == pytest.approx((1.6, 1.8, 1.5))
    assert coarse.reference.GetSize() == TINY_SIZE
    assert prepare_case(spec.cases[0], spec.modality, with_label=False).label is None
    assert prepare_case(spec.cases[2], spec.modality).label is None


# --------------------------------------------------------------------------------- sampling
def _prepared(image, label=None, case_id="c") -> PreparedCase:
    ref = sitk.Image(list(image.shape), sitk.sitkUInt8)
    return PreparedCase(case_id, np.asarray(image, np.float32), None if label is None else np.asarray(label, np.uint8),
                        ref, (1.0, 1.0, 1.0))


def _sphere_case(size=(40, 40, 32), centre=(20, 20, 16), radius=5, case_id="c", seed=0):
    label = sphere_mask(size, centre, radius).astype(np.uint8)
    image = label * 2.0 + np.random.default_rng(seed).normal(0, 0.1, size)
    return _prepared(image, label, case_id)


def test_sampler_shapes_and_dtypes():
    sampler = PatchSampler([_sphere_case(), _sphere_case(seed=1)], [_sphere_case(seed=2)], (16, 16, 8), "cpu", seed=0)
    batch = sampler.sample(2, 3)
    assert batch.x_l.shape == (2, 1, 16, 16, 8) and batch.x_l.dtype == torch.float32
    assert batch.y_l.shape == (2, 16, 16, 8) and batch.y_l.dtype == torch.int64
    assert batch.x_u.shape == (3, 1, 16, 16, 8) and batch.x_u.dtype == torch.float32
    assert sampler.storage_device == torch.device("cpu") and sampler.resident_bytes == 3 * 40 * 40 * 32 * 4 + 2 * 40 * 40 * 32


def test_sampler_is_reproducible():
    cases = [_sphere_case(), _sphere_case(centre=(10, 12, 20), seed=1)]

    def batches(seed):
        sampler = PatchSampler(cases, [_sphere_case(seed=3)], (16, 16, 16), "cpu", seed=seed, noise=0.1)
        return [sampler.sample(2, 2) for _ in range(3)]

    first, second, other = batches(7), batches(7), batches(8)
    for a, b in zip(first, second):
        assert torch.equal(a.x_l, b.x_l) and torch.equal(a.y_l, b.y_l) and torch.equal(a.x_u, b.x_u)
    assert not all(torch.equal(a.x_l, c.x_l) for a, c in zip(first, other))


def test_sampler_one_labelled_case_no_unlabelled():
    sampler = PatchSampler([_sphere_case()], [], (16, 16, 16), "cpu", seed=0)
    batch = sampler.sample(4, 2)
    assert batch.x_l.shape == (4, 1, 16, 16, 16)
    assert batch.x_u.shape == (0, 1, 16, 16, 16)
    with pytest.raises(InputError):
        PatchSampler([], [_sphere_case()], (16, 16, 16), "cpu", seed=0)


def test_sampler_foreground_fraction():
    # A 3-voxel sphere in a 64^3 volume: a uniform 16^3 crop contains it only ~2-3 % of the time.
    case = _sphere_case(size=(64, 64, 64), centre=(50, 10, 30), radius=3)
    always = PatchSampler([case], [], (16, 16, 16), "cpu", seed=0, fg_fraction=1.0)
    assert all(bool((always.sample(2, 0).y_l.flatten(1) > 0).any(1).all()) for _ in range(20))
    never = PatchSampler([case], [], (16, 16, 16), "cpu", seed=0, fg_fraction=0.0)
    hits = sum(int((never.sample(2, 0).y_l.flatten(1) > 0).any(1).sum()) for _ in range(20))
    assert hits < 10
    half = PatchSampler([case], [], (16, 16, 16), "cpu", seed=0, fg_fraction=0.5)
    hits = sum(int((half.sample(1, 0).y_l > 0).any()) for _ in range(200))
    assert 70 < hits < 130  # about 100 foreground-centred, plus rare uniform hits


def _dihedral_variants(volume: torch.Tensor):
    """All images of ``volume`` (X, Y, Z) under 90-degree in-plane rotations and x/y flips."""
    variants = []
    for k in range(4):
        for flips in ((), (0,), (1,), (0, 1)):
            v = torch.rot90(volume, k, (0, 1))
            variants.append(torch.flip(v, flips) if flips else v)
    return variants


def test_sampler_augmentation_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (16, 16, 8)).astype(np.uint8)  # asymmetric: every transform shows
    case = _prepared(label * 10.0, label)
    sampler = PatchSampler([case], [_prepared(label * 10.0)], (16, 16, 8), "cpu", seed=0)
    variants = _dihedral_variants(torch.from_numpy(label).long())
    seen = set()
    for _ in range(15):
        batch = sampler.sample(4, 2)
        assert torch.equal(batch.x_l[:, 0], batch.y_l.float() * 10)
        for patch in batch.y_l:
            matches = [i for i, v in enumerate(variants) if torch.equal(patch, v)]
            assert matches, "patch is not a rotation/flip of the volume"
            seen.add(matches[0])
        for patch in batch.x_u[:, 0]:
            assert any(torch.equal(patch, v.float() * 10) for v in variants)
    assert len(seen) >= 6  # rotations and flips are actually applied


def test_sampler_without_augmentation_returns_plain_crops():
    label = np.random.default_rng(0).integers(0, 2, (16, 12, 8)).astype(np.uint8)
    sampler = PatchSampler([_prepared(label * 1.0, label)], [], (16, 12, 8), "cpu", seed=0, rotate90=False, flip=False)
    assert torch.equal(sampler.sample(2, 0).y_l, torch.from_numpy(label).long().expand(2, -1, -1, -1))


def test_sampler_rotation_only_for_square_in_plane_patch():
    label = np.random.default_rng(0).integers(0, 2, (16, 12, 8)).astype(np.uint8)
    sampler = PatchSampler([_prepared(label * 1.0, label)], [], (16, 12, 8), "cpu", seed=0, flip=False)
    for _ in range(5):
        assert torch.equal(sampler.sample(2, 0).y_l[0], torch.from_numpy(label).long())


def test_sampler_pads_small_volumes():
    label = np.zeros((10, 12, 5), np.uint8)
    label[2:5, 3:9, 1:4] = 1
    image = np.where(label > 0, 3.0, -1.5) + 0.0
    image[0, 0, 0] = -2.0  # the minimum: padding value
    sampler = PatchSampler([_prepared(image, label)], [_prepared(image)], (16, 16, 16), "cpu", seed=0)
    batch = sampler.sample(2, 1)
    assert batch.x_l.shape == (2, 1, 16, 16, 16) and batch.x_u.shape == (1, 1, 16, 16, 16)
    assert torch.all(batch.y_l.flatten(1).sum(1) == int(label.sum()))  # the whole volume is inside
    x = batch.x_l[0, 0]
    assert int((x == -2.0).sum()) == 16**3 - image.size + 1 and int((x == 3.0).sum()) == int(label.sum())


def test_sampler_replace_cases():
    sampler = PatchSampler([_sphere_case()], [], (16, 16, 16), "cpu", seed=0)
    constant = _prepared(np.full((20, 20, 20), 7.0), np.ones((20, 20, 20)))
    sampler.replace_cases([constant], [constant, constant])
    batch = sampler.sample(2, 2)
    assert torch.all(batch.x_l == 7.0) and torch.all(batch.y_l == 1) and torch.all(batch.x_u == 7.0)
    assert sampler.num_labelled == 1 and sampler.num_unlabelled == 2


def test_sampler_noise():
    flat = _prepared(np.zeros((16, 16, 16)), np.zeros((16, 16, 16)))
    batch = PatchSampler([flat], [flat], (16, 16, 16), "cpu", seed=0, noise=0.1).sample(2, 2)
    assert abs(float(batch.x_l.std()) - 0.1) < 0.01 and abs(float(batch.x_u.std()) - 0.1) < 0.01


def test_sampler_keeps_volumes_on_cpu_when_gpu_memory_is_short(monkeypatch, caplog):
    """The residency decision alone (no GPU here): volumes go to the GPU only when they take
    at most half of its free memory."""
    case = _sphere_case(size=(40, 40, 32))  # 51200 voxels * (4 + 1) bytes = 256000 bytes
    sampler = PatchSampler([case], [], (16, 16, 16), "cpu", seed=0)
    sampler.device = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (512_000, 10**9))
    assert sampler._choose_storage([case]) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (511_999, 10**9))
    with caplog.at_level(logging.WARNING, logger="semisupseg.data.sampling"):
        assert sampler._choose_storage([case]) == torch.device("cpu")
    assert "CPU memory" in caplog.text


def test_sampler_on_prepared_workspace(tiny_workspace):
    spec = load_dataset(tiny_workspace)
    prepared = [prepare_case(c, spec.modality) for c in spec.cases]
    sampler = PatchSampler(prepared[:2], prepared[2:], (16, 16, 16), "cpu", seed=0, fg_fraction=1.0)
    batch = sampler.sample(2, 2)
    assert torch.all(batch.y_l.flatten(1).amax(1) == 1)
    # Foreground is bright in the image (100 + 50 vs 100, noise 5): the label marks it.
    assert float(batch.x_l[:, 0][batch.y_l == 1].mean()) > float(batch.x_l[:, 0][batch.y_l == 0].mean()) + 2


# ------------------------------------------------------------------------------- patch size
@pytest.mark.parametrize("on_gpu", [False, True])
@pytest.mark.parametrize(
    "shapes, spacings",
    [
        ([(183, 140, 88), (199, 143, 88), (160, 130, 88)], [(0.625, 0.625, 0.625)] * 3),
        ([(256, 256, 30)] * 2, [(0.8, 0.8, 5.0)] * 2),
        ([(512, 512, 300)], [(0.7, 0.7, 1.0)]),
        ([(32, 32, 24)], [(0.8, 0.9, 1.5)]),
        ([(400, 30, 20)], [(1.0, 1.0, 1.0)]),
    ],
)
def test_default_patch_size_rules(shapes, spacings, on_gpu):
    patch = default_patch_size(shapes, spacings, on_gpu=on_gpu)
    budget = 112 * 112 * 80 if on_gpu else 64 * 64 * 48
    assert len(patch) == 3 and all(p % 16 == 0 and p >= 16 for p in patch)
    assert math.prod(patch) <= budget
    median = np.median(np.asarray(shapes), axis=0)
    assert all(p <= math.ceil(m / 16) * 16 for p, m in zip(patch, median))  # never larger than needed


def test_default_patch_size_examples():
    la = ([(183, 140, 88)], [(0.625,) * 3])
    assert default_patch_size(*la, on_gpu=False) == (64, 64, 48)
    assert default_patch_size(*la, on_gpu=True) == (96, 96, 96)
    # Small volumes: the median shape rounded up to a multiple of 16.
    assert default_patch_size([(32, 32, 24)], [(0.8, 0.9, 1.5)]) == (32, 32, 32)
    # Coarse z (5 mm): fewer voxels along z, in-plane square.
    x, y, z = default_patch_size([(256, 256, 30)], [(0.8, 0.8, 5.0)], on_gpu=True)
    assert x == y and z < x and z * 5.0 >= 0.5 * x * 0.8
    assert default_patch_size(*la, divisor=8, max_voxels=32**3) == (32, 32, 32)


@pytest.mark.realdata
def test_real_la2018_spec_validates():
    if not (LA2018 / "dataset.json").is_file():
        pytest.skip(f"{LA2018} is absent")
    spec = load_dataset(LA2018)
    assert spec.layout == "msd" and spec.num_classes == 2 and spec.modality == "MR"
    assert len(spec.cases) == 80 and all(c.label is not None for c in spec.cases)
    assert spec.cases[0].id == "LA_06SR5RBREL16DQ6M8LWS"
    headers = validate_dataset(spec, spec.cases[:2])
    assert all(h.spacing == pytest.approx((0.625,) * 3) for h in headers.values())
