"""What the trainer does when its device refuses: an Apple GPU that lacks an operation, a GPU out of memory.

``DeviceRecovery`` is a part of ``Trainer`` (a base class), kept apart because it is one job: carry
the run on instead of failing. It moves the run to the CPU when MPS refuses an operation
(``devices.is_mps_failure`` says which errors those are), and retries a step that ran out of GPU
memory with a smaller batch or patch. It uses the trainer's ``config``, ``method``, ``optimizer``,
``sampler``, ``run_dir``, ``events`` and ``dist``.
"""

from __future__ import annotations

import torch

from ..config import save_json_atomic
from ..errors import InputError
from .devices import device_description, empty_cache, optimizer_to


class DeviceRecovery:
    """Mixed into ``Trainer``: falling back to the CPU and shrinking after out-of-memory (see the module doc)."""

    def fall_back_to_cpu(self, error: BaseException) -> None:
        """Move the run to the CPU after MPS refused an operation: method, optimiser state and
        sampler (its random stream continues); config.json records the CPU; a ``notice`` says why."""
        cpu = torch.device("cpu")
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        self.events.emit("notice", message=f"the Apple GPU (MPS) cannot run this run ({reason}); "
                         "training goes on on the CPU (slower)", device=device_description(cpu))
        self.device = cpu
        self.method = self.method.to(cpu)
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last_3d)
        optimizer_to(self.optimizer, cpu)
        stream = self.sampler.generator.get_state() if hasattr(self.sampler, "generator") else None
        self.sampler = self._build_sampler()
        if stream is not None:
            self.sampler.generator.set_state(stream)
        self.config["device"] = str(cpu)
        self.fell_back_to_cpu = True
        if self.dist.is_main:
            save_json_atomic(self.config, self.run_dir / "config.json")

    def shrink_after_out_of_memory(self) -> None:
        """Retry smaller instead of failing: unlabelled batch, then labelled batch, then patch.

        The step that ran out of memory is not counted (no optimiser step happened), so the
        schedule is unchanged. The new sizes are written to config.json so a resume uses them.
        """
        self.optimizer.zero_grad(set_to_none=True)
        empty_cache(self.device)
        cfg = self.config
        if cfg["batch_unlabelled"] > 1:
            cfg["batch_unlabelled"] //= 2
        elif cfg["batch_labelled"] > 1:
            cfg["batch_labelled"] //= 2
        else:
            patch = list(cfg["patch_size"])
            largest = max(range(3), key=lambda axis: patch[axis])
            if patch[largest] <= 32:
                raise InputError(
                    "Out of GPU memory even with one labelled patch of the smallest size.",
                    "Use --device cpu, a narrower network (network_options.widths) or a larger GPU.",
                )
            patch[largest] -= 16
            cfg["patch_size"] = patch
            self.sampler = self._build_sampler()
        save_json_atomic(cfg, self.run_dir / "config.json")
        self.events.emit(
            "notice",
            message="out of GPU memory: retrying with a smaller batch or patch",
            batch_labelled=cfg["batch_labelled"],
            batch_unlabelled=cfg["batch_unlabelled"],
            patch_size=cfg["patch_size"],
        )
