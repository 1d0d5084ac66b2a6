"""Mean teacher (Tarvainen & Valpola 2017): supervised loss + ramped softmax MSE to an EMA teacher."""

from __future__ import annotations

import torch

from ..losses import SupervisedLoss
from ..training.ema import ema_decay, ema_update, make_teacher
from ..training.schedules import sigmoid_rampup
from .base import Batch, Method, StepContext, StepOutput
from .teacher_input import teacher_noise


class MeanTeacher(Method):
    """L = L_sup(student on labelled) + w(t) * mean (softmax(s) - softmax(t))^2 over all patches.

    w(t) = consistency * exp(-5 (1 - min(t / (ramp * T), 1))^2); the teacher is the EMA of the
    student (alpha_t = min(1 - 1/(t+1), ema_decay)) and sees the input with clipped Gaussian noise.

    Partial labels (y = -1 where not annotated): L_sup counts annotated voxels only; the
    consistency term already covers every voxel of every patch, so unannotated voxels of the
    labelled patches are treated exactly like unlabelled ones (and a partially labelled case
    also feeds the unlabelled stream, see ``data/sampling.py``).
    """

    name = "mean_teacher"
    description = "Mean teacher: softmax-MSE consistency to an EMA teacher on all patches."
    defaults = {"consistency": 0.1, "consistency_ramp": 0.4, "ema_decay": 0.99, "noise_std": 0.1, "noise_clip": 0.2}

    def __init__(self, build_network, num_classes, options):
        super().__init__(build_network, num_classes, options)
        self.student = build_network()
        self.teacher = make_teacher(self.student)
        self.supervised = SupervisedLoss(num_classes)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher forward on the noisy input, no grad (train mode: dropout on, as released)."""
        with torch.no_grad():
            return self.teacher(teacher_noise(x, self.options["noise_std"], self.options["noise_clip"]))

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        x = torch.cat([batch.x_l, batch.x_u])
        s_logits = self.student(x)
        t_logits = self.teacher_logits(x)
        n_l = batch.x_l.shape[0]
        sup = self.supervised(s_logits[:n_l], batch.y_l)
        mse = (s_logits.float().softmax(1) - t_logits.float().softmax(1)).pow(2).mean()
        weight = self.options["consistency"] * sigmoid_rampup(ctx.progress, self.options["consistency_ramp"])
        loss = sup + weight * mse
        return StepOutput(loss, {"sup": sup.detach(), "mse": mse.detach()})

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update(self.teacher, self.student, ema_decay(ctx.iteration, self.options["ema_decay"]))

    def trainable_parameters(self):
        return list(self.student.parameters())
