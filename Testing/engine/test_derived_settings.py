"""What a new run derives before preparing its data: the CPU training grid (data/training_grid.py),
the CPU U-Net widths, and a warm start's source settings (training/derived_settings.py)."""

from __future__ import annotations

import io
import json

import SimpleITK as sitk

from semisupseg.data.synthetic import generate_synthetic_workspace
from semisupseg.data.training_grid import SMALL_CASE_VOXELS, cpu_training_spacing
from semisupseg.events import EventWriter
from semisupseg.training.derived_settings import CPU_UNET_WIDTHS
from semisupseg.training.trainer import train_workspace

LA_CROP = (183, 140, 88)  # voxels, 0.625 mm isotropic (docs: default_patch_size)


def test_large_cases_get_at_least_the_minimum_spacing_per_axis():
    assert cpu_training_spacing([LA_CROP] * 3, [(0.625,) * 3] * 3, 2.0) == [2.0, 2.0, 2.0]
    # a thin-slab axis already coarser keeps its own spacing
    assert cpu_training_spacing([(232, 256, 9)], [(1.5, 1.5, 5.0)], 2.0) == [2.0, 2.0, 5.0]
    # medians: two fine cases and one coarse one give the fine cases' grid raised to the minimum
    assert cpu_training_spacing([LA_CROP] * 3, [(0.625,) * 3, (0.7,) * 3, (3.0,) * 3], 1.6) == [1.6, 1.6, 1.6]


def test_small_cases_coarse_cases_and_a_null_minimum_keep_the_image_grid():
    small = (64, 64, 32)
    assert 64 * 64 * 32 == SMALL_CASE_VOXELS
    assert cpu_training_spacing([small] * 2, [(0.5,) * 3] * 2, 2.0) is None
    assert cpu_training_spacing([LA_CROP], [(2.5, 2.5, 3.0)], 2.0) is None  # already coarser everywhere
    assert cpu_training_spacing([LA_CROP], [(0.625,) * 3], None) is None
    assert cpu_training_spacing([], [], 2.0) is None


TINY_WIDTHS = [4, 8, 16, 32, 64]


def run(workspace, run_id, **config):
    path = workspace.parent / f"{run_id}.json"
    path.write_text(json.dumps({"network_options": {"widths": TINY_WIDTHS}, "patch_size": [32, 32, 16],
                                "batch_labelled": 1, "batch_unlabelled": 1, "device": "cpu", "checkpoint_every": 0,
                                "predict_cases": "held_out", **config}))
    sink = EventWriter(stream=io.StringIO(), progress_bar=False)
    assert train_workspace(workspace, path, {"iterations": 1}, run_id, False, sink) == "finished"
    sink.close()
    return workspace / "runs" / run_id


def test_a_cpu_run_on_large_cases_trains_on_the_coarse_grid_and_predicts_on_the_image_grid(tmp_path, one_thread):
    size = (72, 64, 40)  # 184 320 voxels at 1 x 1 x 1.5 mm: above SMALL_CASE_VOXELS
    workspace = generate_synthetic_workspace(tmp_path / "ws", n_labelled=1, n_unlabelled=1, n_test=1, size=size, seed=5)
    coarse = run(workspace, "coarse")
    assert json.loads((coarse / "config.json").read_text())["target_spacing"] == [1.6, 1.6, 1.6]
    [prediction] = sorted((coarse / "predictions").glob("*.nii.gz"))
    assert sitk.ReadImage(str(prediction)).GetSize() == size  # back on the image's own grid
    native = run(workspace, "native", cpu_min_spacing_mm=None)
    assert json.loads((native / "config.json").read_text())["target_spacing"] is None


def test_a_cpu_run_takes_the_narrow_unet_unless_told_and_a_warm_start_takes_its_sources_settings(tmp_path, one_thread):
    workspace = generate_synthetic_workspace(tmp_path / "ws", n_labelled=1, n_unlabelled=1, n_test=1,
                                             size=(72, 64, 40), seed=6)
    source = run(workspace, "source")  # tiny widths, the 1.6 mm grid
    narrow = json.loads((run(workspace, "narrow", network_options={}) / "config.json").read_text())
    assert narrow["network_options"]["widths"] == CPU_UNET_WIDTHS == [8, 16, 32, 64, 128]
    warm = json.loads((run(workspace, "warm", network_options={}, init_from="source") / "config.json").read_text())
    assert warm["network_options"]["widths"] == TINY_WIDTHS  # the source's network, not the CPU default
    assert warm["target_spacing"] == [1.6, 1.6, 1.6] and warm["init_from"] == str(source.resolve())
    native = run(workspace, "native-source", cpu_min_spacing_mm=None)
    again = json.loads((run(workspace, "warm-native", init_from="native-source") / "config.json").read_text())
    assert again["target_spacing"] is None  # the source trained on the image grid: so does the warm start
