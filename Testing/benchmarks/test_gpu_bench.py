"""The GPU kit (gpu_bench.py) on the CPU: the whole dry run, its records, the merge into
docs/benchmarks.md, time limits, wheel installation and the kit's synthetic data.

The dry run is what makes sure the kit does not arrive broken on a GPU machine that is lent for
minutes: every part must produce its records here with tiny sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_common as bc  # noqa: E402
import gpu_bench  # noqa: E402
import gpu_data  # noqa: E402
import run_benchmarks as rb  # noqa: E402


# --------------------------------------------------------------------------- the whole dry run
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of the whole kit (about two minutes on two cores); its records and exit code.

    Three times the dry run's default budget (the parts' limits scale with it): a CI machine
    shared with other jobs must not turn slowness into a failure; the figures are not the point.
    """
    root = tmp_path_factory.mktemp("gpu_kit")
    env = {**os.environ, "SEMISUPSEG_BENCH_DIR": str(root / "bench"), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    process = subprocess.run([sys.executable, str(HERE / "gpu_bench.py"), "--dry-run", "--out", str(root / "out"),
                              "--budget", str(3 * gpu_bench.DRY_RUN_BUDGET_S)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=bc.REPO)
    path = root / "out" / gpu_bench.RECORDS_NAME
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {"code": process.returncode, "records": records, "path": path, "stderr": process.stderr,
            "log": (root / "out" / gpu_bench.LOG_NAME).read_text()}


def of(records, benchmark, table):
    return [r for r in records if r["benchmark"] == benchmark and r["table"] == table]


@pytest.mark.slow
def test_dry_run_measures_every_part(dry_run):
    records = dry_run["records"]
    assert dry_run["code"] == 0, dry_run["stderr"][-3000:]
    for rec in records:
        assert all(rec.get(k) for k in rb.META), rec  # benchmark, table, key, machine, device_kind, command, date
        assert rec["dry_run"] is True and rec["device_kind"] == "cpu"
        assert "gpu_bench.py --dry-run --out" in rec["command"]
    parts = {r["key"]: r for r in of(records, "gpu_kit", "parts")}
    assert set(parts) == set(gpu_bench.PARTS) | {"data"}
    assert {k: r["status"] for k, r in parts.items()} == {k: "measured" for k in parts}
    for part in gpu_bench.PARTS:  # every part left measurements, not only its status row
        measured = [r for r in records if r["part"] == part and r["table"] != "parts"]
        assert measured and parts[part]["records"] == len(measured), part


@pytest.mark.slow
def test_dry_run_figures_are_complete_and_plausible(dry_run):
    from semisupseg.methods import METHODS

    records = dry_run["records"]
    methods = {r["method"]: r for r in of(records, "train_step", "methods")}
    assert set(methods) == set(METHODS)
    assert all(r["it_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in methods.values())
    assert methods["dycon"]["time_vs_dycon"] == 1.0
    ratio = [r for r in of(records, "train_step", "step") if r["method"] == "dycon / mean_teacher"][0]
    assert ratio["time_ratio"] == pytest.approx(
        methods["dycon"]["s_per_it"] / methods["mean_teacher"]["s_per_it"], rel=0.01)
    optimisations = {r["optimisation"]: r for r in of(records, "train_step", "optimisations")}
    assert len(optimisations) == 4 and all(r["status"] == "measured" for r in optimisations.values())
    assert optimisations["torch.compile (config compile)"]["backend"] == "eager"
    assert of(records, "train_step", "profile")[0]["rank"] == 1
    inference = {r["setting"]: r for r in of(records, "inference", "per_volume")}
    assert set(inference) == {"LA size", "LA size, MC K=2", "large", "large, MC K=2"}
    assert all(r["total_s"] >= r["probabilities_s"] > 0 for r in inference.values())
    (overlay,) = of(records, "first_overlay", "first_overlay")
    assert overlay["predicted"] == 3 and overlay["has_entropy"] and overlay["exit_code"] == 0
    assert overlay["started_s"] <= overlay["first_overlay_s"] <= overlay["all_overlays_s"]
    (budget,) = of(records, "gpu_kit", "train_budget")
    assert budget["iterations"] >= 1 and budget["held_out_cases"] == 2
    assert 0.0 <= budget["held_out_dice_min"] <= budget["held_out_dice"] <= 1.0
    (env,) = of(records, "gpu_kit", "environment")
    assert env["monai"] != "missing" and env["methods"] == ",".join(sorted(METHODS))
    targets = of(records, "gpu_kit", "targets")
    assert len(targets) == 8
    assert [t for t in targets if t["source"] == "inference"][0]["value"] == inference["LA size"]["total_s"]


@pytest.mark.slow
def test_merge_puts_the_records_into_the_document_and_keeps_the_rest(dry_run, tmp_path, monkeypatch):
    doc = tmp_path / "benchmarks.md"
    original = rb.DOC.read_text()
    doc.write_text(original)
    monkeypatch.setattr(rb, "DOC", doc)
    path = str(dry_run["path"])
    assert rb.main(["--merge", path]) == 2  # dry-run records never enter the document by accident
    assert doc.read_text() == original
    assert rb.main(["--merge", path, "--allow-dry-run"]) == 0
    text = doc.read_text()
    old_ids = {rb.record_id(r) for r in rb.records_in_doc(original)}
    new_ids = {rb.record_id(r) for r in dry_run["records"]}
    assert {rb.record_id(r) for r in rb.records_in_doc(text)} == old_ids | new_ids
    old_notes = {m.group("name"): m.group("body") for m in rb.NOTES_RE.finditer(original)}
    new_notes = {m.group("name"): m.group("body") for m in rb.NOTES_RE.finditer(text)}
    assert {k: new_notes[k] for k in old_notes} == old_notes
    assert "## gpu_kit:" in text and "#### targets (CPU)" in text


def test_merge_refuses_records_without_machine_command_or_date(tmp_path, monkeypatch):
    monkeypatch.setattr(rb, "DOC", tmp_path / "benchmarks.md")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"benchmark": "gpu_kit", "table": "parts", "key": "step", "device_kind": "gpu",
                               "status": "measured"}) + "\n")
    assert rb.main(["--merge", str(bad)]) == 2
    assert not (tmp_path / "benchmarks.md").exists()
    good = tmp_path / "good.json"  # a JSON list is accepted too
    rec = {"benchmark": "inference", "table": "per_volume", "key": "LA size|192x144x88", "machine": "H100 (GPU)",
           "device_kind": "gpu", "command": "python3 Testing/benchmarks/gpu_bench.py", "date": "d", "total_s": 0.5}
    good.write_text(json.dumps([rec]))
    assert rb.main(["--merge", str(good)]) == 0
    assert rb.records_in_doc((tmp_path / "benchmarks.md").read_text()) == [rec]


# --------------------------------------------------------------------------- time limits
def test_a_part_that_runs_out_of_time_is_stopped_and_keeps_its_records(tmp_path, monkeypatch):
    kit = gpu_bench.Kit(tmp_path, dry_run=True, command="gpu_bench.py --test")
    rec = bc.record("gpu_kit", "probe", "first", "cpu", value=1)
    # The worker starts a child (as first_overlay starts `semisupseg train`), prints one record, hangs.
    script = ("import json, subprocess, sys, time; "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
              f"print(json.dumps({{**{rec!r}, 'child': child.pid}}), flush=True); time.sleep(600)")
    runner = gpu_bench.PartRunner(kit, "cpu", dict(os.environ), deadline=float("inf"), limits={}, spec={})
    monkeypatch.setattr(runner, "worker_command", lambda part, spec: [sys.executable, "-c", script])
    status = runner.run_process("probe", {}, limit=8.0)
    assert status == "timed out after 8 s (1 records kept)"
    written = [json.loads(line) for line in (tmp_path / gpu_bench.RECORDS_NAME).read_text().splitlines()]
    assert [r["key"] for r in written] == ["first", "probe"]
    assert written[1]["status"] == status and written[1]["records"] == 1
    assert runner.current is None
    assert not alive(written[0]["child"])  # the whole process group was ended, the worker's child too


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigterm_ends_the_kit_with_its_records_and_targets_written(tmp_path):
    import signal
    import time

    env = {**os.environ, "SEMISUPSEG_BENCH_DIR": str(tmp_path / "bench"), "OMP_NUM_THREADS": "1"}
    records = tmp_path / "out" / gpu_bench.RECORDS_NAME
    process = subprocess.Popen([sys.executable, str(HERE / "gpu_bench.py"), "--dry-run", "--parts", "inference,compile",
                                "--out", str(records.parent), "--budget", "900"], env=env, cwd=bc.REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and not (records.exists() and '"per_volume"' in records.read_text()):
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 3  # some part not fully measured
    finally:
        if process.poll() is None:
            process.kill()
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert any(r["table"] == "per_volume" for r in rows)  # measured before the signal: kept
    status = {r["key"]: r["status"] for r in rows if r["table"] == "parts"}
    assert status["inference"].startswith("not finished") and status["compile"].startswith("not finished")
    # only the targets the called parts feed: the two inference ones and the best-step one (compile)
    assert sorted(r["source"] for r in rows if r["table"] == "targets") == ["inference", "inference", "step, compile"]


def test_a_part_that_no_longer_fits_is_recorded_as_skipped(tmp_path):
    kit = gpu_bench.Kit(tmp_path, dry_run=True, command="c")
    runner = gpu_bench.PartRunner(kit, "cpu", {}, deadline=0.0, limits={"step": 60}, spec={})
    assert runner.run("step").startswith("skipped: 0 s left")
    (row,) = kit.records
    assert row["table"] == "parts" and row["key"] == "step"


def test_mc_dropout_rows_that_would_overrun_the_part_are_recorded_not_run(capsys):
    import gpu_parts

    gpu_parts.part_inference({"device": "cpu", "sizes": gpu_parts.DRY_RUN, "limit_s": 0.0})
    rows = {r["setting"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["LA size"]["total_s"] > 0 and rows["large"]["total_s"] > 0  # plain rows always run
    for name in ("LA size, MC K=2", "large, MC K=2"):
        assert rows[name]["status"].startswith("not run: about 2 x") and "total_s" not in rows[name]


def test_the_kit_names_the_gpu_its_workers_saw_without_touching_cuda_itself(tmp_path):
    kit = gpu_bench.Kit(tmp_path, dry_run=False, command="c")
    kit.add({**bc.record("inference", "per_volume", "LA", "cpu", total_s=0.5),
             "machine": "NVIDIA H100 80GB HBM3 (GPU); host x", "device_kind": "gpu"}, "inference")
    row = kit.own_record("parts", "inference", "cuda", status="measured")  # this torch has no CUDA: would raise
    assert row["machine"] == "NVIDIA H100 80GB HBM3 (GPU); host x" and row["device_kind"] == "gpu"


# --------------------------------------------------------------------------- targets
def test_targets_take_the_best_step_and_the_issue_limits():
    def rec(table, key, **fields):
        return {"benchmark": "train_step", "table": table, "key": key, **fields}

    records = [
        rec("step", "s|dycon", method="dycon", it_per_s=8.0, peak_mem_mb=9000.0),
        rec("step", "s|ratio", method="dycon / mean_teacher", time_ratio=1.3, fecl_extra_mem_mb=700.0),
        rec("optimisations", "s|amp off (fp32) vs bf16 baseline", it_per_s=20.0),  # fp32: not a candidate
        rec("optimisations", "s|channels_last_3d", it_per_s=11.0),
        {"benchmark": "inference", "table": "per_volume", "key": "large|512x512x300", "setting": "large",
         "total_s": 6.5},
    ]
    got = {t["source"] + "|" + t["goal"]: (t["value"], t["met"]) for t in gpu_bench.targets(records)}
    assert got["step, compile|>= 10 it/s"] == (11.0, True)
    assert got["step|<= 1.25"] == (1.3, False)
    assert got["step|< 1024 MiB"] == (700.0, True)
    assert got["step|< 16384 MiB"] == (9000.0, True)
    assert got["inference|< 5 s"] == (6.5, False)
    assert got["inference|< 1 s"] == (None, None)  # not measured: neither met nor failed
    assert got["first_overlay|< 60 s"] == (None, None)


def test_a_parts_call_reports_only_the_targets_its_parts_feed():
    """A --parts inference call must not emit empty step targets: merged, they would replace the
    values of an earlier full run (seen when merging the second H200 call of 2026-11-27)."""
    records = [{"benchmark": "inference", "table": "per_volume", "key": "large|512x512x300", "setting": "large",
                "total_s": 4.0}]
    sources = [t["source"] for t in gpu_bench.targets(records, ["inference"])]
    assert sources == ["inference", "inference"]
    assert {t["source"] for t in gpu_bench.targets(records, ["step"])} == {"step", "step, compile"}
    assert len(gpu_bench.targets(records)) == 8


# --------------------------------------------------------------------------- wheels and size
def make_wheel(folder: Path, name: str, body: str) -> Path:
    """A minimal pure-Python wheel holding package ``name`` with ``body`` as its __init__.py."""
    dist = f"{name}-0.1.dist-info"
    wheel = folder / f"{name}-0.1-py3-none-any.whl"
    files = {f"{name}/__init__.py": body,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_wheels_are_installed_once_and_reach_the_processes_the_kit_starts(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "gpukitprobe", "VALUE = 42\n")
    make_wheel(wheels, "numpy", "")  # numpy is importable already: left alone
    site = tmp_path / "site"
    results = {r["wheel"].split("-")[0]: r["status"] for r in gpu_bench.install_wheels(wheels, site, print)}
    assert results == {"gpukitprobe": "installed", "numpy": "already importable, not installed"}
    env = gpu_bench.child_env(site)
    out = subprocess.run([sys.executable, "-c", "import gpukitprobe, semisupseg; print(gpukitprobe.VALUE)"],
                         env=env, stdout=subprocess.PIPE, text=True, cwd=tmp_path, check=True).stdout
    assert out.strip() == "42"
    with pytest.raises(gpu_bench.InputError, match="no such folder"):
        gpu_bench.install_wheels(tmp_path / "absent", site, print)


def test_travel_size_counts_tracked_files_and_carried_folders(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "carry").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "tracked.txt").write_bytes(b"x" * 1000)
    (repo / ".gitignore").write_text("/carry/\n")
    (repo / "carry" / "a.whl").write_bytes(b"y" * 5000)
    (repo / "new.txt").write_bytes(b"z" * 300)
    subprocess.run(["git", "-C", str(repo), "add", "tracked.txt", ".gitignore"], check=True)
    monkeypatch.setattr(bc, "REPO", repo)
    sizes = gpu_bench.travel_size(["carry"])
    assert sizes == {"tracked": 1000 + 8, "untracked": 300, "carry": 5000, "total": 6308}


# --------------------------------------------------------------------------- the kit's synthetic data
def test_parallel_workspace_equals_the_engine_generator(tmp_path, monkeypatch):
    import SimpleITK as sitk
    from semisupseg.data.synthetic import generate_synthetic_workspace

    spec = {"size": [24, 20, 16], "spacing": [0.8, 0.8, 1.0], "seed": 5, "labelled": 2, "unlabelled": 1, "test": 1}
    reference = generate_synthetic_workspace(tmp_path / "reference", n_labelled=2, n_unlabelled=1, n_test=1,
                                             size=spec["size"], spacing=spec["spacing"], seed=5)
    monkeypatch.setattr(bc, "BENCH_DIR", tmp_path / "bench")
    with ThreadPoolExecutor(2) as pool:
        made = Path(gpu_data.make_workspace(pool, "budget", {**spec})["workspace"])
    assert json.loads((made / "dataset.json").read_text()) == json.loads((reference / "dataset.json").read_text())
    names = sorted(p.relative_to(reference).as_posix() for p in reference.rglob("*.nii.gz"))
    assert names == sorted(p.relative_to(made).as_posix() for p in made.rglob("*.nii.gz"))
    for name in names:
        a, b = sitk.ReadImage(str(reference / name)), sitk.ReadImage(str(made / name))
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
        assert a.GetDirection() == b.GetDirection()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_a_data_set_that_failed_stops_the_part_waiting_for_it(tmp_path, monkeypatch):
    monkeypatch.setattr(bc, "BENCH_DIR", tmp_path)
    gpu_data.announce("budget", error="disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        gpu_data.wait_for("budget", 5.0)
    gpu_data.clear_markers()
    with pytest.raises(RuntimeError, match="not ready after 0 s"):
        gpu_data.wait_for("budget", 0.3)
