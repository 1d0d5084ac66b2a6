"""Which device ``semisupseg predict`` loads a run on: a run trained on a GPU this machine lacks
(CUDA, or an Apple GPU through MPS) predicts on ``auto`` instead of being refused; an explicit
``--device`` is honoured. This machine has neither CUDA nor MPS; both are switched off explicitly
(monkeypatch), so the tests mean the same on a Mac or a CUDA machine."""

from __future__ import annotations

import json

import pytest
import torch

from semisupseg.config import load_config
from semisupseg.data.dataset import load_dataset
from semisupseg.errors import InputError
from semisupseg.inference.run_loader import load_run, prediction_device
from semisupseg.methods import build_method
from semisupseg.networks import build_network
from semisupseg.training.checkpoint import save_checkpoint

TINY_NETWORK = {"widths": [4, 8, 16, 32, 64]}


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    return monkeypatch


@pytest.mark.parametrize("trained_on, requested, expected", [
    ("mps", None, "auto"),
    ("MPS", None, "auto"),
    ("cuda", None, "auto"),
    ("cuda:1", None, "auto"),
    ("cpu", None, "cpu"),
    ("mps", "cpu", "cpu"),  # --device wins
    ("cpu", "mps", "mps"),
])
def test_a_gpu_run_predicts_on_auto_unless_a_device_is_asked_for(trained_on, requested, expected):
    assert prediction_device(trained_on, requested) == expected


def write_run(workspace, device: str):
    """A run folder as ``semisupseg train`` leaves it (config.json + checkpoints/last.pt), trained on ``device``.

    The weights are a freshly built tiny network's; which values they hold does not matter here,
    only that ``load_run`` puts exactly them on the device it chose."""
    run_dir = workspace / "runs" / f"trained-on-{device.replace(':', '-')}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(
        {"method": "supervised", "device": device, "network_options": TINY_NETWORK}), encoding="utf-8")
    config = load_config(run_dir / "config.json")
    spec = load_dataset(workspace)
    method = build_method(config["method"], lambda: build_network(
        config["network"], in_channels=1, num_classes=spec.num_classes, **config["network_options"]),
        spec.num_classes, config["method_options"])
    save_checkpoint(run_dir / "checkpoints" / "last.pt", iteration=1, method=method, optimizer=None, sampler_rng=None)
    return run_dir, method.state_dict()


@pytest.mark.parametrize("trained_on", ["mps", "cuda:0"])
def test_a_run_trained_on_a_gpu_this_machine_lacks_loads_on_the_cpu(tiny_workspace, no_gpu, trained_on):
    run_dir, saved = write_run(tiny_workspace, trained_on)
    method, config, _spec, device = load_run(run_dir)
    assert device == torch.device("cpu") and config["device"] == "cpu"
    loaded = method.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[name].cpu(), saved[name].cpu()) for name in saved)
    assert all(tensor.device.type == "cpu" for tensor in loaded.values())


def test_asking_for_mps_where_there_is_none_is_still_an_input_error(tiny_workspace, no_gpu):
    run_dir, _saved = write_run(tiny_workspace, "cpu")
    with pytest.raises(InputError) as refused:
        load_run(run_dir, device="mps")
    assert "mps" in refused.value.message
