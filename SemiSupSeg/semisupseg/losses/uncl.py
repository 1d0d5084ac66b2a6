"""UnCL: DyCON's uncertainty-aware consistency between student and teacher voxel predictions."""

from __future__ import annotations

import torch
from torch import nn

# Added inside the log of the entropy, as in the DyCON specification (docs/dycon.md).
ENTROPY_EPS = 1e-6


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 unchanged (the DyCON losses never run in half precision)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def voxel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Natural-log entropy over the class axis: H = -sum_c p_c ln(p_c + 1e-6).

    probs: (B, C, *spatial) probabilities -> (B, *spatial). Not normalised by ln C.
    """
    return -(probs * torch.log(probs + ENTROPY_EPS)).sum(dim=1)


def uncl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Uncertainty-aware consistency loss (DyCON's UnCL).

        p_S = softmax(s), p_T = softmax(t) over classes; H = -sum_c p ln(p + 1e-6)
        L = mean_{b, v} [ sum_c (p_S,c - p_T,c)^2 / (exp(beta H_S) + exp(beta H_T))
                          + beta (H_S + H_T) ]

    The teacher is a constant (its logits are detached here). The gradient reaches the student
    through p_S and through H_S, both in the weight (not detached: raising the student's
    entropy lowers the weight, which the ``beta H_S`` term then penalises) and in ``beta H_S``.

    Args:
        student_logits: (B, C, *spatial) logits of the student.
        teacher_logits: (B, C, *spatial) logits of the teacher, same shape.
        beta: scalar (float or 0-d tensor), usually ``dycon_beta(t / T)``.

    Returns:
        0-d tensor, computed with autocast off in fp32 (fp64 for fp64 inputs), never in half precision.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ in shape")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        p_student = torch.softmax(at_least_fp32(student_logits), dim=1)
        p_teacher = torch.softmax(at_least_fp32(teacher_logits.detach()), dim=1)
        h_student = voxel_entropy(p_student)
        h_teacher = voxel_entropy(p_teacher)
        weight = 1.0 / (torch.exp(beta * h_student) + torch.exp(beta * h_teacher))
        squared_difference = ((p_student - p_teacher) ** 2).sum(dim=1)
        per_voxel = weight * squared_difference + beta * (h_student + h_teacher)
        return per_voxel.mean()


class UnCLLoss(nn.Module):
    """Module form of :func:`uncl`; beta changes every iteration so it is passed per call.

    ``forward(student_logits (B, C, *spatial), teacher_logits (B, C, *spatial), beta) -> 0-d tensor``
        L = mean_{b, v} [ sum_c (p_S,c - p_T,c)^2 / (exp(beta H_S) + exp(beta H_T)) + beta (H_S + H_T) ]
    """

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
        return uncl(student_logits, teacher_logits, beta)
