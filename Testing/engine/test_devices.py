"""Device choice (CUDA, then Apple GPU through MPS, then CPU) and what falls back when MPS lacks
something. This machine has neither CUDA nor MPS: their availability is simulated (monkeypatch),
and a run "on MPS" is a CPU run whose device is labelled mps while the step is made to fail the
way MPS fails. MPS training itself is untested on real hardware."""

from __future__ import annotations

import io
import json

import pytest
import torch

from semisupseg import cli
from semisupseg.errors import InputError
from semisupseg.events import EventWriter
from semisupseg.training import devices
from semisupseg.training.checkpoint import save_checkpoint
from semisupseg.training.trainer import Trainer
from test_live_loop import make_trainer, run_training


@pytest.fixture
def no_gpu(monkeypatch):
    """Neither CUDA nor MPS; tests switch either on."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    return monkeypatch


# ---- choice --------------------------------------------------------------------------------------
def test_auto_prefers_cuda_then_mps_then_cpu(no_gpu):
    assert devices.resolve_device("auto").type == "cpu"
    no_gpu.setattr(torch.backends.mps, "is_available", lambda: True)
    assert devices.resolve_device("auto").type == "mps"
    no_gpu.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto").type == "cuda"


def test_mps_is_accepted_explicitly_when_available(no_gpu):
    no_gpu.setattr(torch.backends.mps, "is_available", lambda: True)
    assert devices.resolve_device("mps") == torch.device("mps")
    assert devices.resolve_device("MPS") == torch.device("mps")
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_mps_without_the_backend_is_an_input_error(no_gpu):
    with pytest.raises(InputError) as err:
        devices.resolve_device("mps")
    assert "mps" in err.value.message and "Apple silicon" in err.value.hint


@pytest.mark.parametrize("name", ["gpu", "metal", "cuda:x"])
def test_unknown_devices_name_the_choices(no_gpu, name):
    no_gpu.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(InputError) as err:
        devices.resolve_device(name)
    assert "mps" in err.value.hint and name in err.value.message


def test_train_with_mps_on_a_machine_without_it_exits_2_and_writes_nothing(tiny_workspace, capsys, no_gpu):
    rc = cli.main(["train", "--workspace", str(tiny_workspace), "--device", "mps", "--iterations", "1"])
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 2 and error["event"] == "error" and "mps" in error["message"]
    assert not (tiny_workspace / "runs").exists()


# ---- description ---------------------------------------------------------------------------------
def test_mps_is_described_as_apple_gpu():
    assert devices.device_description(torch.device("mps")) == "Apple GPU (MPS)"
    assert devices.device_description(torch.device("cpu")).startswith("cpu (")


def test_devices_command_reports_the_apple_gpu(no_gpu, capsys):
    no_gpu.setattr(torch.backends.mps, "is_available", lambda: True)
    assert cli.main(["devices", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info == {"auto": "mps", "description": "Apple GPU (MPS)", "cuda": [], "mps": True,
                    "mps_description": "Apple GPU (MPS)"}
    assert cli.main(["devices"]) == 0
    assert "auto: Apple GPU (MPS)" in capsys.readouterr().out


def test_devices_command_without_gpus_says_cpu(no_gpu, capsys):
    assert cli.main(["devices", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["auto"] == "cpu" and info["mps"] is False and info["description"].startswith("cpu (")


# ---- autocast ------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, amp, supported, dtype, notice", [
    ("cuda", "auto", False, torch.bfloat16, False),
    ("cpu", "auto", False, None, False),
    ("cpu", "bf16", False, torch.bfloat16, False),
    ("mps", "auto", True, None, False),  # fp32 unless asked: bf16 on MPS is unmeasured
    ("mps", "bf16", True, torch.bfloat16, False),
    ("mps", "bf16", False, None, True),  # macOS < 14 / no MPS autocast: fp32 and a notice
    ("mps", "off", True, None, False),
    ("cuda", "off", False, None, False),
])
def test_autocast_choice(monkeypatch, device, amp, supported, dtype, notice):
    monkeypatch.setattr(devices, "mps_bf16_autocast_supported", lambda: supported)
    choice = devices.autocast_choice(torch.device(device), amp)
    assert choice.dtype == dtype
    assert bool(choice.notice) == notice
    if notice:
        assert "macOS 14" in choice.notice and "fp32" in choice.notice


def test_mps_bf16_autocast_needs_macos_14(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: (major, minor) <= (13, 5),
                        raising=False)
    assert devices.mps_bf16_autocast_supported() is False
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: True, raising=False)
    assert devices.mps_bf16_autocast_supported() is True  # this PyTorch has MPS autocast


# ---- operators MPS lacks ---------------------------------------------------------------------------
def test_the_operator_fallback_is_switched_on_on_macos_only_and_never_overrides_the_user():
    environ = {}
    assert devices.enable_mps_operator_fallback(environ, "darwin") is True
    assert environ == {"PYTORCH_ENABLE_MPS_FALLBACK": "1"}
    environ = {"PYTORCH_ENABLE_MPS_FALLBACK": "0"}
    assert devices.enable_mps_operator_fallback(environ, "darwin") is False
    assert environ == {"PYTORCH_ENABLE_MPS_FALLBACK": "0"}
    environ = {}
    assert devices.enable_mps_operator_fallback(environ, "linux") is False and environ == {}


def test_the_command_line_sets_the_operator_fallback_before_parsing(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(devices, "enable_mps_operator_fallback", lambda: calls.append("fallback"))
    real_parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: calls.append("parser") or real_parser())
    assert cli.main(["devices", "--json"]) == 0
    assert calls == ["fallback", "parser"]


@pytest.mark.parametrize("device, error, expected", [
    ("mps", NotImplementedError("The operator 'aten::foo' is not currently implemented for the MPS device"), True),
    ("mps", RuntimeError("ConvTranspose 3D is not supported on MPS"), True),
    ("mps", RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"), False),
    ("mps", torch.OutOfMemoryError("out of memory"), False),
    ("mps", RuntimeError("shape '[2, 3]' is invalid for input of size 7"), False),
    ("cpu", NotImplementedError("not implemented"), False),
    ("cuda", RuntimeError("something about mps"), False),
])
def test_which_errors_are_mps_lacking_something(device, error, expected):
    assert devices.is_mps_failure(torch.device(device), error) is expected


def failing_first(method, error, calls: list):
    """``method`` that raises ``error`` on its first call, then behaves normally."""
    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return method(*args, **kwargs)
    return wrapper


def test_a_step_mps_refuses_moves_the_run_to_the_cpu_and_it_trains_on(tiny_workspace, one_thread, monkeypatch):
    trainer = make_trainer(tiny_workspace, "mps", iterations=3)
    trainer.device = torch.device("mps")  # as if on an Apple GPU (the tensors stay on the CPU here)
    calls = []
    monkeypatch.setattr(trainer, "step", failing_first(trainer.step, RuntimeError("ConvTranspose 3D is not supported on MPS"), calls))
    stream_before = trainer.sampler.generator.get_state()
    assert trainer.run() == "finished"
    notices = trainer.events.of("notice")
    assert len(notices) == 1 and "Apple GPU (MPS)" in notices[0]["message"] and "ConvTranspose 3D" in notices[0]["message"]
    assert notices[0]["device"].startswith("cpu (")
    assert trainer.device.type == "cpu" and trainer.fell_back_to_cpu
    assert len(calls) == 4  # the refused step ran again on the CPU: 3 iterations counted
    assert [p["iteration"] for p in trainer.events.of("progress")] == [1, 2, 3]
    assert json.loads((trainer.run_dir / "config.json").read_text())["device"] == "cpu"
    assert all(p.device.type == "cpu" for p in trainer.method.parameters())
    # The sampler was rebuilt with the same random stream (nothing was drawn before the failure here).
    assert stream_before.shape == trainer.sampler.generator.get_state().shape


def test_the_rebuilt_sampler_continues_the_random_stream(tiny_workspace, one_thread):
    trainer = make_trainer(tiny_workspace, "stream", iterations=3)
    trainer.sampler.sample(1, 1)  # advance the stream
    state = trainer.sampler.generator.get_state()
    old_sampler = trainer.sampler
    trainer.device = torch.device("mps")
    trainer.fall_back_to_cpu(RuntimeError("x is not supported on MPS"))
    assert trainer.sampler is not old_sampler
    assert torch.equal(trainer.sampler.generator.get_state(), state)


def test_a_second_failure_on_the_cpu_is_not_hidden(tiny_workspace, one_thread, monkeypatch):
    trainer = make_trainer(tiny_workspace, "twice", iterations=3)
    trainer.device = torch.device("mps")

    def always_fails():
        raise RuntimeError("Placeholder storage has not been allocated on MPS device!")

    monkeypatch.setattr(trainer, "step", always_fails)
    with pytest.raises(RuntimeError, match="MPS"):
        trainer.run()
    assert len(trainer.events.of("notice")) == 1  # one fallback, then the error surfaces


def test_a_prediction_mps_refuses_is_made_on_the_cpu(tiny_workspace, one_thread, monkeypatch):
    trainer = make_trainer(tiny_workspace, "predict", iterations=1, predict_cases="all")
    trainer.device = torch.device("mps")
    calls = []
    monkeypatch.setattr(trainer, "_predict_cases", failing_first(
        trainer._predict_cases, NotImplementedError("aten::_upsample_foo not implemented for the MPS device"), calls))
    trainer.predict("final")
    assert len(calls) == 2 and trainer.device.type == "cpu"
    assert sorted(p["case"] for p in trainer.events.of("prediction")) == ["case0", "case1", "case2"]


def test_mps_out_of_memory_retries_smaller_instead_of_falling_back(tiny_workspace, one_thread, monkeypatch):
    trainer = make_trainer(tiny_workspace, "oom", iterations=2, batch_unlabelled=2)
    trainer.device = torch.device("mps")
    emptied = []
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: emptied.append(1))
    real_step, calls = trainer.step, []

    def step():
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("MPS backend out of memory")
        trainer.device = torch.device("cpu")  # the retried steps run where the tensors are
        return real_step()

    monkeypatch.setattr(trainer, "step", step)
    assert trainer.run() == "finished"
    assert emptied == [1] and not trainer.fell_back_to_cpu
    assert trainer.config["batch_unlabelled"] == 1
    assert "out of GPU memory" in trainer.events.of("notice")[0]["message"]


def test_checkpoints_keep_the_mps_random_state(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: torch.arange(4, dtype=torch.uint8))

    class Method(torch.nn.Linear):
        name = "supervised"

    save_checkpoint(tmp_path / "last.pt", iteration=1, method=Method(1, 1), optimizer=None, sampler_rng=None)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(state["rng"]["mps"], torch.arange(4, dtype=torch.uint8))


def test_cpu_runs_are_unchanged_by_the_device_module(tiny_workspace, one_thread):
    state, sink = run_training(tiny_workspace, "plain", iterations=2)
    assert state == "finished"
    assert sink.of("started")[0]["device"].startswith("cpu (")
    assert not sink.of("notice")
    assert sink.of("finished")[0]["stopped_by"] == "iterations"
