"""Several processes, one run: ``torchrun --nproc-per-node N -m semisupseg train ...`` (PyTorch DDP).

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE > 1`` the trainer
(through the few hooks it calls on ``Distributed``) trains one model with
``torch.nn.parallel.DistributedDataParallel``:

- **Data.** Every rank samples its own patches: its ``PatchSampler`` is seeded with
  ``seed + RANK_SEED_STRIDE * rank`` and its global torch generator (dropout) likewise, so the
  ranks draw distinct random streams; rank 0 keeps the single-process streams, which makes a
  1-rank run identical to a plain one.
- **Gradients.** ``DistributedDataParallel`` wraps the method's training step (``StepModule``):
  backward averages the gradients of the trainable parameters over the ranks, so with per-rank
  batch B the update is the one of a global batch N*B whose loss is the mean of the per-rank
  losses. This equals a single-process batch-N*B loss exactly for per-voxel means over equal
  voxel counts (cross-entropy over fully labelled patches) and approximately for terms pooled
  over the batch (the soft Dice sums): ``Testing/engine/test_distributed.py`` states the tolerance.
- **Agreement.** Every decision that changes the number of collective calls is taken together:
  a non-finite loss skips the step on every rank (``all_finite``: MIN over ranks), a stop request
  (STOP file or SIGTERM seen by any rank) stops every rank after the same iteration (``any``).
- **EMA teacher.** Updated from the student after ``optimizer.step``; the student's weights are the
  same on every rank (same initial weights, broadcast by DDP; same averaged gradients), so the
  teacher is too.
- **Outputs.** Only rank 0 writes: events (other ranks get ``NullEvents``), ``config.json``,
  ``manifest.json``, checkpoints and predictions, and only rank 0 serves ``PREDICT`` requests.
  Progress events carry the losses averaged over the ranks (the global batch's loss).
- **Resume.** A checkpoint keeps each rank's random state (``rank_rng``, gathered to rank 0, with the
  SHA-256 of each rank's weights, which must agree: a warning is logged if they do not), so a
  resumed N-rank run continues every rank's stream; with another number of ranks the new ranks
  start fresh streams (a log line says so).

Backends: ``nccl`` for CUDA devices (each rank on ``cuda:LOCAL_RANK``), ``gloo`` on the CPU.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..events import log

RANK_SEED_STRIDE = 1_000_003  # a prime: rank streams never collide with small seed changes


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names and bytes, in state_dict order)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class NullEvents:
    """The event writer of ranks other than 0: events are dropped (rank 0 reports for the run)."""

    file = None

    def attach(self, events_path) -> None:
        pass

    def emit(self, event: str, **fields) -> dict:
        return {"event": event, **fields}

    def close(self) -> None:
        pass


class StepModule(nn.Module):
    """``forward(batch, ctx) -> (loss, parts)``: the method's training step as a module, so that
    DistributedDataParallel can wrap it (a tuple output lets DDP find the graph's tensors)."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch, ctx):
        out = self.method.training_step(batch, ctx)
        return out.loss, out.parts


class Distributed:
    """The process's place in a torchrun job (``rank``, ``world_size``, ``local_rank``); a no-op when alone."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        self._ddp: Optional[nn.Module] = None
        self._owns_group = False

    @classmethod
    def from_environment(cls, environ=None) -> "Distributed":
        environ = os.environ if environ is None else environ
        return cls(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)), int(environ.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def exit_helper_rank(self) -> None:
        """End a rank other than 0 now, its run finished and its group left (``close``): skip the
        interpreter's finalisation, where gloo's threads were seen to abort the process after a
        finished run (see ``close``) and torchrun then reports the whole run as failed. Such a rank
        writes no files and no events; its output streams are flushed first. No-op on rank 0 and
        outside torchrun."""
        if self.enabled and not self.is_main:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- set-up -------------------------------------------------------------------------------
    def device(self, device: torch.device) -> torch.device:
        """The rank's device: ``cuda:LOCAL_RANK`` for a CUDA run (one GPU per rank), else as given."""
        if self.enabled and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group (nccl on CUDA, gloo on the CPU; rendezvous from torchrun's environment)."""
        import torch.distributed as dist

        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self._owns_group = True
            log(f"distributed: rank {self.rank} of {self.world_size} on {device}")

    def barrier(self) -> None:
        """Wait until every rank is here (no-op alone).

        Rank 0 still saves and predicts after the other ranks' last step; a rank that left the
        gloo group meanwhile was seen to abort ("terminate called without an active exception").
        """
        import torch.distributed as dist

        if self.enabled and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        """Leave the process group. The DDP wrapper (its reducer holds gloo work objects and
        buckets of tensors) is freed first, while the group is alive: left to the interpreter's
        finalisation, after the group is gone, a rank was seen to abort at exit ("terminate called
        without an active exception", SIGABRT) after a finished run, failing a resumed two-rank
        run in CI (gloo's worker threads still held such work; pytorch/pytorch#179291)."""
        import gc

        import torch.distributed as dist

        self._ddp = None
        gc.collect()
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False

    def sampler_seed(self, seed: int) -> int:
        return int(seed) + RANK_SEED_STRIDE * self.rank

    def seed_rank(self, seed: int) -> None:
        """The rank's own global streams (dropout, ...); called after the model is built with ``seed``."""
        if self.rank:
            rank_seed = self.sampler_seed(seed)
            random.seed(rank_seed)
            np.random.seed(rank_seed % 2**32)
            torch.manual_seed(rank_seed)

    def wrap(self, method: nn.Module, device: torch.device) -> None:
        """Wrap the training step in DistributedDataParallel (broadcasts rank 0's weights to every rank)."""
        if not self.enabled:
            return
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: a method may leave parts out of a step (the FeCL projection head
        # when the contrastive term is off, the second student on some steps).
        self._ddp = DistributedDataParallel(StepModule(method), device_ids=device_ids, find_unused_parameters=True)

    # ---- the step -----------------------------------------------------------------------------
    def training_step(self, method, batch, ctx):
        """``method.training_step`` (through DDP when distributed: gradients averaged in backward)."""
        if self._ddp is None:
            return method.training_step(batch, ctx)
        from ..methods.base import StepOutput

        loss, parts = self._ddp(batch, ctx)
        return StepOutput(loss, parts)

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (a step is skipped everywhere or nowhere)."""
        finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
        if self.enabled:
            import torch.distributed as dist

            finite = finite.to(self._collective_device(loss.device))
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on some rank (e.g. a stop request seen by one of them)."""
        if not self.enabled:
            return bool(flag)
        import torch.distributed as dist

        value = torch.tensor([int(bool(flag))], dtype=torch.int32, device=self._collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean_parts(self, parts: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """The loss parts averaged over the ranks (every rank gets the same floats)."""
        names = sorted(parts)
        if not self.enabled or not names:
            return {name: float(parts[name]) for name in parts}
        import torch.distributed as dist

        values = torch.stack([parts[name].detach().float().reshape(()) for name in names])
        values = values.to(self._collective_device(values.device))
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = (values / self.world_size).cpu().tolist()
        return {name: values[names.index(name)] for name in parts}

    def _collective_device(self, fallback: Optional[torch.device] = None) -> torch.device:
        """nccl needs CUDA tensors, gloo CPU ones."""
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ---- checkpoints --------------------------------------------------------------------------
    def gather_rng(self, sampler, method: Optional[nn.Module] = None) -> Optional[List[dict]]:
        """Every rank's random state (``{"torch", "sampler"}``) and the SHA-256 of its weights (student
        and teacher: they must be equal on every rank), gathered on all ranks; None when alone.
        Rank 0 logs a warning when the weights differ."""
        if not self.enabled:
            return None
        import torch.distributed as dist

        mine = {"torch": torch.get_rng_state()}
        if hasattr(sampler, "generator"):
            mine["sampler"] = sampler.generator.get_state()
        if method is not None:
            mine["weights_sha256"] = weights_digest(method)
        gathered: List[Optional[dict]] = [None] * self.world_size
        dist.all_gather_object(gathered, mine)
        digests = {entry.get("weights_sha256") for entry in gathered}
        if self.is_main and len(digests) > 1:
            log(f"distributed: WARNING the ranks' weights differ ({len(digests)} distinct); please report this")
        return gathered

    def restore_rng(self, state: dict, sampler, seed: int, iteration: int) -> None:
        """After the checkpoint's rank-0 state was restored: this rank's own streams."""
        if not self.enabled:
            return
        saved = state.get("rank_rng") or []
        if self.rank < len(saved) and saved[self.rank] is not None:
            torch.set_rng_state(saved[self.rank]["torch"])
            if "sampler" in saved[self.rank] and hasattr(sampler, "generator"):
                sampler.generator.set_state(saved[self.rank]["sampler"])
            return
        # Resumed with more ranks than the checkpoint knew: a fresh stream for this rank.
        fresh = self.sampler_seed(seed) + int(iteration)
        torch.manual_seed(fresh)
        if hasattr(sampler, "generator"):
            sampler.generator.manual_seed(fresh)
        log(f"distributed: the checkpoint has no random state for rank {self.rank}; a fresh stream starts")
