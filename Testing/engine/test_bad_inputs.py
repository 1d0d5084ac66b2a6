"""A corpus of bad and odd workspaces, each run through ``semisupseg train`` as a user's files
might arrive (issue 16).

Every bad workspace must give exit code 2, one ``error`` event whose message names the case or
the file (and says what is wrong), no traceback, and leave the workspace byte-identical: no file
changed, none added (not even an empty ``runs/<id>/`` folder). Odd but usable inputs (an
all-background label, an unknown modality, a volume smaller than any patch the network takes)
must train to the end.

The runs go through ``semisupseg.cli.main`` in this process (the CLI's own exception handling,
stdout and stderr captured at the file-descriptor level, so a traceback printed anywhere would
be seen); one test runs the real console command in a subprocess as well. All runs share one tiny
configuration (2 iterations of a 4-channel U-Net on CPU); most cases stop at validation.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from semisupseg.cli import main
from semisupseg.data.io import IncompleteImageError, check_image_complete
from semisupseg.data.patch_size import default_patch_size
from semisupseg.networks import NETWORKS, build_network, patch_rule

REPO = Path(__file__).resolve().parents[2]
SIZE = (20, 20, 12)  # (x, y, z) voxels of the base cases
SPACING = (1.0, 1.0, 2.0)
ORIGIN = (-10.0, 5.0, 3.0)
TINY_CONFIG = {
    "network_options": {"widths": [4, 8, 16, 32, 64]},
    "batch_labelled": 1,
    "batch_unlabelled": 1,
    "log_every": 1,
    "checkpoint_every": 0,
    "device": "cpu",
}


# ---------------------------------------------------------------------------- the base workspace
def xyz_image(array_xyz: np.ndarray, spacing=SPACING, origin=ORIGIN) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz).transpose(2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def cube(size=SIZE) -> np.ndarray:
    """uint8 (x, y, z): a box of foreground in the middle of the volume."""
    mask = np.zeros(size, np.uint8)
    mask[size[0] // 4 : 3 * size[0] // 4, size[1] // 4 : 3 * size[1] // 4, size[2] // 4 : 3 * size[2] // 4] = 1
    return mask


def write_case(ws: Path, case_id: str, size=SIZE, labelled=True, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    mask = cube(size)
    image = (100.0 + 50.0 * mask + rng.normal(0.0, 5.0, size)).astype(np.float32)
    sitk.WriteImage(xyz_image(image), str(ws / "images" / f"{case_id}.nii.gz"))
    label = None
    if labelled:
        label = f"labels/{case_id}.nii.gz"
        sitk.WriteImage(xyz_image(mask), str(ws / label))
    return {"id": case_id, "image": f"images/{case_id}.nii.gz", "label": label}


def write_workspace(ws: Path, size=SIZE) -> Path:
    """c0 and c1 labelled, c2 unlabelled; float32 MR-like images, uint8 labels, .nii.gz."""
    (ws / "images").mkdir(parents=True)
    (ws / "labels").mkdir()
    cases = [write_case(ws, f"c{i}", size, labelled=i < 2, seed=i) for i in range(3)]
    dataset = {"name": "corpus", "modality": {"0": "MR"}, "labels": {"0": "background", "1": "box"}, "cases": cases}
    write_dataset(ws, dataset)
    return ws


def read_dataset(ws: Path) -> dict:
    return json.loads((ws / "dataset.json").read_text())


def write_dataset(ws: Path, dataset) -> None:
    (ws / "dataset.json").write_text(json.dumps(dataset, indent=1))


def edit_case(ws: Path, case_id: str, **fields) -> None:
    dataset = read_dataset(ws)
    case = next(c for c in dataset["cases"] if c["id"] == case_id)
    case.update(fields)
    write_dataset(ws, dataset)


def snapshot(ws: Path, skip_runs: bool = False) -> Dict[str, str]:
    """sha256 of every file and a marker for every folder under ``ws``, by relative path."""
    found = {}
    for path in sorted(ws.rglob("*")):
        rel = path.relative_to(ws).as_posix()
        if skip_runs and (rel == "runs" or rel.startswith("runs/")):
            continue
        found[rel] = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# -------------------------------------------------------------------------------- file damage
def keep_bytes(path: Path, count: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:count])


def cut_in_half(path: Path) -> None:
    keep_bytes(path, path.stat().st_size // 2)


def flip_byte_in_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def rewrite(ws: Path, case_id: str, role: str, extension: str, compress: bool = True, transform=None) -> Path:
    """Write the case's image or label again as ``<case_id><extension>`` and point dataset.json at it."""
    old = ws / next(c for c in read_dataset(ws)["cases"] if c["id"] == case_id)[role]
    img = sitk.ReadImage(str(old))
    for key in img.GetMetaDataKeys():  # NIfTI fields that MetaImage would warn about
        img.EraseMetaData(key)
    if transform is not None:
        img = transform(img)
    new = old.with_name(case_id + extension)
    if new != old:
        old.unlink()
    sitk.WriteImage(img, str(new), useCompression=compress)
    edit_case(ws, case_id, **{role: new.relative_to(ws).as_posix()})
    return new


def with_array(img: sitk.Image, change: Callable[[np.ndarray], np.ndarray], vector: bool = False) -> sitk.Image:
    """``img`` with its (z, y, x) voxel array changed; geometry kept."""
    out = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(img)), isVector=vector)
    out.SetSpacing(img.GetSpacing())
    out.SetOrigin(img.GetOrigin())
    out.SetDirection(img.GetDirection())
    return out


def image_of(ws: Path, case_id: str = "c0") -> Path:
    return ws / "images" / f"{case_id}.nii.gz"


def label_of(ws: Path, case_id: str = "c0") -> Path:
    return ws / "labels" / f"{case_id}.nii.gz"


def change_label_geometry(ws: Path, **geometry) -> None:
    label = sitk.ReadImage(str(label_of(ws)))
    if "spacing" in geometry:
        label.SetSpacing(geometry["spacing"])
    if "origin" in geometry:
        label.SetOrigin(geometry["origin"])
    if "direction" in geometry:
        label.SetDirection(geometry["direction"])
    sitk.WriteImage(label, str(label_of(ws)))


def fake_dicom_folder(ws: Path, role: str) -> None:
    """The case's path names a folder of DICOM slices (what an unconverted series looks like)."""
    folder = ws / ("images" if role == "image" else "labels") / "c0_series"
    folder.mkdir()
    for number in range(3):
        (folder / f"IM{number:04d}.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(64))
    edit_case(ws, "c0", **{role: folder.relative_to(ws).as_posix()})


def truncated_detached_nrrd(ws: Path) -> None:
    header = rewrite(ws, "c0", "image", ".nhdr")
    data_files = [p for p in header.parent.glob("c0.*") if p.suffix != ".nhdr"]
    assert len(data_files) == 1
    cut_in_half(data_files[0])


def nhdr_without_its_data_file(ws: Path) -> None:
    header = rewrite(ws, "c0", "image", ".nhdr")
    for data in header.parent.glob("c0.*"):
        if data.suffix != ".nhdr":
            data.unlink()


def nifti_missing_gzip_trailer(path: Path) -> None:
    keep_bytes(path, path.stat().st_size - 4)


def set_label_value(ws: Path, value) -> None:
    label = sitk.ReadImage(str(label_of(ws)))
    dtype = np.float32 if isinstance(value, float) else np.uint8
    sitk.WriteImage(with_array(label, lambda a: np.where(a > 0, value, 0).astype(dtype)), str(label_of(ws)))


def nan_in_nrrd_image(ws: Path) -> None:
    def poke(a):
        a = a.astype(np.float32)
        a[3, 4, 5] = np.nan
        return a

    rewrite(ws, "c0", "image", ".nrrd", transform=lambda img: with_array(img, poke))


def set_dataset(ws: Path, change: Callable[[dict], None]) -> None:
    dataset = read_dataset(ws)
    change(dataset)
    write_dataset(ws, dataset)


def write_config(folder: Path, **extra) -> Path:
    path = folder / "corpus_config.json"
    path.write_text(json.dumps({**TINY_CONFIG, **extra}))
    return path


# ------------------------------------------------------------------------------------ the corpus
# name -> (damage(ws), words the message must contain (case-insensitive), config overrides)
BAD: Dict[str, tuple] = {
    # files that are not there, or not files
    "image_missing": (lambda ws: image_of(ws).unlink(), ["'c0'", "images/c0.nii.gz", "does not exist"], {}),
    "label_missing": (lambda ws: label_of(ws).unlink(), ["'c0'", "labels/c0.nii.gz", "does not exist"], {}),
    "image_is_dicom_folder": (lambda ws: fake_dicom_folder(ws, "image"), ["'c0'", "images/c0_series", "is a folder",
                                                                          "dicom series"], {}),
    "label_is_folder": (lambda ws: fake_dicom_folder(ws, "label"), ["'c0'", "labels/c0_series", "is a folder"], {}),
    "image_not_an_image": (lambda ws: image_of(ws).write_text("not an image"), ["'c0'", "images/c0.nii.gz",
                                                                                 "cannot be read"], {}),
    "image_empty_file": (lambda ws: image_of(ws).write_bytes(b""), ["'c0'", "images/c0.nii.gz", "cannot be read"], {}),
    "image_unknown_format": (
        lambda ws: (image_of(ws).rename(ws / "images" / "c0.xyz"), edit_case(ws, "c0", image="images/c0.xyz")),
        ["'c0'", "images/c0.xyz", "cannot be read"], {}),
    # truncated or damaged files, in every format the engine reads
    "image_nii_gz_cut_in_half": (lambda ws: cut_in_half(image_of(ws)), ["'c0'", "images/c0.nii.gz", "truncated",
                                                                         "header promises"], {}),
    "label_nii_gz_cut_in_half": (lambda ws: cut_in_half(label_of(ws)), ["'c0'", "labels/c0.nii.gz", "truncated"], {}),
    "label_nii_gz_without_trailer": (lambda ws: nifti_missing_gzip_trailer(label_of(ws)),
                                     ["'c0'", "labels/c0.nii.gz", "before the end of the stream"], {}),
    "image_nii_gz_corrupt_byte": (lambda ws: flip_byte_in_middle(image_of(ws)), ["'c0'", "images/c0.nii.gz",
                                                                                  "corrupt"], {}),
    "image_nii_uncompressed_cut": (lambda ws: cut_in_half(rewrite(ws, "c0", "image", ".nii", compress=False)),
                                   ["'c0'", "images/c0.nii", "truncated"], {}),
    "image_nrrd_gzip_cut": (lambda ws: cut_in_half(rewrite(ws, "c0", "image", ".nrrd")), ["'c0'", "images/c0.nrrd",
                                                                                           "truncated"], {}),
    "label_nrrd_raw_cut": (lambda ws: cut_in_half(rewrite(ws, "c0", "label", ".nrrd", compress=False)),
                           ["'c0'", "labels/c0.nrrd", "truncated"], {}),
    "image_mha_compressed_cut": (lambda ws: cut_in_half(rewrite(ws, "c0", "image", ".mha")), ["'c0'", "images/c0.mha",
                                                                                              "truncated"], {}),
    "image_mha_compressed_corrupt": (lambda ws: flip_byte_in_middle(rewrite(ws, "c0", "image", ".mha")),
                                     ["'c0'", "images/c0.mha", "corrupt"], {}),
    "image_nhdr_data_cut": (truncated_detached_nrrd, ["'c0'", "images/c0.nhdr", "truncated"], {}),
    "image_nhdr_data_missing": (nhdr_without_its_data_file, ["'c0'", "images/c0.nhdr", "c0.raw.gz"], {}),
    # wrong kind of volume
    "image_single_slice": (lambda ws: rewrite(ws, "c0", "image", ".nii.gz", transform=lambda img: img[:, :, 4:5]),
                           ["'c0'", "images/c0.nii.gz", "single slice"], {}),
    "image_2d": (lambda ws: rewrite(ws, "c0", "image", ".nii.gz", transform=lambda img: img[:, :, 4]),
                 ["'c0'", "images/c0.nii.gz", "2d"], {}),
    "image_4d": (lambda ws: rewrite(ws, "c0", "image", ".nii.gz", transform=lambda img: sitk.JoinSeries([img, img])),
                 ["'c0'", "images/c0.nii.gz", "4d"], {}),
    "image_rgb": (lambda ws: rewrite(ws, "c0", "image", ".nii.gz", transform=lambda img: with_array(
        img, lambda a: np.stack([a, a, a], -1).astype(np.uint8), vector=True)),
        ["'c0'", "images/c0.nii.gz", "3 components"], {}),
    "image_nan_voxel": (nan_in_nrrd_image, ["'c0'", "images/c0.nrrd", "nan or infinite"], {}),
    # labels that do not fit their image or the dataset
    "label_other_size": (lambda ws: sitk.WriteImage(xyz_image(cube((20, 20, 10))), str(label_of(ws))),
                         ["'c0'", "labels/c0.nii.gz", "size differs"], {}),
    "label_other_spacing": (lambda ws: change_label_geometry(ws, spacing=(1.0, 1.0, 3.0)),
                            ["'c0'", "labels/c0.nii.gz", "spacing differs"], {}),
    "label_other_origin": (lambda ws: change_label_geometry(ws, origin=(0.0, 0.0, 0.0)),
                           ["'c0'", "labels/c0.nii.gz", "origin differs"], {}),
    "label_other_direction": (lambda ws: change_label_geometry(ws, direction=(0, 1, 0, 1, 0, 0, 0, 0, 1)),
                              ["'c0'", "labels/c0.nii.gz", "direction differs"], {}),
    "label_undeclared_value": (lambda ws: set_label_value(ws, 3), ["'c0'", "labels/c0.nii.gz", "value(s) 3"], {}),
    "label_fractional_value": (lambda ws: set_label_value(ws, 0.5), ["'c0'", "labels/c0.nii.gz", "0.5"], {}),
    # dataset.json problems
    "dataset_json_missing": (lambda ws: (ws / "dataset.json").unlink(), ["dataset.json"], {}),
    "dataset_json_invalid": (lambda ws: (ws / "dataset.json").write_text('{"cases": [,]}'), ["dataset.json",
                                                                                            "not valid json"], {}),
    "dataset_json_a_list": (lambda ws: (ws / "dataset.json").write_text("[]"), ["dataset.json", "json object"], {}),
    "dataset_no_case_list": (lambda ws: set_dataset(ws, lambda d: d.pop("cases")), ["dataset.json", "'cases'"], {}),
    "dataset_no_labels": (lambda ws: set_dataset(ws, lambda d: d.pop("labels")), ["dataset.json", "'labels'"], {}),
    "dataset_label_gap": (lambda ws: set_dataset(ws, lambda d: d.update(labels={"0": "bg", "2": "box"})),
                          ["dataset.json", "without gaps"], {}),
    "dataset_one_label": (lambda ws: set_dataset(ws, lambda d: d.update(labels={"0": "bg"})), ["dataset.json",
                                                                                               "1 label"], {}),
    "dataset_duplicate_id": (lambda ws: set_dataset(ws, lambda d: d["cases"][1].update(id="c0")),
                             ["dataset.json", "'c0'", "more than once"], {}),
    "dataset_id_with_slash": (lambda ws: set_dataset(ws, lambda d: d["cases"][0].update(id="a/b")),
                              ["dataset.json", "'a/b'"], {}),
    "dataset_case_without_image": (lambda ws: set_dataset(ws, lambda d: d["cases"][0].pop("image")),
                                   ["dataset.json", "case number 0"], {}),
    "dataset_label_not_a_path": (lambda ws: set_dataset(ws, lambda d: d["cases"][0].update(label=5)),
                                 ["dataset.json", "'c0'"], {}),
    "dataset_no_labelled_case": (lambda ws: set_dataset(ws, lambda d: [c.update(label=None) for c in d["cases"]]),
                                 ["dataset.json", "no labelled case"], {}),
    # configurations the network cannot train with
    "patch_16_cubed_unet3d": (lambda ws: None, ["patch_size [16, 16, 16]", "unet3d", "[16, 16, 32]"],
                              {"patch_size": [16, 16, 16]}),
    "patch_not_multiple_of_16": (lambda ws: None, ["patch_size", "multiples of 16"], {"patch_size": [24, 24, 24]}),
    "split_more_labelled_than_exist": (lambda ws: None, ["split.labelled", "2"], {"split": {"labelled": 5}}),
}


@pytest.fixture(scope="module")
def base_workspace(tmp_path_factory) -> Path:
    return write_workspace(tmp_path_factory.mktemp("base") / "workspace")


def fresh_copy(base: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    shutil.copytree(base, ws)
    return ws


def run_cli(ws: Path, config: Path, capfd, *args: str) -> tuple:
    """``semisupseg train`` in this process: (exit code, events, stderr)."""
    code = main(["train", "--workspace", str(ws), "--config", str(config), "--iterations", "2", *args])
    out, err = capfd.readouterr()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return code, events, err


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_workspace_is_refused_with_one_message_and_left_untouched(name, base_workspace, tmp_path, capfd, one_thread):
    damage, words, config = BAD[name]
    ws = fresh_copy(base_workspace, tmp_path)
    damage(ws)
    before = snapshot(ws)
    code, events, err = run_cli(ws, write_config(tmp_path, **config), capfd)
    assert code == 2, (name, err)
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and errors[-1] is events[-1], events
    message = errors[0]["message"].lower()
    for word in words:
        assert word.lower() in message, (name, word, errors[0]["message"])
    assert errors[0]["hint"]
    assert "Traceback" not in err
    assert snapshot(ws) == before  # nothing modified, nothing added (no runs/<id>/ either)


def test_corpus_is_large_enough():
    assert len(BAD) >= 30


def test_the_real_console_command_refuses_a_truncated_image_without_traceback(base_workspace, tmp_path):
    ws = fresh_copy(base_workspace, tmp_path)
    cut_in_half(image_of(ws, "c1"))
    before = snapshot(ws)
    proc = subprocess.run(
        [sys.executable, "-m", "semisupseg", "train", "--workspace", str(ws), "--config",
         str(write_config(tmp_path)), "--iterations", "2"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["event"] == "error" and "'c1'" in last["message"] and "images/c1.nii.gz" in last["message"]
    assert snapshot(ws) == before


# ------------------------------------------------------------------ odd inputs that must train
def all_background_label(ws: Path) -> None:
    for case_id in ("c0", "c1"):
        sitk.WriteImage(with_array(sitk.ReadImage(str(label_of(ws, case_id))), np.zeros_like), str(label_of(ws, case_id)))


def multi_member_gzip(ws: Path) -> None:
    """A valid gzip file of two members (``cat a.gz b.gz``): not truncated, must not be refused."""
    raw = gzip.decompress(image_of(ws).read_bytes())
    image_of(ws).write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))


def tiny_volumes(ws: Path) -> None:
    """Every case 8 x 8 x 4 voxels: smaller than the smallest patch the U-Net takes."""
    for number in range(3):
        case = write_case(ws, f"c{number}", size=(8, 8, 4), labelled=number < 2, seed=number)
        edit_case(ws, case["id"], **case)


ODD: Dict[str, tuple] = {
    "all_background_labels": (all_background_label, {}),
    "unknown_modality": (lambda ws: set_dataset(ws, lambda d: d.update(modality={"0": "PET"})), {}),
    "no_modality_at_all": (lambda ws: set_dataset(ws, lambda d: d.pop("modality")), {}),
    "multi_member_gzip_image": (multi_member_gzip, {}),
    "mixed_formats_and_float_label": (
        lambda ws: (rewrite(ws, "c0", "image", ".mha"), rewrite(ws, "c1", "image", ".nrrd"),
                    rewrite(ws, "c1", "label", ".nrrd", transform=lambda img: sitk.Cast(img, sitk.sitkFloat32))),
        {}),
    "tiny_volumes_automatic_patch": (tiny_volumes, {}),
    "vnet_takes_16_cubed": (lambda ws: None, {"network": "vnet", "network_options": {"n_filters": 4},
                                              "patch_size": [16, 16, 16]}),
}


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_but_usable_workspace_trains_to_the_end(name, base_workspace, tmp_path, capfd, one_thread):
    change, config = ODD[name]
    ws = fresh_copy(base_workspace, tmp_path)
    change(ws)
    before = snapshot(ws)
    code, events, err = run_cli(ws, write_config(tmp_path, **config), capfd, "--method", "dycon")
    assert code == 0, (name, events[-1:], err[-2000:])
    assert "Traceback" not in err
    assert events[-1]["event"] == "finished" and events[-1]["iterations"] == 2
    losses = [e["losses"]["loss"] for e in events if e["event"] == "progress"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert snapshot(ws, skip_runs=True) == before  # the user's files are untouched
    started = next(e for e in events if e["event"] == "started")
    predictions = Path(started["run_dir"]) / "predictions"
    for case in read_dataset(ws)["cases"]:
        image = sitk.ReadImage(str(ws / case["image"]))
        predicted = sitk.ReadImage(str(predictions / f"{case['id']}.nii.gz"))
        assert predicted.GetSize() == image.GetSize()  # padded for the network, cropped back
        assert np.allclose(predicted.GetSpacing(), image.GetSpacing())


def test_tiny_volumes_get_the_smallest_patch_the_network_takes(base_workspace, tmp_path, capfd, one_thread):
    ws = fresh_copy(base_workspace, tmp_path)
    tiny_volumes(ws)
    code, events, _ = run_cli(ws, write_config(tmp_path, predict_cases="none"), capfd, "--method", "supervised")
    assert code == 0
    started = next(e for e in events if e["event"] == "started")
    # 8 x 8 x 4 at 1 x 1 x 2 mm: every axis rounds up to 16; the unet3d needs a second bottleneck
    # voxel, and z (16 voxels = 32 mm) is physically the longest, so x and y grow together.
    assert started["patch_size"] == [32, 32, 16]


# ------------------------------------------------------ the networks and the patch rule agree
TINY_NETWORK_OPTIONS = {
    "unet3d": [{"widths": [2, 4, 8, 8, 8], "projection": False}],
    "vnet": [{"n_filters": 2, "projection": False, "normalization": n} for n in ("none", "batch", "instance")],
    "resnet_vnet": [{"base_width": 2, "blocks": [1, 1, 1, 1], "projection": False, "normalization": n}
                    for n in ("batch", "instance")],
    "unet2d": [{"widths": [2, 4, 8, 8, 8], "projection": False}],
}


def test_every_network_has_tiny_options_here():
    assert set(TINY_NETWORK_OPTIONS) == set(NETWORKS)


@pytest.mark.parametrize("name, options", [(n, o) for n, opts in TINY_NETWORK_OPTIONS.items() for o in opts])
def test_patch_rule_matches_what_the_network_can_train_on(name, options, one_thread):
    """A batch of one patch in training mode (the hardest case for normalisation): the smallest
    patch the rule accepts trains, and a patch the rule refuses for its size does fail."""
    rule = patch_rule(name, options)
    torch.manual_seed(0)
    net = build_network(name, 1, 2, **options).train()
    smallest = rule.smallest_patch()
    assert rule.problem(smallest) is None
    logits = net(torch.randn(1, 1, *smallest))
    logits.mean().backward()
    assert logits.shape == (1, 2, *smallest)
    cube16 = (rule.divisor,) * 3
    if rule.min_bottleneck_voxels > 1:
        assert "too small" in rule.problem(cube16) and str(list(smallest)) in rule.problem(cube16)
        with pytest.raises(ValueError, match="more than 1"):
            net(torch.randn(1, 1, *cube16))
    else:
        assert smallest == cube16
        assert net(torch.randn(1, 1, *cube16)).shape == (1, 2, *cube16)


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("shape, spacing", [((8, 8, 4), (1.0, 1.0, 1.0)), ((5, 7, 3), (0.8, 0.8, 5.0)),
                                            ((12, 9, 2), (0.7, 0.9, 3.0)), ((183, 140, 88), (0.625,) * 3)])
def test_default_patch_size_is_accepted_by_every_network(name, shape, spacing):
    rule = patch_rule(name, {})
    patch = default_patch_size([shape], [spacing], divisor=rule.axis_divisors,
                               min_bottleneck_voxels=rule.min_bottleneck_voxels, strides=rule.axis_strides)
    assert rule.problem(patch) is None
    if max(shape) <= rule.divisor:  # a tiny volume: grown only as far as the network needs
        cells = rule.bottleneck_voxels(patch)
        # (x and y grow together when they share a spacing, which can double the minimum)
        assert rule.min_bottleneck_voxels <= cells <= 2 * rule.min_bottleneck_voxels


def test_default_patch_size_grows_tiny_volumes_only_as_much_as_needed():
    assert default_patch_size([(8, 8, 4)], [(1.0, 1.0, 1.0)]) == (16, 16, 32)  # ties: z grows
    assert default_patch_size([(8, 8, 4)], [(0.8, 0.8, 5.0)]) == (32, 32, 16)  # x = y stay square
    assert default_patch_size([(8, 8, 4)], [(0.8, 0.9, 5.0)]) == (32, 16, 16)  # x is the shortest in mm
    assert default_patch_size([(8, 8, 4)], [(1.0, 1.0, 1.0)], min_bottleneck_voxels=1) == (16, 16, 16)


# ----------------------------------------------------------------- the completeness check itself
@pytest.mark.parametrize("extension, compress", [(".nii.gz", True), (".nii", False), (".nrrd", True),
                                                 (".nrrd", False), (".mha", True), (".mha", False)])
def test_every_format_passes_whole_and_fails_cut_by_one_byte(tmp_path, extension, compress):
    path = tmp_path / f"volume{extension}"
    sitk.WriteImage(xyz_image(np.arange(20 * 20 * 12, dtype=np.float32).reshape(SIZE)), str(path), useCompression=compress)
    check_image_complete(path)
    keep_bytes(path, path.stat().st_size - 1)
    with pytest.raises(IncompleteImageError):
        check_image_complete(path)


@pytest.mark.parametrize("header", [".nhdr", ".mhd"])
def test_detached_headers_check_their_data_file(tmp_path, header):
    path = tmp_path / f"volume{header}"
    sitk.WriteImage(xyz_image(np.ones(SIZE, np.int16)), str(path), useCompression=True)
    check_image_complete(path)
    (data,) = [p for p in tmp_path.iterdir() if p != path]
    cut_in_half(data)
    with pytest.raises(IncompleteImageError, match="header promises"):
        check_image_complete(path)


def test_truncation_message_counts_the_bytes(tmp_path):
    path = tmp_path / "volume.nii"
    sitk.WriteImage(xyz_image(np.zeros(SIZE, np.float32)), str(path))
    expected = 352 + 20 * 20 * 12 * 4  # vox_offset + voxels * 4 bytes
    assert path.stat().st_size == expected
    keep_bytes(path, 1000)
    with pytest.raises(IncompleteImageError, match=f"1,000 of the {expected:,} bytes"):
        check_image_complete(path)
