"""Synthetic workspace generator: determinism, plausibility, geometry, dataset.json, CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk

from semisupseg.data.synthetic import generate_synthetic_workspace, synthesize_case
from semisupseg.data.synthetic_cli import add_synth_parser
from semisupseg.errors import InputError

SIZE = (48, 48, 32)
SPACING = (0.8, 0.9, 1.5)


def xyz(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ws"
    returned = generate_synthetic_workspace(out, n_labelled=2, n_unlabelled=2, n_test=2, size=SIZE,
                                            spacing=SPACING, num_classes=3, seed=5)
    assert returned == out
    return out


def test_same_seed_same_case_other_seed_other_case():
    a = synthesize_case(1, seed=7, size=SIZE)
    b = synthesize_case(1, seed=7, size=SIZE)
    c = synthesize_case(1, seed=8, size=SIZE)
    d = synthesize_case(2, seed=7, size=SIZE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.origin == b.origin and a.direction == b.direction
    for other in (c, d):
        assert not np.array_equal(a.image, other.image)
        assert not np.array_equal(a.label, other.label)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_labels_are_present_and_plausibly_sized(num_classes):
    for index in range(3):
        case = synthesize_case(index, seed=0, size=SIZE, num_classes=num_classes)
        assert case.image.shape == SIZE and case.image.dtype == np.int16
        assert case.label.shape == SIZE and case.label.dtype == np.uint8
        assert set(np.unique(case.label)) == set(range(num_classes))
        for value in range(1, num_classes):
            assert 0.01 <= (case.label == value).mean() <= 0.15
        # one connected atrium
        components = sitk.GetArrayFromImage(
            sitk.ConnectedComponent(sitk.GetImageFromArray((case.label == 1).astype(np.uint8)), True)
        ).max()
        assert components == 1


def test_foreground_brighter_but_not_separable_by_a_threshold():
    for index in range(3):
        case = synthesize_case(index, seed=0, size=SIZE, num_classes=2)
        image, foreground = case.image.astype(np.float64), case.label == 1
        assert image[foreground].mean() > image[~foreground].mean() + 200
        assert (image[~foreground] > np.median(image[foreground])).sum() > 50  # distractors
        best_dice = max(
            2 * (foreground & (image > t)).sum() / (foreground.sum() + (image > t).sum())
            for t in np.quantile(image, np.linspace(0.5, 0.999, 100))
        )
        assert best_dice < 0.85


def test_ct_intensities_are_hounsfield_like():
    case = synthesize_case(0, seed=0, size=SIZE, modality="CT")
    assert case.image.min() < -900  # air
    assert 150 < np.median(case.image[case.label == 1]) < 450  # contrast-enhanced blood


def test_dataset_json_lists_cases_labels_and_held_out(workspace):
    description = json.loads((workspace / "dataset.json").read_text())
    assert description["modality"] == {"0": "MR"}
    assert description["labels"] == {"0": "background", "1": "atrium", "2": "vessel"}
    cases = description["cases"]
    assert [c["id"] for c in cases] == [f"synth_{i:03d}" for i in range(6)]
    assert [c["label"] is not None for c in cases] == [True, True, False, False, False, False]
    assert description["held_out"] == ["synth_004", "synth_005"]
    for case in cases:
        assert (workspace / case["image"]).is_file()
        assert (workspace / "truth" / f"{case['id']}.nii.gz").is_file()
        if case["label"]:
            assert case["label"] == f"labels/{case['id']}.nii.gz" and (workspace / case["label"]).is_file()
    assert sorted(p.name for p in (workspace / "labels").iterdir()) == ["synth_000.nii.gz", "synth_001.nii.gz"]
    assert not list(workspace.rglob(".*tmp*"))  # no temporary files left behind


def test_workspace_is_readable_by_load_dataset(workspace):
    from semisupseg.data.dataset import load_dataset

    spec = load_dataset(workspace)
    assert spec.num_classes == 3 and spec.modality == "MR" and spec.layout == "workspace"
    assert len(spec.cases) == 6 and sum(c.label is not None for c in spec.cases) == 2


def test_files_carry_the_requested_geometry_and_the_generated_arrays(workspace):
    for index in range(4):
        case_id = f"synth_{index:03d}"
        image = sitk.ReadImage(str(workspace / "images" / f"{case_id}.nii.gz"))
        truth = sitk.ReadImage(str(workspace / "truth" / f"{case_id}.nii.gz"))
        assert image.GetSize() == SIZE
        np.testing.assert_allclose(image.GetSpacing(), SPACING, rtol=1e-5)
        assert np.abs(image.GetOrigin()).max() > 1.0
        direction = np.array(image.GetDirection()).reshape(3, 3)
        np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-5)
        assert np.allclose(direction, np.eye(3), atol=1e-4) == (index % 2 == 0)
        for key in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            np.testing.assert_allclose(getattr(truth, key)(), getattr(image, key)(), atol=1e-5)
        expected = synthesize_case(index, seed=5, size=SIZE, spacing=SPACING, num_classes=3)
        assert np.array_equal(xyz(image), expected.image)
        assert np.array_equal(xyz(truth), expected.label)
        if index < 2:
            label = sitk.ReadImage(str(workspace / "labels" / f"{case_id}.nii.gz"))
            assert np.array_equal(xyz(label), expected.label)


def test_invalid_arguments_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="classes"):
        generate_synthetic_workspace(tmp_path, num_classes=4)
    with pytest.raises(InputError, match="size"):
        generate_synthetic_workspace(tmp_path, size=(8, 48, 32))
    with pytest.raises(InputError, match="at least one case"):
        generate_synthetic_workspace(tmp_path, n_labelled=0, n_unlabelled=0, n_test=0)
    assert not any(tmp_path.iterdir())


def test_synth_cli_writes_a_workspace(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="semisupseg")
    add_synth_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(["synth", "--out", str(out), "--labelled", "1", "--unlabelled", "1",
                              "--test", "0", "--size", "32", "32", "16", "--seed", "3"])
    assert args.func(args) == 0
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert event["event"] == "finished" and event["cases"] == 2
    description = json.loads((out / "dataset.json").read_text())
    assert len(description["cases"]) == 2 and description["held_out"] == []
    assert sitk.ReadImage(str(out / "images" / "synth_001.nii.gz")).GetSize() == (32, 32, 16)
