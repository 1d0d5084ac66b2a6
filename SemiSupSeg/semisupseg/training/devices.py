"""Which device trains, how it is described, and what falls back when the device lacks something.

``--device auto`` picks, in order: a CUDA GPU, an Apple GPU through PyTorch's MPS backend
(``torch.backends.mps.is_available()``), the CPU. ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` can be
asked for explicitly; asking for a device PyTorch does not see is an ``InputError``.

What an Apple GPU (MPS) lacks, and what the engine does about it (MPS training is untested on
real hardware: this project's machines have no Apple GPU; every branch below is tested with the
backend's availability simulated):

- **Operators without an MPS kernel.** PyTorch raises ``NotImplementedError`` for them unless the
  environment variable ``PYTORCH_ENABLE_MPS_FALLBACK=1`` is set *before torch is imported*; then
  each such operator runs on the CPU (slower, correct). ``semisupseg``'s command line sets it on
  macOS (``enable_mps_operator_fallback``) unless the user set it, before anything imports torch.
- **Whole 3D operations MPS refuses** (older PyTorch/macOS: 3D transposed convolution, 3D pooling
  backward, ...). These raise ``RuntimeError`` naming MPS, which the operator fallback does not
  catch. The trainer then moves the run to the CPU once (``is_mps_failure``), says so in a
  ``notice`` event and trains on: a slower run instead of a failed one.
- **Autocast.** ``amp: auto`` is bf16 on CUDA only: on MPS bf16 autocast needs macOS 14 and its
  3D convolution speed is unmeasured, so MPS trains in fp32 unless ``amp: bf16`` asks for it; on
  macOS < 14 (or a PyTorch without MPS autocast) that request falls back to fp32 with a notice
  (``autocast_choice``).
- **Defaults.** An MPS run takes the CPU's defaults (300 iterations, batch 2 + 2, the CPU patch,
  overlap 0.25; ``config.resolve_config`` treats only CUDA as a GPU): Apple GPUs share the
  system's memory (8-16 GB on many Macs) and are far slower than the data-centre GPUs the GPU
  defaults were sized for.
- **Memory.** The sampler keeps the volumes on the device (unified memory); an MPS out-of-memory
  error is ``torch.OutOfMemoryError`` like CUDA's, so the trainer's retry-smaller applies.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from typing import MutableMapping, Optional

from ..errors import InputError

MPS_DESCRIPTION = "Apple GPU (MPS)"
MPS_FALLBACK_VARIABLE = "PYTORCH_ENABLE_MPS_FALLBACK"
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def mps_available() -> bool:
    """Whether PyTorch can use an Apple GPU here (False on builds without the MPS backend)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str):
    """``auto`` -> cuda, else mps, else cpu; an explicit device PyTorch does not see is an input error."""
    import torch

    name = str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            "device 'cuda' was requested but PyTorch sees no CUDA GPU.",
            "Use --device auto or cpu, or install a CUDA build of PyTorch that matches your driver.",
        )
    if name == "mps":
        if not mps_available():
            raise InputError(
                "device 'mps' (Apple GPU) was requested but PyTorch's MPS backend is not available here.",
                "MPS needs a Mac with Apple silicon, macOS 12.3 or newer and an arm64 PyTorch; "
                "otherwise use --device auto or cpu.",
            )
        return torch.device("mps")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"Unknown device '{name}'.", f"Use {DEVICE_CHOICES}.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"Unknown device '{name}'.", f"Use {DEVICE_CHOICES}.") from None


def device_description(device) -> str:
    """What the ``started`` event, the manifest and the Slicer device line show for ``device``."""
    import torch

    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return MPS_DESCRIPTION
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@dataclass(frozen=True)
class AutocastChoice:
    """The dtype a step runs under (None: fp32) and, when a request could not be met, why."""

    dtype: Optional[object]
    notice: Optional[str] = None


def mps_bf16_autocast_supported() -> bool:
    """bf16 autocast on MPS needs a PyTorch with MPS autocast and macOS 14 or newer."""
    import torch

    try:
        from torch.amp.autocast_mode import is_autocast_available

        if not is_autocast_available("mps"):
            return False
    except ImportError:  # older PyTorch: no MPS autocast at all
        return False
    backend = getattr(torch.backends, "mps", None)
    newer = getattr(backend, "is_macos_or_newer", None)
    return bool(newer is not None and newer(14, 0))


def autocast_choice(device, amp: str) -> AutocastChoice:
    """``amp`` (auto | bf16 | off) on ``device`` -> the autocast dtype, with a notice on fallback.

    auto: bf16 on CUDA, fp32 elsewhere (the CPU's bf16 is slower than fp32 on most CPUs; MPS: see
    the module docstring). bf16: as asked, except on an MPS that cannot (then fp32 and a notice).
    """
    import torch

    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return AutocastChoice(None)
    if device.type == "mps" and not mps_bf16_autocast_supported():
        return AutocastChoice(None, "bf16 autocast is not available on this Apple GPU (it needs macOS 14 and a "
                                    "PyTorch with MPS autocast): training in fp32")
    return AutocastChoice(torch.bfloat16)


def is_mps_failure(device, error: BaseException) -> bool:
    """Whether ``error`` from a step on ``device`` is MPS lacking an operation (move to the CPU).

    ``NotImplementedError``: an operator without an MPS kernel while the operator fallback is off.
    ``RuntimeError`` naming MPS: a whole operation MPS refuses (e.g. "ConvTranspose 3D is not
    supported on MPS" in older PyTorch). Out-of-memory is not one of them (retry smaller instead).
    """
    import torch

    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if getattr(device, "type", None) != "mps" or isinstance(error, out_of_memory):
        return False
    if isinstance(error, NotImplementedError):
        return True
    text = str(error).lower()
    # PyTorch before 2.5 raised MPS out-of-memory as a plain RuntimeError naming MPS.
    return isinstance(error, RuntimeError) and "mps" in text and "out of memory" not in text


def empty_cache(device) -> None:
    """Give cached allocator memory back (after an out-of-memory error) on CUDA or MPS."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def enable_mps_operator_fallback(environ: Optional[MutableMapping[str, str]] = None,
                                 platform_name: Optional[str] = None) -> bool:
    """Set ``PYTORCH_ENABLE_MPS_FALLBACK=1`` on macOS unless the user chose a value; returns whether set.

    PyTorch reads the variable once, when torch is imported, so the command line calls this
    before anything imports torch. On other systems MPS does not exist and nothing is set.
    """
    environ = os.environ if environ is None else environ
    platform_name = sys.platform if platform_name is None else platform_name
    if platform_name != "darwin" or MPS_FALLBACK_VARIABLE in environ:
        return False
    environ[MPS_FALLBACK_VARIABLE] = "1"
    return True


def available_devices() -> dict:
    """What ``semisupseg devices`` prints: the device ``auto`` picks, its description, and each kind.

    ``{"auto": "cuda"|"mps"|"cpu", "description": str, "cuda": [descriptions], "mps": bool,
    "mps_description": "Apple GPU (MPS)"}``; the Slicer module's device line can show
    ``description`` as is.
    """
    import torch

    chosen = resolve_device("auto")
    cuda = [device_description(torch.device("cuda", i)) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"auto": chosen.type, "description": device_description(chosen), "cuda": cuda,
            "mps": mps_available(), "mps_description": MPS_DESCRIPTION}


def optimizer_to(optimizer, device) -> None:
    """Move an optimiser's state tensors (e.g. SGD momentum) to ``device``, in place."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if hasattr(value, "to"):
                state[key] = value.to(device)
