"""bench_time_to_quality.py --smoke: a budget run on synthetic data, scored, recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_smoke_run_stops_at_its_budget_and_is_scored(tmp_path):
    env = {**os.environ, "SEMISUPSEG_BENCH_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(HERE / "bench_time_to_quality.py"), "--smoke", "--variant", "lr3",
                           "--set", '{"optimizer": {"lr": 0.03}}'], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["key"] for r in rows] == ["lr3|dycon|0.25min"]
    row = rows[0]
    # iterations were left at 100 000: only the budget can have ended this run
    assert row["stopped_by"] == "time_budget" and 1 <= row["iterations"] < 100_000
    assert row["changes"] == '{"optimizer":{"lr":0.03}}' and row["cases"] == 2 and 0.0 <= row["dice"] <= 1.0
    run = tmp_path / "time_to_quality" / "smoke_workspace" / "runs" / row["run"]
    config = json.loads((run / "config.json").read_text())
    assert config["optimizer"]["lr"] == 0.03 and config["optimizer"]["momentum"] == 0.9 and config["time_budget_min"] == 0.25
    assert sorted(p.name for p in (run / "predictions").glob("*.nii.gz")) == [f"synth_00{i}.nii.gz" for i in (4, 5)]
