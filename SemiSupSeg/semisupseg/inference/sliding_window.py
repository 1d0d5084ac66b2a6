"""Whole-volume class probabilities by sliding-window inference (MONAI), optionally with MC dropout.

``predict_probabilities`` runs every network over overlapping patches, averages their softmax,
and blends the windows with Gaussian weights (MONAI ``sliding_window_inference``,
``mode="gaussian"``; MONAI pads volumes smaller than the patch, with the volume's minimum as the
training sampler does, and crops the result back).

Memory: the blended output (C channels plus MONAI's count map) is kept on ``device`` when it fits
in the free GPU memory; otherwise the windows still run on the GPU but are stitched on the CPU
(``sw_device=device, device="cpu"``), which is slower but works for any volume size. The switch
is reported through ``on_notice``. An out-of-memory error while stitching on the GPU triggers
the same fallback once.

MC dropout (``mc_samples = K > 0``): inside each window, every network runs K times with only
its dropout layers in train mode. Each (network, pass) pair is one sample p_s, so disagreement
between networks (e.g. the two members of a dual-network method) counts as model uncertainty too:
    probs = mean_s p_s
    MI    = (H(mean_s p_s) - mean_s H(p_s)) / ln C        in [0, 1]
Both terms are blended across windows linearly, so MI stays >= 0 (entropy is concave).
Every module's train/eval flag is restored afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from .uncertainty import entropy_nats

__all__ = ["predict_probabilities", "enable_dropout_only", "stitching_fits"]

# Fraction of the free GPU memory the stitched output may take; the rest is left for the
# windows' activations (a 3D U-Net on a batch of patches needs a lot).
_OUTPUT_MEMORY_FRACTION = 0.5
_DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def enable_dropout_only(network: nn.Module) -> int:
    """Put ``network`` in eval mode except its dropout layers (train mode). Returns their count.

    Uses ``semisupseg.networks.enable_mc_dropout`` when that module provides it, so a network
    family with its own notion of stochastic layers decides; otherwise the plain torch dropout
    modules are switched here.
    """
    network.eval()
    try:
        from semisupseg.networks import enable_mc_dropout  # type: ignore[attr-defined]
    except ImportError:
        enable_mc_dropout = None
    if enable_mc_dropout is not None:
        enable_mc_dropout(network)
    else:
        for module in network.modules():
            if isinstance(module, _DROPOUT_TYPES):
                module.train()
    return sum(1 for m in network.modules() if isinstance(m, _DROPOUT_TYPES) and m.training)


class _WindowPredictor:
    """Callable for MONAI: windows (B, 1, x, y, z) -> (B, C [+1], x, y, z) float32.

    Channels 0..C-1 are the mean softmax over samples; with MC dropout, channel C is the mean
    per-sample entropy in nats (the "expected entropy" term of the mutual information).
    """

    def __init__(self, networks: list[nn.Module], mc_samples: int, autocast_dtype: torch.dtype | None):
        self.networks = networks
        self.passes = max(1, mc_samples)
        self.with_entropy = mc_samples > 0
        self.autocast_dtype = autocast_dtype

    def _softmax(self, network: nn.Module, window: torch.Tensor) -> torch.Tensor:
        autocast = (
            torch.autocast(device_type=window.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            logits = network(window)
        if isinstance(logits, (tuple, list)):  # tolerate networks that also return extras
            logits = logits[0]
        return torch.softmax(logits.float(), dim=1)  # softmax in fp32 whatever the autocast

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        prob_sum = None
        entropy_sum = None
        for _ in range(self.passes):
            for network in self.networks:
                p = self._softmax(network, window)
                prob_sum = p if prob_sum is None else prob_sum + p
                if self.with_entropy:
                    h = entropy_nats(p, dim=1)
                    entropy_sum = h if entropy_sum is None else entropy_sum + h
        samples = self.passes * len(self.networks)
        probs = prob_sum / samples
        if not self.with_entropy:
            return probs
        return torch.cat([probs, (entropy_sum / samples)[:, None]], dim=1)


def _as_volume_batch(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(X, Y, Z) or (1, X, Y, Z) -> (1, 1, X, Y, Z) float32."""
    volume = torch.as_tensor(image).float()
    if volume.ndim == 3:
        volume = volume[None]
    if volume.ndim != 4 or volume.shape[0] != 1:
        raise ValueError(f"image must be (X, Y, Z) or (1, X, Y, Z), got shape {tuple(volume.shape)}")
    return volume[None]


def stitching_fits(device: torch.device, output_bytes: int) -> bool:
    """Whether an output of ``output_bytes`` may be stitched on ``device`` (always true off-GPU)."""
    if device.type != "cuda":
        return True
    free_bytes, _total = torch.cuda.mem_get_info(device)
    return output_bytes <= _OUTPUT_MEMORY_FRACTION * free_bytes


def _run_windows(volume, predictor, patch_size, overlap, sw_batch_size, sw_device, stitch_device):
    out = sliding_window_inference(
        volume.to(stitch_device),
        roi_size=tuple(int(s) for s in patch_size),
        sw_batch_size=sw_batch_size,
        predictor=predictor,
        overlap=overlap,
        mode="gaussian",
        sw_device=sw_device,
        device=stitch_device,
        # A volume smaller than the window is padded as the training sampler pads it (with the
        # image minimum, data/sampling.py): MONAI's default 0 is the z-scored mean, a grey slab
        # the network never saw (issue 19: ~9-slice cine MRI in 16-slice windows).
        cval=float(volume.min()) if volume.numel() else 0.0,
    )
    return torch.as_tensor(out)[0]


def _stitched(volume, predictor, patch_size, overlap, sw_batch_size, device, out_channels, notice):
    """Run the windows on ``device``; stitch there if the output fits, on the CPU otherwise."""
    cpu = torch.device("cpu")
    # Output channels + MONAI's count map + the input itself, all float32.
    output_bytes = (out_channels + 2) * volume[0, 0].numel() * 4
    if stitching_fits(device, output_bytes):
        try:
            return _run_windows(volume, predictor, patch_size, overlap, sw_batch_size, device, device)
        except torch.cuda.OutOfMemoryError:
            if device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            notice("GPU out of memory while stitching the whole volume; retrying with stitching on the CPU (slower).")
    else:
        notice(
            f"the {output_bytes / 2**30:.1f} GiB probability volume does not fit in free GPU memory; "
            "stitching windows on the CPU (slower)."
        )
    return _run_windows(volume, predictor, patch_size, overlap, sw_batch_size, device, cpu)


def predict_probabilities(
    networks: Sequence[nn.Module],
    image: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    device: torch.device | str = "cpu",
    sw_batch_size: int = 2,
    mc_samples: int = 0,
    autocast_dtype: torch.dtype | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax probabilities of a whole volume, averaged over ``networks``, and optional MC-dropout MI.

    Args:
        networks: models mapping (B, 1, x, y, z) -> logits (B, C, x, y, z) (``net(x)`` is called).
        image: (X, Y, Z) or (1, X, Y, Z) float, already normalised like the training data.
        patch_size: window size (x, y, z), divisible by the networks' ``size_divisor``.
        num_classes: C, the number of output channels of every network.
        overlap: window overlap fraction for MONAI.
        device: where the networks run (they must already be there).
        sw_batch_size: windows per forward pass.
        mc_samples: K > 0 turns on MC dropout with K passes per network and returns the
            mutual information; 0 runs each network once in eval mode.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the networks under autocast.
        on_notice: called with a human-readable line when the run falls back to CPU stitching
            or MC dropout finds no dropout layer.

    Returns:
        probs: (C, X, Y, Z) float32 CPU tensor, summing to 1 over C.
        mutual_info: (X, Y, Z) float32 CPU tensor in [0, 1], or None when ``mc_samples == 0``.
    """
    nets = list(networks)
    if not nets:
        raise ValueError("predict_probabilities needs at least one network")
    notice = on_notice or (lambda message: None)
    device = torch.device(device)
    volume = _as_volume_batch(image)
    saved_modes = [(m, m.training) for net in nets for m in net.modules()]
    try:
        for net in nets:
            net.eval()
        if mc_samples > 0 and sum(enable_dropout_only(net) for net in nets) == 0:
            notice("MC dropout asked for, but the networks have no dropout layer: mutual information will be 0.")
        predictor = _WindowPredictor(nets, mc_samples, autocast_dtype)
        out_channels = num_classes + (1 if mc_samples > 0 else 0)
        with torch.inference_mode():
            out = _stitched(volume, predictor, patch_size, overlap, sw_batch_size, device, out_channels, notice)
            out = out.float().cpu()
    finally:
        for module, was_training in saved_modes:
            module.training = was_training  # exact per-module restore, no recursion
    if out.shape[0] != out_channels:
        returned = out.shape[0] - (out_channels - num_classes)
        raise ValueError(f"networks returned {returned} channels, expected num_classes = {num_classes}")
    probs = out[:num_classes].clone()
    if mc_samples <= 0:
        return probs, None
    mutual_info = (entropy_nats(probs, dim=0) - out[num_classes]) / math.log(num_classes)
    return probs, mutual_info.clamp_(0.0, 1.0)
