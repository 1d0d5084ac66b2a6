"""Supervised-only baseline: CE + Dice on the labelled patches, unlabelled scans unused."""

from __future__ import annotations

from ..losses import SupervisedLoss
from .base import Batch, Method, StepContext, StepOutput


class SupervisedOnly(Method):
    """The lower bound every semi-supervised table reports: L = CE + Dice on labelled patches.

    Predictions come from the student itself (there is no teacher). Partial labels
    (y = -1 where not annotated): CE and Dice count annotated voxels only; unannotated voxels
    train nothing (this method has no unlabelled term, and no unlabelled stream).
    """

    name = "supervised"
    description = "Supervised only (CE + Dice on the labelled cases); the lower bound."
    uses_unlabelled = False
    defaults = {}

    def __init__(self, build_network, num_classes, options):
        super().__init__(build_network, num_classes, options)
        self.student = build_network()
        self.supervised = SupervisedLoss(num_classes)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        logits = self.student(batch.x_l)
        parts = self.supervised.parts(logits, batch.y_l)
        loss = parts["ce"] + parts["dice"]
        return StepOutput(loss, {"sup": loss.detach(), **{k: v.detach() for k, v in parts.items()}})

    def inference_networks(self):
        return [self.student]
