"""Networks: shapes, parameter counts, size checks, memory format, MC dropout, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semisupseg.errors import InputError
from semisupseg.networks import build_network, count_parameters, enable_mc_dropout

SMALL = {"unet3d": {"widths": (4, 8, 16, 32, 64)}, "vnet": {"n_filters": 4}}


def conv_params(c_in: int, c_out: int, kernel_volume: int) -> int:
    """Weights plus biases of one convolution."""
    return c_in * c_out * kernel_volume + c_out


def small(name: str, num_classes: int = 2, **options) -> nn.Module:
    torch.manual_seed(0)
    return build_network(name, in_channels=1, num_classes=num_classes, **{**SMALL[name], **options})


@pytest.fixture
def x():
    return torch.randn(1, 1, 32, 32, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["unet3d", "vnet"])
def test_output_and_embedding_shapes(name, x):
    model = small(name, num_classes=3).eval()
    with torch.no_grad():
        logits = model(x)
        logits_f, embedding = model.forward_features(x)
    assert model.size_divisor == 16
    assert logits.shape == (1, 3, 32, 32, 16)
    assert embedding.shape == (1, 256, 4, 4, 2)
    torch.testing.assert_close(logits, logits_f)
    # not L2-normalised by the network
    assert not torch.allclose(embedding.norm(dim=1), torch.ones(1, 4, 4, 2))


@pytest.mark.parametrize("name", ["unet3d", "vnet"])
def test_size_not_divisible_by_16_is_a_clear_error(name):
    model = small(name).eval()
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.zeros(1, 1, 32, 24, 16))


def test_unknown_network_or_option_lists_valid_ones():
    with pytest.raises(InputError) as info:
        build_network("resnet")
    assert "unet3d" in info.value.hint and "vnet" in info.value.hint
    with pytest.raises(InputError, match="width"):
        build_network("unet3d", width=3)
    with pytest.raises(InputError, match="normalization"):
        build_network("vnet", normalization="layer")


def test_unet3d_parameter_count_matches_reference_breakdown():
    """dycon-code-reading section 4.1, computed here block by block, minus the unused tanh head."""
    w = (16, 32, 64, 128, 256)
    block = lambda a, b: conv_params(a, b, 27) + conv_params(b, b, 27)  # noqa: E731
    encoder = block(1, w[0]) + sum(block(w[k - 1], w[k]) for k in range(1, 5))
    decoder = sum(block(w[k] + w[k + 1], w[k]) for k in range(4))
    head = conv_params(16, 2, 1)
    projection = conv_params(256, 512, 1) + 2 * 512 + conv_params(512, 256, 1) + 2 * 256
    assert encoder == 7_376 + 41_536 + 166_016 + 663_808 + 2_654_720
    assert decoder == 1_769_728 + 442_496 + 110_656 + 27_680
    assert projection == 264_448

    model = build_network("unet3d")
    assert count_parameters(model.projection) == 264_448
    assert count_parameters(model) == encoder + decoder + head + projection == 6_148_498
    # the backbone has no normalisation parameters or buffers (InstanceNorm, affine=False)
    assert all(name.startswith("projection.") for name, _ in model.named_buffers())
    assert count_parameters(build_network("unet3d", projection=False)) == 5_884_050


def test_vnet_parameter_count_is_the_classic_uamt_vnet_plus_head():
    """Backbone computed stage by stage from the UA-MT V-Net description (dycon-code-reading 4.2).

    The reference reports 9,707,236 with its own head (263,936: no ReLU/final BN) which leaves
    9,443,300 = 9,443,266 + 34, i.e. our backbone plus one extra 16->2 1x1x1 conv in the reference.
    """
    n = [16, 32, 64, 128, 256]
    stage = lambda convs, c: convs * conv_params(c, c, 27)  # noqa: E731
    # stages 2..5 start after a down-conv that already gives them their width: all convs are c -> c
    encoder = conv_params(1, 16, 27) + stage(2, 32) + stage(3, 64) + stage(3, 128) + stage(3, 256)
    down = sum(conv_params(n[k], n[k + 1], 8) for k in range(4))
    up = sum(conv_params(n[k + 1], n[k], 8) for k in range(4))
    decoder = stage(3, 128) + stage(3, 64) + stage(2, 32) + stage(1, 16)
    backbone = encoder + down + up + decoder + conv_params(16, 2, 1)
    assert backbone == 9_443_266

    model = build_network("vnet")
    assert count_parameters(build_network("vnet", projection=False)) == backbone
    assert count_parameters(model) == backbone + 264_448 == 9_707_714
    assert count_parameters(build_network("vnet", normalization="batch", projection=False)) > backbone


@pytest.mark.parametrize("name", ["unet3d", "vnet"])
def test_channels_last_3d_matches_standard_layout(name, x):
    model = small(name).eval()
    with torch.no_grad():
        expected_logits, expected_embedding = model.forward_features(x)
        model_cl = model.to(memory_format=torch.channels_last_3d)
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        logits, embedding = model_cl.forward_features(x_cl)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embedding, expected_embedding, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["unet3d", "vnet"])
def test_mc_dropout_only_switches_dropout_layers(name, x):
    model = small(name).eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        enable_mc_dropout(model)
        assert not torch.allclose(model(x), model(x))
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    assert len(dropouts) == 2 and all(m.training for m in dropouts)
    others = [m for m in model.modules() if not isinstance(m, nn.modules.dropout._DropoutNd)]
    assert not any(m.training for m in others)  # BatchNorm of the head keeps its running stats


@pytest.mark.parametrize("name", ["unet3d", "vnet"])
def test_backward_reaches_every_parameter(name):
    model = small(name, num_classes=2).train()
    x = torch.randn(2, 1, 32, 32, 16, generator=torch.Generator().manual_seed(2))
    logits, embedding = model.forward_features(x)
    loss = logits.square().mean() + embedding.square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero


def test_kaiming_init_and_projection_batchnorm_init():
    model = build_network("unet3d", widths=(8, 16, 32, 64, 128))
    conv = model.encoder[3][0].conv  # 32 -> 64 channels, fan-in 32 * 27
    expected_std = (2.0 / (32 * 27)) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.05
    bn = model.projection.layers[1]
    assert torch.all(bn.bias == 0) and abs(bn.weight.mean().item() - 1.0) < 0.01
