"""UA-MT (Yu et al., MICCAI 2019): mean teacher whose consistency skips voxels the teacher is unsure of.

Training step (B = B_l + B_u patches, C classes, R = the consistency region, see below):
    s = student(x)                                                  (B, C, X, Y, Z)
    t = teacher(x_R + clip(0.1 N, -0.2, 0.2))                        no grad, one noisy pass
    pbar = mean over T = 8 noisy teacher passes of softmax(teacher(x_R + noise))   (dropout on)
    U = -sum_c pbar_c ln(pbar_c + 1e-6)                             natural log
    tau(t) = (0.75 + 0.25 ramp(t/T; 1.0)) ln C                      ramp(p; f) = exp(-5 (1 - min(p/f, 1))^2)
    M = [U < tau]
    L_cons = sum_v M_v sum_c (softmax(s)_c - softmax(t)_c)^2 / (C sum_v M_v + 1e-16)
    L = 0.5 (CE + Dice)(s[:B_l], y) + 0.1 ramp(t/T; 0.4) L_cons

The values are those of the UA-MT repository (yulequan/UA-MT, the script its README runs):
EMA 0.99, T = 8 passes two copies at a time, input noise 0.1 clipped at 0.2, threshold ramp over
the whole run, supervised loss 0.5 (CE + Dice), consistency 0.1 ramped over 40 x 150 iterations.
That ramp spans the whole of UA-MT's 6000 iterations; we express it as a fraction of the run and
default to 0.4, which is 40 x 150 of the 15000-iteration protocols (SS-Net, BCP; companion-
methods.md §4) and the engine's mean teacher; set ``consistency_ramp`` to 1.0 for the
6000-iteration original. The consistency region R is the unlabelled patches, as in the README's script
(``train_LA_meanteacher_certainty_unlabel.py``); ``consistency_on="all"`` gives the repository's
other script, which uses labelled + unlabelled patches.

The teacher runs in the method's mode: during training the trainer puts the method in train
mode, so the teacher's dropout is on and its T passes are Monte-Carlo dropout samples (as
released, where the EMA model stays in train mode).

Partial labels (y = -1 where not annotated): the supervised CE + Dice counts annotated voxels
only. The unannotated voxels of a partially labelled case are unlabelled data: the sampler feeds
that case to the unlabelled stream too, so they get the certainty-masked consistency there
(R = the unlabelled patches by default; with ``consistency_on="all"`` the labelled patches'
unannotated voxels are covered directly as well). We do not add the labelled patches to R by
default: that would cost T more teacher passes on them each step for voxels the unlabelled
stream already reaches.
"""

from __future__ import annotations

import math

import torch

from ..losses import SupervisedLoss
from ..training.ema import ema_decay, ema_update, make_teacher
from ..training.schedules import sigmoid_rampup
from .base import Batch, Method, StepContext, StepOutput, choice_problems, number_problems, raise_option_problems
from .teacher_input import teacher_noise

CONSISTENCY_REGIONS = ("unlabelled", "all")


@torch.no_grad()
def mc_mean_probabilities(
    network: torch.nn.Module, x: torch.Tensor, passes: int, passes_per_forward: int, noise_std: float, noise_clip: float
) -> torch.Tensor:
    """Mean softmax of ``passes`` noisy forward passes: (B, 1, *S) -> (B, C, *S) fp32.

    ``passes_per_forward`` copies of the batch go through the network together (UA-MT: 2), which
    trades memory for fewer launches; each copy gets its own noise (and dropout mask).
    """
    total = None
    done = 0
    while done < passes:
        copies = min(passes_per_forward, passes - done)
        stacked = teacher_noise(x.repeat(copies, *([1] * (x.dim() - 1))), noise_std, noise_clip)
        probs = torch.softmax(network(stacked).float(), dim=1)
        summed = probs.reshape(copies, x.shape[0], *probs.shape[1:]).sum(dim=0)
        total = summed if total is None else total + summed
        done += copies
    return total / passes


def predictive_entropy(mean_probs: torch.Tensor) -> torch.Tensor:
    """U = -sum_c pbar_c ln(pbar_c + 1e-6), natural log (UA-MT's form): (B, C, *S) -> (B, *S)."""
    return -(mean_probs * torch.log(mean_probs + 1e-6)).sum(dim=1)


def uamt_threshold(progress: float, num_classes: int, start: float, end: float, ramp: float) -> float:
    """tau(t) = (start + (end - start) ramp(t/T)) ln C; UA-MT: (0.75 + 0.25 ramp) ln 2, ramp over the run."""
    return (start + (end - start) * sigmoid_rampup(progress, ramp)) * math.log(num_classes)


def masked_softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_v M_v sum_c (softmax(s)_c - softmax(t)_c)^2 / (C sum_v M_v + 1e-16), teacher detached.

    (B, C, *S) x2, mask (B, *S) -> 0-d fp32: the mean squared error over classes and certain
    voxels; 0 (with a graph) when no voxel is certain.
    """
    p_student = torch.softmax(student_logits.float(), dim=1)
    p_teacher = torch.softmax(teacher_logits.detach().float(), dim=1)
    squared = ((p_student - p_teacher) ** 2).sum(dim=1)
    weights = mask.float()
    return (weights * squared).sum() / (student_logits.shape[1] * weights.sum() + 1e-16)


class UAMT(Method):
    """Uncertainty-aware mean teacher.

    Options:
        ema_decay: teacher EMA cap, alpha_t = min(1 - 1/(t+1), ema_decay); 0.99.
        consistency: maximum consistency weight; 0.1.
        consistency_ramp: fraction of the run over which the weight ramps up (sigmoid); 0.4.
        mc_passes: T, noisy teacher passes for the uncertainty; 8.
        mc_passes_per_forward: passes batched into one teacher forward; 2.
        threshold_start, threshold_end: tau from start * ln C to end * ln C; 0.75 and 1.0.
        threshold_ramp: fraction of the run over which tau ramps (sigmoid); 1.0.
        consistency_on: "unlabelled" (default) or "all" patches.
        supervised_weight: factor on CE + Dice; 0.5 as in UA-MT.
        noise_std, noise_clip: teacher input noise; 0.1 and 0.2.

    Logged parts: sup (weighted supervised loss), ce, dice, mse (masked consistency distance),
    certain_fraction (share of region voxels under tau), threshold (tau).
    """

    name = "uamt"
    description = "UA-MT (MICCAI 2019): mean teacher, consistency only where MC-dropout teacher entropy is low."
    defaults = {
        "ema_decay": 0.99,
        "consistency": 0.1,
        "consistency_ramp": 0.4,
        "mc_passes": 8,
        "mc_passes_per_forward": 2,
        "threshold_start": 0.75,
        "threshold_end": 1.0,
        "threshold_ramp": 1.0,
        "consistency_on": "unlabelled",
        "supervised_weight": 0.5,
        "noise_std": 0.1,
        "noise_clip": 0.2,
    }

    def __init__(self, build_network, num_classes, options):
        super().__init__(build_network, num_classes, options)
        self._validate()
        self.student = build_network()
        self.teacher = make_teacher(self.student)
        self.supervised = SupervisedLoss(num_classes)

    def _validate(self) -> None:
        o = self.options
        problems = number_problems(o, {"ema_decay": (0.0, 1.0, False), "mc_passes": (1, None, True),
                                       "mc_passes_per_forward": (1, None, True)})
        problems += number_problems(o, {key: (0.0, None, False) for key in (
            "consistency", "consistency_ramp", "threshold_start", "threshold_end", "threshold_ramp",
            "supervised_weight", "noise_std", "noise_clip")})
        problems += choice_problems(o, {"consistency_on": CONSISTENCY_REGIONS})
        raise_option_problems(self.name, problems)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        o = self.options
        n_l = batch.x_l.shape[0]
        x = torch.cat([batch.x_l, batch.x_u])
        s_logits = self.student(x)
        region = x if o["consistency_on"] == "all" else batch.x_u
        s_region = s_logits if o["consistency_on"] == "all" else s_logits[n_l:]
        threshold = uamt_threshold(ctx.progress, self.num_classes, o["threshold_start"], o["threshold_end"],
                                   o["threshold_ramp"])
        has_region = region.shape[0] > 0
        if has_region:  # teacher passes under the trainer's autocast; only the losses go to fp32
            with torch.no_grad():
                t_logits = self.teacher(teacher_noise(region, o["noise_std"], o["noise_clip"]))
                mean_probs = mc_mean_probabilities(self.teacher, region, o["mc_passes"], o["mc_passes_per_forward"],
                                                   o["noise_std"], o["noise_clip"])

        with torch.autocast(device_type=x.device.type, enabled=False):
            parts = self.supervised.parts(s_logits[:n_l], batch.y_l)
            sup = o["supervised_weight"] * parts["total"]
            if has_region:
                certain = predictive_entropy(mean_probs) < threshold
                mse = masked_softmax_mse(s_region, t_logits, certain)
                certain_fraction = certain.float().mean()
            else:  # no unlabelled patches: nothing to be consistent on
                mse = s_logits.float().sum() * 0.0
                certain_fraction = torch.zeros((), device=x.device)
            weight = o["consistency"] * sigmoid_rampup(ctx.progress, o["consistency_ramp"])
            loss = sup + weight * mse

        return StepOutput(loss, {
            "sup": sup.detach(),
            "ce": parts["ce"].detach(),
            "dice": parts["dice"].detach(),
            "mse": mse.detach(),
            "certain_fraction": certain_fraction.detach(),
            "threshold": torch.tensor(threshold, device=x.device),
        })

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update(self.teacher, self.student, ema_decay(ctx.iteration, self.options["ema_decay"]))

    def inference_networks(self):
        return [self.teacher]
