"""The run's optimiser (config ``optimizer.name``): SGD as released, Nesterov SGD, AdamW."""

from __future__ import annotations

import io
import json

import pytest
import torch

from semisupseg.data.synthetic import generate_synthetic_workspace
from semisupseg.errors import InputError
from semisupseg.events import EventWriter
from semisupseg.training.checkpoint import load_checkpoint
from semisupseg.training.optimizers import build_optimizer, check_optimizer_options, check_resumable
from semisupseg.training.trainer import train_workspace

SGD_DEFAULTS = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False}


def test_the_default_is_the_released_sgd():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(3))], SGD_DEFAULTS)
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.01, 0.9, 1e-4, False)
    nesterov = build_optimizer([torch.nn.Parameter(torch.zeros(3))], {**SGD_DEFAULTS, "nesterov": True})
    assert nesterov.param_groups[0]["nesterov"] is True


def test_one_adamw_step_matches_the_formula():
    """First AdamW step: m_hat = g, v_hat = g^2, so p1 = p0 - lr*wd*p0 - lr*g/(|g| + eps)
    (decoupled decay: the decay does not pass through the moments)."""
    lr, wd = 0.003, 0.01
    p0 = torch.tensor([2.0, -1.0, 0.5])
    grad = torch.tensor([0.4, -3.0, 1e-3])
    param = torch.nn.Parameter(p0.clone())
    opt = build_optimizer([param], {**SGD_DEFAULTS, "name": "adamw", "lr": lr, "weight_decay": wd})
    assert type(opt) is torch.optim.AdamW
    param.grad = grad.clone()
    opt.step()
    expected = p0 * (1 - lr * wd) - lr * grad / (grad.abs() + 1e-8)
    torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("options, says", [
    ({"name": "adam"}, "Unknown optimizer name 'adam'"),
    ({"lr": 0.0}, "optimizer.lr must be > 0"),
    ({"name": "adamw", "nesterov": True}, "nesterov applies to sgd only"),
    ({"nesterov": True, "momentum": 0.0}, "Nesterov momentum needs optimizer.momentum > 0"),
])
def test_bad_optimizer_settings_are_refused_with_the_fix(options, says):
    with pytest.raises(InputError) as err:
        check_optimizer_options({**SGD_DEFAULTS, **options})
    assert says in str(err.value)


def test_a_checkpoint_of_one_optimizer_is_not_loaded_into_the_other():
    param = torch.nn.Parameter(torch.ones(2))
    sgd, adamw = (build_optimizer([param], {**SGD_DEFAULTS, "name": n}) for n in ("sgd", "adamw"))
    for opt in (sgd, adamw):
        param.grad = torch.ones(2)
        opt.step()
    check_resumable(sgd, sgd.state_dict())
    check_resumable(adamw, adamw.state_dict())
    with pytest.raises(InputError, match="trained with the sgd optimizer; this run's configuration asks for adamw"):
        check_resumable(adamw, sgd.state_dict())
    with pytest.raises(InputError, match="trained with the adamw optimizer"):
        check_resumable(sgd, adamw.state_dict())


def test_a_run_trains_with_adamw_and_its_checkpoint_holds_adam_moments(tmp_path, one_thread):
    workspace = generate_synthetic_workspace(tmp_path / "ws", n_labelled=1, n_unlabelled=1, n_test=0,
                                             size=(32, 32, 16), seed=3)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"network_options": {"widths": [4, 8, 16, 32, 64]}, "patch_size": [32, 32, 16],
                                  "batch_labelled": 1, "batch_unlabelled": 1, "device": "cpu", "predict_cases": "none",
                                  "optimizer": {"name": "adamw", "lr": 0.001}}))
    sink = EventWriter(stream=io.StringIO(), progress_bar=False)
    assert train_workspace(workspace, config, {"iterations": 2, "method": "dycon"}, "adamw", False, sink) == "finished"
    run = workspace / "runs" / "adamw"
    assert json.loads((run / "config.json").read_text())["optimizer"]["name"] == "adamw"
    state = load_checkpoint(run / "checkpoints" / "last.pt")["optimizer"]["state"]
    assert state and all("exp_avg_sq" in s for s in state.values())
