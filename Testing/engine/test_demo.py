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


@pytest.mark.slow
def test_a_cancelled_demo_says_so_and_the_next_one_resumes(tmp_path, capsys):
    """Ctrl-C (SIGINT) during training: exit 130 with a resume hint, no evaluation of a run that
    has no predictions; the next demo resumes from the checkpoint instead of starting over."""
    import os
    import signal
    import threading
    import time

    events = tmp_path / "workspace" / "runs" / "demo-dycon" / "events.jsonl"

    def interrupt_once_training_runs():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if events.exists() and '"progress"' in events.read_text():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    common = ["demo", "--out", str(tmp_path), "--device", "cpu", "--minutes", "0"]
    watcher = threading.Thread(target=interrupt_once_training_runs, daemon=True)
    watcher.start()
    assert main(common + ["--iterations", "50"]) == 130
    watcher.join(timeout=5)
    assert "demo cancelled" in capsys.readouterr().err
    assert not (tmp_path / "overview.png").exists()
    stopped = [json.loads(line) for line in events.read_text().splitlines()]
    stopped_at = [e for e in stopped if e["event"] == "checkpoint"][-1]["iteration"]
    assert 0 < stopped_at < 50

    assert main(common + ["--iterations", str(stopped_at + 1)]) == 0
    resumed = [json.loads(line) for line in events.read_text().splitlines()]
    finished = [e for e in resumed if e["event"] == "finished"]
    assert finished and finished[-1]["resumed_at"] == stopped_at and finished[-1]["iterations"] == stopped_at + 1
    assert (tmp_path / "overview.png").exists()
