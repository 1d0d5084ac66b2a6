"""Mean-teacher exponential moving average of the student's weights."""

from __future__ import annotations

import torch
from torch import nn

from .compilation import compile_network, is_compiled, plain_copy


def ema_decay(iteration: int, cap: float = 0.99) -> float:
    """alpha_t = min(1 - 1/(t+1), cap): 0 at t = 0 (teacher := student), then ramps to ``cap``."""
    return min(1.0 - 1.0 / (iteration + 1), cap)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """theta_T <- alpha * theta_T + (1 - alpha) * theta_S over parameters; buffers are copied.

    One fused ``torch._foreach_lerp_`` over all parameters instead of a Python loop of small
    kernels: on a GPU this is one launch per parameter group rather than two per tensor.
    """
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    # lerp_(end, w): self += w * (end - self)  ==  alpha * self + (1 - alpha) * end with w = 1 - alpha
    torch._foreach_lerp_(t_params, s_params, 1.0 - alpha)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of the student (exact copy, so iteration 0 needs no special case).

    A compiled student gets a teacher compiled on its own (see ``compilation.plain_copy``).
    """
    teacher = plain_copy(student)
    if is_compiled(student):
        compile_network(teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
