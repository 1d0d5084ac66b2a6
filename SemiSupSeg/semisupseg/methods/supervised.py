"""Supervised-only baseline: CE + Dice on the labelled patches, unlabelled scans unused."""

from __future__ import annotations

import torch

from ..losses import SupervisedLoss
from ..training.ema import ema_decay, ema_update, make_teacher
from .base import Batch, Method, StepContext, StepOutput, number_problems, raise_option_problems


class SupervisedOnly(Method):
    """The lower bound every semi-supervised table reports: L = CE + Dice on labelled patches.

    Predictions come from the student itself, or with ``ema_decay`` d > 0 from an exponential
    moving average of its weights (alpha_t = min(1 - 1/(t+1), d), as a mean teacher's; it takes
    no part in the loss). Why: at the constant CPU learning rate the student's last weights are
    one noisy point of the walk; on ACDC two 20-minute runs that differ only in where the budget
    stopped them scored held-out mean Dice 0.73 and 0.70. The average predicts from the recent
    stretch of the walk instead, at no cost to training.

    Partial labels (y = -1 where not annotated): CE and Dice count annotated voxels only;
    unannotated voxels train nothing (this method has no unlabelled term, and no unlabelled stream).
    """

    name = "supervised"
    description = "Supervised only (CE + Dice on the labelled cases); the lower bound."
    uses_unlabelled = False
    defaults = {"ema_decay": 0.0}

    def __init__(self, build_network, num_classes, options):
        super().__init__(build_network, num_classes, options)
        raise_option_problems(self.name, number_problems(self.options, {"ema_decay": (0.0, 0.9999, False)}))
        self.student = build_network()
        if self.options["ema_decay"] > 0:
            self.teacher = make_teacher(self.student)  # predicts only (named as the teacher methods' is)
        self.supervised = SupervisedLoss(num_classes)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        logits = self.student(batch.x_l)
        parts = self.supervised.parts(logits, batch.y_l)
        loss = parts["ce"] + parts["dice"]
        return StepOutput(loss, {"sup": loss.detach(), **{k: v.detach() for k, v in parts.items()}})

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        if self.options["ema_decay"] > 0:
            ema_update(self.teacher, self.student, ema_decay(ctx.iteration, self.options["ema_decay"]))

    def inference_networks(self):
        return [self.teacher] if self.options["ema_decay"] > 0 else [self.student]
