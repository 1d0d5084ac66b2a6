"""Checks of the benchmark helpers: AUROC by ranks, box statistics, docs/benchmarks.md regeneration."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
import run_benchmarks as rb  # noqa: E402


def pairwise_auroc(scores, labels) -> float:
    """Independent definition: share of (positive, negative) pairs ordered right, ties = 1/2."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_hand_example():
    # positives 0.8, 0.4; negatives 0.1, 0.4, 0.35. Pairs: (0.8 beats all 3) = 3,
    # (0.4 beats 0.1 and 0.35, ties 0.4) = 2.5  -> 5.5 / 6
    scores = [0.8, 0.1, 0.4, 0.4, 0.35]
    labels = [1, 0, 1, 0, 0]
    assert bc.auroc(scores, labels) == pytest.approx(5.5 / 6)


def test_auroc_extremes_and_random_agree_with_pairs():
    assert bc.auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert bc.auroc([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1]) == 0.0
    assert bc.auroc([0.5] * 6, [1, 0, 1, 0, 0, 1]) == 0.5
    assert np.isnan(bc.auroc([0.1, 0.2], [0, 0]))
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 60) / 5.0  # many ties
    labels = rng.random(60) < 0.3
    assert bc.auroc(scores, labels) == pytest.approx(pairwise_auroc(scores, labels))


def test_mid_ranks_share_ties():
    np.testing.assert_allclose(bc.mid_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])


def test_fraction_in_boxes_and_random_boxes():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[0:2, 0:2, 0:2] = True  # 8 voxels
    mask[9, 9, 9] = True  # 1 voxel
    assert bc.fraction_in_boxes(mask, [([0, 0, 0], [1, 1, 0])]) == pytest.approx(4 / 9)
    assert bc.fraction_in_boxes(mask, [([0, 0, 0], [1, 1, 1]), ([9, 9, 9], [9, 9, 9])]) == 1.0
    boxes = [([2, 3, 4], [5, 3, 9]), ([0, 0, 0], [9, 9, 9])]
    rng = np.random.default_rng(0)
    for _ in range(50):
        for (lo, hi), (rlo, rhi) in zip(boxes, bc.random_boxes_like(boxes, (10, 10, 10), rng)):
            assert [b - a for a, b in zip(lo, hi)] == [b - a for a, b in zip(rlo, rhi)]
            assert min(rlo) >= 0 and max(rhi) <= 9


def test_regeneration_keeps_notes_and_other_machines_records(tmp_path, monkeypatch):
    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(rb, "DOC", doc)
    cpu = {"benchmark": "inference", "table": "per_volume", "key": "LA", "device_kind": "cpu", "machine": "cpu box",
           "command": "c", "date": "d1", "total_s": 30.0}
    rb.regenerate([cpu])
    text = doc.read_text().replace("<!-- notes:general:start -->\n", "<!-- notes:general:start -->\nMy note.\n")
    doc.write_text(text)
    gpu = dict(cpu, device_kind="gpu", machine="H100", total_s=2.0)
    newer_cpu = dict(cpu, date="d2", total_s=25.0)
    rb.regenerate([gpu, newer_cpu])
    text = doc.read_text()
    assert "My note." in text
    assert "| 25.00 |" in text and "| 30.00 |" not in text  # the newer CPU record replaced the old
    assert "H100" in text and "(GPU)" in text  # the GPU record was added, not substituted
    assert len(rb.records_in_doc(text)) == 2


def test_paired_difference_matches_hand_computed_t_interval():
    import bench_la

    ours = {"a": 0.80, "b": 0.70, "c": 0.90, "only_ours": 0.1}
    theirs = {"a": 0.75, "b": 0.72, "c": 0.80, "only_theirs": 0.9}
    out = bench_la.paired_difference(ours, theirs)
    # differences 0.05, -0.02, 0.10: mean 0.0433..., sd (ddof 1) = sqrt(((0.0067)^2 + (0.0633)^2 + (0.0567)^2) / 2)
    diffs = [0.05, -0.02, 0.10]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    half = 4.302652729911275 * sd / 3 ** 0.5  # t(0.975, 2) from a table
    assert out["cases"] == 3 and out["wins"] == 2
    assert out["mean_diff"] == pytest.approx(mean)
    assert out["ci95_low"] == pytest.approx(mean - half) and out["ci95_high"] == pytest.approx(mean + half)


def test_emit_paired_compares_each_method_with_its_baselines(tmp_path, monkeypatch, capsys):
    import json

    import bench_la

    monkeypatch.setattr(bc, "BENCH_DIR", tmp_path)
    setting = {"name": "cpu"}
    dice = {"supervised": 0.70, "mean_teacher": 0.72, "dycon": 0.75}
    runs = []
    for method, value in dice.items():
        run_id = bench_la.run_id_for(setting, method, "unet3d", 8, 300)
        runs.append((method, "unet3d", 8, 300, run_id))
        for group in ("held_out", "transductive"):
            path = bench_la.case_scores_path(run_id, group)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"c1": value, "c2": value + 0.01}))
    bench_la.emit_paired(setting, runs, "cpu")
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    pairs = {(r["group"], r["method"], r["versus"]): r["mean_diff"] for r in rows}
    assert pairs == {
        (g, m, v): pytest.approx(d)
        for g in ("held_out", "transductive")
        for m, v, d in (("mean_teacher", "supervised", 0.02), ("dycon", "supervised", 0.05),
                        ("dycon", "mean_teacher", 0.03))
    }


def test_channels_last_comparison_alternates_layouts_and_averages_pairs(monkeypatch, capsys):
    import json

    import bench_train_step

    # Fake step times: layout off 6 s then 4 s (drift), on 3 s then 3 s.
    times = {False: iter([6.0, 4.0]), True: iter([3.0, 3.0])}
    order = []

    def fake_worker(spec):
        order.append(spec["channels_last"])
        return {"s_per_it": next(times[spec["channels_last"]]), "step_rss_delta_mb": 100.0 if spec["channels_last"] else 80.0}

    monkeypatch.setattr(bench_train_step, "run_worker", fake_worker)
    base = {"name": "tiny", "patch": [8, 8, 8], "widths": [2, 4], "channels_last": "auto"}
    bench_train_step.emit_channels_last_ab(base, "cpu", rounds=2)
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert order == [False, True, False, True]
    assert row["s_per_it_off"] == pytest.approx(5.0) and row["s_per_it_on"] == pytest.approx(3.0)
    assert row["time_on_vs_off"] == pytest.approx(0.6)
    assert row["pair_ratios"] == [pytest.approx(0.5), pytest.approx(0.75)]
    assert row["mem_on_vs_off"] == pytest.approx(1.25)


def test_la_runs_with_another_seed_get_their_own_folder_and_a_changed_run_is_not_reused(tmp_path):
    import json

    import bench_la

    setting = bench_la.CPU_SETTING
    assert bench_la.run_id_for(setting, "dycon", "unet3d", 8, 300) == "cpu-l8-dycon-it300"
    assert bench_la.run_id_for(setting, "dycon", "unet3d", 8, 300, seed=7) == "cpu-l8-dycon-it300-s7"
    config = bench_la.run_config(setting, "dycon", 8, 300, "auto", 1337)
    run_dir = tmp_path / "cpu-l8-dycon-it300"
    run_dir.mkdir()
    # The engine stores the resolved configuration: more keys, device resolved.
    (run_dir / "config.json").write_text(json.dumps({**config, "device": "cpu", "amp": "auto"}))
    bench_la.check_reusable(run_dir, config)
    with pytest.raises(SystemExit, match=r"seed: run has 1337, asked 7.*--retrain"):
        bench_la.check_reusable(run_dir, {**config, "seed": 7})
    # automatic choices (None) and keys the engine adds (thin-slab pooling) do not block reuse,
    # a changed asked value inside a dict does
    resolved = {**config, "patch_size": [144, 144, 8],
                "network_options": {**config["network_options"], "pool_sizes": [[2, 2, 1]] * 4}}
    (run_dir / "config.json").write_text(json.dumps(resolved))
    bench_la.check_reusable(run_dir, {**config, "patch_size": None})
    with pytest.raises(SystemExit, match="network_options"):
        bench_la.check_reusable(run_dir, {**config, "network_options": {"widths": [16, 32, 64, 128, 256]}})
    # a run saved before the augmentation option trained with the standard one
    bench_la.check_reusable(run_dir, {**resolved, "augmentation": "standard"})
    with pytest.raises(SystemExit, match="augmentation: run has 'standard', asked 'strong'"):
        bench_la.check_reusable(run_dir, {**resolved, "augmentation": "strong"})


def test_trained_threads_comes_from_the_first_started_event():
    import bench_la

    events = [{"event": "started", "device": "cpu (x86_64, 2 threads)"}, {"event": "progress"},
              {"event": "started", "device": "cpu (x86_64, 1 threads)"}]
    assert bench_la.trained_threads(events, "default") == 2
    assert bench_la.trained_threads([{"event": "started", "device": "cuda:0 (NVIDIA H100)"}], "default") == "default"


def test_train_step_benchmark_times_a_real_engine_step():
    # The benchmark builds a Trainer without its __init__; engine attributes added later (time budget,
    # device-default learning rate) broke it once without any test noticing.
    import json
    import subprocess

    script = Path(__file__).resolve().parent / "bench_train_step.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--methods", "supervised", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    (row,) = [r for r in rows if r.get("method") == "supervised"]
    assert "status" not in row, row.get("status")
    assert row["s_per_it"] > 0 and row["it_per_s"] == pytest.approx(1.0 / row["s_per_it"], rel=0.01)


def test_trained_iterations_come_from_the_last_finished_event(tmp_path):
    import json

    run = tmp_path / "run"
    run.mkdir()
    assert bc.trained_iterations(run, 300) == 300  # no events yet: the configured count
    events = [{"event": "started"}, {"event": "finished", "iterations": 80}, {"event": "started"},
              {"event": "finished", "iterations": 105}, {"event": "finished", "command": "predict"}]
    (run / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    assert bc.trained_iterations(run, None) == 105


def test_acdc_scores_the_engine_postprocessing_beside_the_plain_predictions(tmp_path, monkeypatch):
    import SimpleITK as sitk

    import bench_acdc

    monkeypatch.setattr(bc, "BENCH_DIR", tmp_path)
    (tmp_path / "run" / "predictions").mkdir(parents=True)
    (tmp_path / "truth").mkdir()
    truth = np.zeros((6, 12, 12), np.uint8)  # numpy (z, y, x): one structure of classes 1-3
    truth[1:5, 2:5, 2:8], truth[1:5, 5:7, 2:8], truth[1:5, 7:10, 2:8] = 1, 2, 3
    prediction = truth.copy()
    prediction[2:4, 1:3, 10:12] = 3  # a far LV blob (8 voxels), not touching the structure
    for folder, volume in (("run/predictions", prediction), ("truth", truth)):
        sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / folder / "case.nii.gz"))
    plain = bench_acdc.class_figures(bench_acdc.evaluate_held_out(tmp_path / "run", tmp_path / "truth", ["case"]))
    cleaned = bench_acdc.postprocessed_figures(
        bench_acdc.evaluate_held_out(tmp_path / "run", tmp_path / "truth", ["case"], "largest_foreground"))
    lv = int((truth == 3).sum())
    assert plain["dice_LV"] == pytest.approx(round(2 * lv / (2 * lv + 8), 4))  # by hand
    assert cleaned["pp_dice_LV"] == 1.0 and cleaned["pp_dice_mean"] == 1.0
    assert plain["dice_RV"] == cleaned["pp_dice_RV"] == 1.0
