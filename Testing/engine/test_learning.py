"""A short DyCON training on synthetic data measurably learns (held-out Dice of the teacher)."""

from __future__ import annotations

import io
import json

import pytest

from semisupseg.data.synthetic import generate_synthetic_workspace
from semisupseg.evaluation.metrics import evaluate_folders
from semisupseg.events import EventWriter
from semisupseg.training.trainer import train_workspace

CONFIG = {
    "network_options": {"widths": [8, 16, 32, 64, 128]},
    "patch_size": [48, 48, 32],
    "batch_labelled": 2,
    "batch_unlabelled": 2,
    "log_every": 20,
    "checkpoint_every": 0,
    "device": "cpu",
    "predict_cases": "held_out",
    "seed": 7,
}


def held_out_dice(workspace, run_id: str, iterations: int) -> float:
    config = workspace.parent / f"{run_id}.json"
    config.write_text(json.dumps(CONFIG))
    sink = EventWriter(stream=io.StringIO(), progress_bar=False)
    assert train_workspace(workspace, config, {"iterations": iterations, "method": "dycon"}, run_id, False, sink) == "finished"
    sink.close()
    report = evaluate_folders(workspace / "runs" / run_id / "predictions", workspace / "truth", classes=[1])
    assert len(report["cases"]) == 2  # the two held-out cases, never trained on
    return report["mean"]["1"]["dice"]


@pytest.mark.slow
def test_dycon_learns_on_synthetic_volumes(tmp_path):
    workspace = generate_synthetic_workspace(
        tmp_path / "workspace", n_labelled=2, n_unlabelled=2, n_test=2, size=(48, 48, 32), seed=11
    )
    untrained = held_out_dice(workspace, "untrained", 1)
    trained = held_out_dice(workspace, "trained", 120)
    assert trained > 0.6, (untrained, trained)
    assert trained > untrained + 0.3, (untrained, trained)
