"""`semisupseg demo` (what `make demo` runs) goes end to end: data, training, maps, evaluation, PNG."""

from __future__ import annotations

import json

import pytest

from semisupseg.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--iterations", "1", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])  # the pretty-printed summary follows the events
    assert summary["cases_predicted"] == 16
    assert set(summary["held_out_dice"]) == {"synth_012", "synth_013", "synth_014", "synth_015"}
    assert 0.0 <= summary["held_out_mean_dice"] <= 1.0
    png = tmp_path / "overview.png"
    assert summary["overview_png"] == str(png) and png.stat().st_size > 10_000
    assert json.loads((tmp_path / "evaluation.json").read_text())["definitions"]
