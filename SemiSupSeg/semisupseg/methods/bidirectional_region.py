"""Bidirectional uncertainty-aware region learning (Zhou, Zhao, Sun et al., arXiv 2502.07457).

What the paper establishes (abstract and summaries, companion-methods.md §2.1): a teacher-student
pair; uncertainty measured by entropy; on labelled data the **high**-uncertainty regions get extra
supervision from the exact labels ("URL"); on unlabelled data training is restricted to the
**low**-uncertainty regions so wrong pseudo-labels interfere less ("CRL"). No code was released.

Everything else is **our reconstruction** (§2.2), chosen to be minimal and kept configurable:
the teacher is the student's EMA (decay 0.99) and sees the input with the mean-teacher noise;
uncertainty is the teacher's normalised entropy U = H(p^t) / ln C in [0, 1], one pass, no grad;
URL adds the supervised loss restricted to M_h = [U >= tau_h] (or, ``labelled_weighting="soft"``,
a U-weighted CE); CRL is CE to the teacher's argmax on M_l = [U < tau_l] (optionally + Dice);
regions are the most / least uncertain share of the batch's voxels (default, "percentile") or
set by absolute thresholds; the CRL weight is ramped.
Unknowns only the PDF can settle (§2.3): teacher vs student entropy, hard masks vs soft weights,
threshold values, whether URL replaces or adds to the plain supervised loss (here: adds), copy-
paste augmentation (not used here), network and schedule.

Training step (B = B_l + B_u patches, C classes):
    s = student(x);  t = teacher(x + clip(0.1 N, -0.2, 0.2)) (no grad);  U = H(softmax t) / ln C
    L_l = (CE + Dice)(s_l, y) + lambda_h L_URL,   L_URL = (CE + Dice)(s_l, y | M_h)
    L_u = CE(s_u, argmax t_u | M_l) [+ Dice(s_u, argmax t_u | M_l)]
    L   = L_l + lambda_u ramp(t/T; 0.4) L_u

Partial labels (``y = -1`` where not annotated): L_l and URL count annotated voxels only, and
percentile-mode M_h is the most uncertain share *of the annotated voxels*. The unannotated
voxels of a partially labelled case are treated as unlabelled data: the sampler also feeds that
case to the unlabelled stream, where CRL's pseudo-labels cover them; the labelled rows take no
CRL term (their annotated voxels have better targets than pseudo-labels).
"""

from __future__ import annotations

import torch

from ..losses import SupervisedLoss, annotated_mask
from ..losses.region_terms import (
    THRESHOLD_MODES,
    high_uncertainty_mask,
    low_uncertainty_mask,
    masked_cross_entropy,
    masked_dice_loss,
    normalised_entropy,
    uncertainty_weighted_cross_entropy,
)
from ..training.ema import ema_decay, ema_update, make_teacher
from ..training.schedules import sigmoid_rampup
from .base import (
    Batch,
    Method,
    StepContext,
    StepOutput,
    choice_problems,
    flag_problems,
    number_problems,
    raise_option_problems,
)
from .teacher_input import teacher_noise

LABELLED_WEIGHTINGS = ("mask", "soft")


class BidirectionalRegion(Method):
    """Mean teacher with uncertainty-aware labelled (URL) and certainty-aware unlabelled (CRL) regions.

    Options (all ours, see the module docstring):
        ema_decay: teacher EMA cap; 0.99.   noise_std, noise_clip: teacher input noise; 0.1, 0.2.
        threshold_mode: "percentile" (default) or "absolute".
        high_uncertainty_fraction: percentile mode, URL region = the most uncertain 20 % (0.2) of
            the labelled voxels of the batch.
        low_uncertainty_fraction: percentile mode, CRL region = the least uncertain 80 % (0.8) of
            the unlabelled voxels of the batch.
        high_uncertainty_threshold: absolute mode, URL region U >= 0.5.
        low_uncertainty_threshold_start, low_uncertainty_threshold_end, threshold_ramp: absolute
            mode, CRL region U < tau_l(t) = start + (end - start) ramp(t/T; threshold_ramp), UA-MT's
            (0.75 -> 1.0) ln C schedule in normalised units over the whole run (1.0).
        labelled_weighting: "mask" (URL = CE + Dice on M_h) or "soft" (URL = mean U CE, i.e.
            CE weighted by 1 + lambda_h U); "mask".
        high_uncertainty_weight: lambda_h; 1.0.
        unlabelled_weight: lambda_u; 1.0.   unlabelled_ramp: its sigmoid ramp, fraction of the run; 0.4.
        unlabelled_dice: add a masked Dice term to CRL; false.

    Logged parts: sup, ce, dice (plain supervised), url, crl, high_fraction (share of annotated
    labelled voxels in M_h; the mean U in soft mode), low_fraction (share of unlabelled voxels in M_l).
    """

    name = "bidirectional_region"
    description = (
        "Bidirectional uncertainty-aware region learning (arXiv 2502.07457, reconstructed): "
        "labels where unsure, pseudo-labels where sure."
    )
    defaults = {
        "ema_decay": 0.99,
        "noise_std": 0.1,
        "noise_clip": 0.2,
        "threshold_mode": "percentile",
        "high_uncertainty_fraction": 0.2,
        "low_uncertainty_fraction": 0.8,
        "high_uncertainty_threshold": 0.5,
        "low_uncertainty_threshold_start": 0.75,
        "low_uncertainty_threshold_end": 1.0,
        "threshold_ramp": 1.0,
        "labelled_weighting": "mask",
        "high_uncertainty_weight": 1.0,
        "unlabelled_weight": 1.0,
        "unlabelled_ramp": 0.4,
        "unlabelled_dice": False,
    }

    def __init__(self, build_network, num_classes, options):
        super().__init__(build_network, num_classes, options)
        self._validate()
        self.student = build_network()
        self.teacher = make_teacher(self.student)
        self.supervised = SupervisedLoss(num_classes)

    def _validate(self) -> None:
        o = self.options
        problems = number_problems(o, {key: (0.0, 1.0, False) for key in (
            "ema_decay", "high_uncertainty_fraction", "low_uncertainty_fraction", "high_uncertainty_threshold",
            "low_uncertainty_threshold_start", "low_uncertainty_threshold_end")})
        problems += number_problems(o, {key: (0.0, None, False) for key in (
            "noise_std", "noise_clip", "threshold_ramp", "high_uncertainty_weight", "unlabelled_weight",
            "unlabelled_ramp")})
        problems += choice_problems(o, {"threshold_mode": THRESHOLD_MODES, "labelled_weighting": LABELLED_WEIGHTINGS})
        problems += flag_problems(o, ["unlabelled_dice"])
        raise_option_problems(self.name, problems)

    def low_threshold(self, progress: float) -> float:
        """Absolute-mode CRL threshold tau_l(t) in normalised-entropy units."""
        o = self.options
        start, end = o["low_uncertainty_threshold_start"], o["low_uncertainty_threshold_end"]
        return start + (end - start) * sigmoid_rampup(progress, o["threshold_ramp"])

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        o = self.options
        n_l = batch.x_l.shape[0]
        x = torch.cat([batch.x_l, batch.x_u])
        s_logits = self.student(x)
        with torch.no_grad():
            t_logits = self.teacher(teacher_noise(x, o["noise_std"], o["noise_clip"]))

        with torch.autocast(device_type=x.device.type, enabled=False):
            t_probs = torch.softmax(t_logits.float(), dim=1)
            uncertainty = normalised_entropy(t_probs)
            s_l, y_l, u_l = s_logits[:n_l], batch.y_l, uncertainty[:n_l]
            parts = self.supervised.parts(s_l, y_l)
            url, high_fraction = self._url(s_l, y_l, u_l)
            crl, low_fraction = self._crl(s_logits[n_l:], t_probs[n_l:], uncertainty[n_l:], ctx.progress)
            lambda_u = o["unlabelled_weight"] * sigmoid_rampup(ctx.progress, o["unlabelled_ramp"])
            loss = parts["total"] + o["high_uncertainty_weight"] * url + lambda_u * crl

        return StepOutput(loss, {
            "sup": parts["total"].detach(),
            "ce": parts["ce"].detach(),
            "dice": parts["dice"].detach(),
            "url": url.detach(),
            "crl": crl.detach(),
            "high_fraction": high_fraction.detach(),
            "low_fraction": low_fraction.detach(),
        })

    def _url(self, logits, target, uncertainty):
        """Extra supervision where the teacher is unsure: (loss, share of voxels in M_h)."""
        o = self.options
        if o["labelled_weighting"] == "soft":
            return uncertainty_weighted_cross_entropy(logits, target, uncertainty), uncertainty.mean()
        annotated = annotated_mask(target)
        mask = high_uncertainty_mask(uncertainty, o["threshold_mode"], o["high_uncertainty_fraction"],
                                     o["high_uncertainty_threshold"], valid=annotated)
        loss = masked_cross_entropy(logits, target, mask) + masked_dice_loss(logits, target, mask)
        return loss, mask.float().sum() / annotated.float().sum().clamp_min(1.0)

    def _crl(self, logits, teacher_probs, uncertainty, progress):
        """Pseudo-label loss where the teacher is sure: (loss, share of voxels in M_l)."""
        o = self.options
        if logits.shape[0] == 0:  # no unlabelled patches this step
            return logits.float().sum() * 0.0, torch.zeros((), device=logits.device)
        mask = low_uncertainty_mask(uncertainty, o["threshold_mode"], o["low_uncertainty_fraction"],
                                    self.low_threshold(progress))
        pseudo = teacher_probs.argmax(dim=1)
        loss = masked_cross_entropy(logits, pseudo, mask)
        if o["unlabelled_dice"]:
            loss = loss + masked_dice_loss(logits, pseudo, mask)
        return loss, mask.float().mean()

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update(self.teacher, self.student, ema_decay(ctx.iteration, self.options["ema_decay"]))

    def inference_networks(self):
        return [self.teacher]
