"""Sliding-window probabilities with fake networks, MC dropout, and the CPU-stitching fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semisupseg.inference import sliding_window
from semisupseg.inference.sliding_window import predict_probabilities, stitching_fits
from semisupseg.inference.uncertainty import normalised_entropy

PATCH = (8, 8, 8)


def pointwise_net(weights, bias) -> nn.Module:
    """1x1x1 convolution with fixed weights: logits_c = w_c * x + b_c at every voxel.

    Its output at a voxel does not depend on the window, so the Gaussian-blended result must
    equal softmax(w x + b) exactly, wherever the windows fall and however MONAI pads.
    """
    conv = nn.Conv3d(1, len(weights), kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights, dtype=torch.float32).view(-1, 1, 1, 1, 1))
        conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return conv


def expected_softmax(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(net(image[None, None]), dim=1)[0]


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(13, 10, 6)  # bigger than the patch in x, y; smaller in z


def test_probabilities_equal_pointwise_softmax(image):
    net = pointwise_net([1.0, -1.0, 0.5], [0.0, 0.2, -0.1])
    probs, mutual_info = predict_probabilities([net], image, PATCH, num_classes=3)
    assert mutual_info is None
    assert probs.shape == (3, 13, 10, 6) and probs.dtype == torch.float32 and probs.device.type == "cpu"
    assert torch.allclose(probs.sum(0), torch.ones(13, 10, 6), atol=1e-5)
    assert torch.allclose(probs, expected_softmax(net, image), atol=1e-5)
    # A channel axis of 1 in front gives the same result.
    probs_4d, _ = predict_probabilities([net], image[None], PATCH, num_classes=3)
    assert torch.allclose(probs_4d, probs)


def test_volume_smaller_than_patch():
    small = torch.randn(5, 3, 4)
    net = pointwise_net([2.0, -1.0], [0.1, 0.0])
    probs, _ = predict_probabilities([net], small, PATCH, num_classes=2)
    assert probs.shape == (2, 5, 3, 4)
    assert torch.allclose(probs, expected_softmax(net, small), atol=1e-5)


def test_networks_are_averaged(image):
    first = pointwise_net([1.0, -1.0], [0.0, 0.0])
    second = pointwise_net([-3.0, 2.0], [0.5, 0.0])
    probs, _ = predict_probabilities([first, second], image, PATCH, num_classes=2)
    expected = (expected_softmax(first, image) + expected_softmax(second, image)) / 2
    assert torch.allclose(probs, expected, atol=1e-5)


def test_spatial_network_sums_to_one(image):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 3, padding=1))
    probs, _ = predict_probabilities([net], image, PATCH, num_classes=2, overlap=0.25, sw_batch_size=3)
    assert probs.shape == (2, 13, 10, 6)
    assert torch.allclose(probs.sum(0), torch.ones(13, 10, 6), atol=1e-5)


def test_autocast_bfloat16_gives_float32_probabilities(image):
    net = pointwise_net([1.0, -1.0], [0.0, 0.0])
    probs, _ = predict_probabilities([net], image, PATCH, num_classes=2, autocast_dtype=torch.bfloat16)
    assert probs.dtype == torch.float32
    assert torch.allclose(probs, expected_softmax(net, image), atol=2e-2)


def dropout_net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv3d(1, 8, 1), nn.ReLU(), nn.Dropout3d(0.5), nn.Conv3d(8, 2, 1))


def test_mc_dropout_mutual_information(image):
    net = dropout_net().eval()
    torch.manual_seed(3)
    probs, mutual_info = predict_probabilities([net], image, PATCH, num_classes=2, mc_samples=4)
    assert mutual_info.shape == (13, 10, 6) and mutual_info.dtype == torch.float32
    assert mutual_info.min() >= 0.0 and mutual_info.max() <= 1.0
    assert mutual_info.max() > 1e-3  # dropout makes the passes disagree somewhere
    # MI is a part of the total entropy of the mean prediction.
    assert (mutual_info <= normalised_entropy(probs) + 1e-5).all()
    assert torch.allclose(probs.sum(0), torch.ones(13, 10, 6), atol=1e-5)
    assert not any(m.training for m in net.modules())  # eval mode restored


def test_training_mode_is_restored(image):
    net = dropout_net().train()
    predict_probabilities([net], image, PATCH, num_classes=2, mc_samples=2)
    assert all(m.training for m in net.modules())
    predict_probabilities([net], image, PATCH, num_classes=2)
    assert all(m.training for m in net.modules())


def test_mc_dropout_without_dropout_layers(image):
    notices = []
    net = pointwise_net([1.0, -1.0], [0.0, 0.0])
    probs, mutual_info = predict_probabilities(
        [net], image, PATCH, num_classes=2, mc_samples=3, on_notice=notices.append
    )
    assert torch.allclose(mutual_info, torch.zeros_like(mutual_info), atol=1e-5)
    assert torch.allclose(probs, expected_softmax(net, image), atol=1e-5)
    assert any("no dropout" in n for n in notices)


def test_deterministic_without_mc(image):
    net = dropout_net().eval()
    first, _ = predict_probabilities([net], image, PATCH, num_classes=2)
    second, _ = predict_probabilities([net], image, PATCH, num_classes=2)
    assert torch.equal(first, second)  # dropout is off in plain inference


# ------------------------------------------------------------------------- memory fallback


def test_stitching_fits_uses_free_gpu_memory(monkeypatch):
    assert stitching_fits(torch.device("cpu"), 10**15)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    assert stitching_fits(torch.device("cuda"), 400)
    assert not stitching_fits(torch.device("cuda"), 600)  # over half of the free memory


def test_cpu_stitching_when_output_does_not_fit(image, monkeypatch):
    monkeypatch.setattr(sliding_window, "stitching_fits", lambda device, nbytes: False)
    notices = []
    net = pointwise_net([1.0, -1.0], [0.0, 0.0])
    probs, _ = predict_probabilities([net], image, PATCH, num_classes=2, on_notice=notices.append)
    assert torch.allclose(probs, expected_softmax(net, image), atol=1e-5)
    assert len(notices) == 1 and "CPU" in notices[0]


def test_out_of_memory_retries_with_cpu_stitching(image, monkeypatch):
    """GPU stitching that runs out of memory is retried once with the output on the CPU."""
    real_run = sliding_window._run_windows
    calls = []

    def fake_run(volume, predictor, patch, overlap, batch, sw_device, stitch_device):
        calls.append((sw_device.type, stitch_device.type))
        if stitch_device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("fake")
        return real_run(volume, predictor, patch, overlap, batch, torch.device("cpu"), stitch_device)

    monkeypatch.setattr(sliding_window, "_run_windows", fake_run)
    monkeypatch.setattr(sliding_window, "stitching_fits", lambda device, nbytes: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    notices = []
    net = pointwise_net([1.0, -1.0], [0.0, 0.0])
    probs, _ = predict_probabilities([net], image, PATCH, num_classes=2, device="cuda", on_notice=notices.append)
    assert calls == [("cuda", "cuda"), ("cuda", "cpu")]
    assert torch.allclose(probs, expected_softmax(net, image), atol=1e-5)
    assert "out of memory" in notices[0]


def test_bad_inputs():
    net = pointwise_net([1.0, -1.0], [0.0, 0.0])
    with pytest.raises(ValueError):
        predict_probabilities([], torch.zeros(4, 4, 4), PATCH, 2)
    with pytest.raises(ValueError):
        predict_probabilities([net], torch.zeros(2, 4, 4, 4), PATCH, 2)
