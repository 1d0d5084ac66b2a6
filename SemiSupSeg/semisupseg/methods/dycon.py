"""DyCON (Assefa et al., CVPR 2025): mean teacher + UnCL + FeCL, as specified in docs/dycon.md.

Training step (shapes for B = B_l + B_u patches of X x Y x Z voxels, C classes):
    s, e_S = student(x)                          s: (B, C, X, Y, Z), e_S: (B, 256, X/8, Y/8, Z/8)
    t, e_T = teacher(x + clip(0.1 N, -0.2, 0.2)) (no grad, dropout on as released)
    L = L_sup(s[:B_l], y) + eta * (L_UnCL(s, t; beta(t)) + L_FeCL) [+ mse_weight * MSE]
FeCL runs separately on the labelled patches (patch labels from the ground truth) and on the
unlabelled ones (patch labels from the teacher's prediction where it is confident, decision D1);
the two parts are logged separately and L_FeCL is their anchor-weighted mean, i.e. exactly the
mean over all anchors of both streams (a stream without anchors does not dilute the other).

Partial labels (``y = -1`` where not annotated): L_sup counts annotated voxels only; a labelled
block's FeCL label is the majority of its annotated voxels, and a block with none is left out of
the labelled stream (label -1, also as a teacher negative). UnCL already runs on every patch,
labelled rows included, so their unannotated voxels get the consistency term there. The same
unannotated voxels reach FeCL through the unlabelled stream: the sampler feeds every partially
labelled case to it as well, where blocks take the teacher's confident pseudo-labels (D1).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..losses import (
    SupervisedLoss,
    block_labels,
    block_mean,
    cap_anchors,
    dycon_beta,
    fecl,
    hard_negative_threshold,
    teacher_block_labels,
    threshold_hard_negative_loss,
    uncl,
)
from ..training.ema import ema_decay, ema_update, make_teacher
from ..training.schedules import sigmoid_rampup
from .base import Batch, Method, StepContext, StepOutput
from .teacher_input import teacher_noise

PATCH_BLOCK = 8  # one embedding vector per 8^3 voxel block (bottleneck x2 upsampled)


class DyCON(Method):
    """DyCON with every **D** decision of docs/dycon.md as an option.

    Options (defaults from dycon.md):
        eta: weight of (UnCL + FeCL), 0.5.
        beta_max, beta_min, beta_lambda: beta(t) = max(beta_min, beta_max exp(-lambda t/T));
            lambda None -> ln(beta_max / beta_min). beta_fixed: a constant beta (ablation).
        tau, gamma, top_k: FeCL temperature, focal exponent, teacher hard negatives (D2).
        hard_negatives: "topk" (paper, D2: K teacher negatives in FeCL's denominator) or
            "threshold" (released code: top_k off, plus a separate -ln(1 - c) penalty on student-
            teacher pairs of different labels above a rising cosine threshold; see losses/fecl_compat).
        max_anchors: anchors per sample (class-balanced cap; memory is O(N^2)).
        pseudo_label_confidence: an unlabelled block takes part in FeCL only where the teacher's
            mean max probability is at least this (D1).
        fecl_streams: "both" (default), "labelled" or "unlabelled".
        mse_weight: the released code's extra softmax-MSE term, off (0) by default; when > 0 it is
            ramped like the mean teacher's consistency.
        ema_decay, noise_std, noise_clip: mean-teacher settings.
    """

    name = "dycon"
    description = "DyCON (CVPR 2025): mean teacher + uncertainty-aware consistency (UnCL) + focal entropy-aware contrast (FeCL)."
    defaults = {
        "eta": 0.5,
        "beta_max": 5.0,
        "beta_min": 0.5,
        "beta_lambda": None,
        "beta_fixed": None,
        "tau": 0.6,
        "gamma": 2.0,
        "top_k": 64,
        "hard_negatives": "topk",
        "max_anchors": 2048,
        "pseudo_label_confidence": 0.8,
        "fecl_streams": "both",
        "mse_weight": 0.0,
        "mse_ramp": 0.4,
        "ema_decay": 0.99,
        "noise_std": 0.1,
        "noise_clip": 0.2,
    }

    def __init__(self, build_network, num_classes, options):
        super().__init__(build_network, num_classes, options)
        if self.options["hard_negatives"] not in ("topk", "threshold"):
            from ..errors import InputError

            raise InputError(
                f"dycon option hard_negatives='{self.options['hard_negatives']}' is not valid.",
                "Use topk (paper) or threshold (released code).",
            )
        if self.options["fecl_streams"] not in ("both", "labelled", "unlabelled"):
            from ..errors import InputError

            raise InputError(
                f"dycon option fecl_streams='{self.options['fecl_streams']}' is not valid.",
                "Use both, labelled or unlabelled.",
            )
        self.student = build_network()
        if not hasattr(self.student, "forward_features"):
            from ..errors import InputError

            raise InputError(
                "DyCON needs a network with a projection head (forward_features).",
                "Use network unet3d or vnet with projection enabled.",
            )
        self.teacher = make_teacher(self.student)
        self.supervised = SupervisedLoss(num_classes)
        # Anchor sub-sampling has its own generator so it does not shift the global RNG stream.
        self.anchor_generator: Optional[torch.Generator] = None

    def beta(self, progress: float) -> float:
        o = self.options
        if o["beta_fixed"] is not None:
            return float(o["beta_fixed"])
        return dycon_beta(progress, o["beta_max"], o["beta_min"], o["beta_lambda"])

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        o = self.options
        n_l = batch.x_l.shape[0]
        x = torch.cat([batch.x_l, batch.x_u])
        s_logits, s_emb = self.student.forward_features(x)
        with torch.no_grad():
            t_logits, t_emb = self.teacher.forward_features(teacher_noise(x, o["noise_std"], o["noise_clip"]))
        sup = self.supervised(s_logits[:n_l], batch.y_l)

        # Both DyCON losses in fp32 whatever the autocast setting (exp/log of entropies and
        # 1e-6 epsilons are not safe in reduced precision).
        with torch.autocast(device_type=x.device.type, enabled=False):
            s32, t32 = s_logits.float(), t_logits.float()
            beta = self.beta(ctx.progress)
            l_uncl = uncl(s32, t32, beta)
            streams = self.fecl_parts(s32, t32, s_emb.float(), t_emb.float(), batch.y_l, n_l, ctx.progress)
            fecl_l, fecl_u = (None if v is None else v[0] for v in streams)
            l_fecl = pooled_mean([v for v in streams if v is not None], s32)
            loss = sup + o["eta"] * (l_uncl + l_fecl)
            parts = {"sup": sup.detach(), "uncl": l_uncl.detach(), "fecl": l_fecl.detach(), "beta": torch.tensor(beta)}
            if fecl_l is not None:
                parts["fecl_labelled"] = fecl_l.detach()
            if fecl_u is not None:
                parts["fecl_unlabelled"] = fecl_u.detach()
            if o["mse_weight"] > 0:
                mse = (s32.softmax(1) - t32.softmax(1)).pow(2).mean()
                loss = loss + o["mse_weight"] * sigmoid_rampup(ctx.progress, o["mse_ramp"]) * mse
                parts["mse"] = mse.detach()
        return StepOutput(loss, parts)

    def fecl_parts(self, s_logits, t_logits, s_emb, t_emb, y_l, n_l, progress=0.0):
        """(FeCL, anchor count) on the labelled and on the unlabelled patches; ``None`` for a stream that is off."""
        o = self.options
        z = F.normalize(s_emb.flatten(2).transpose(1, 2), dim=-1)  # (B, N, D)
        z_t = F.normalize(t_emb.flatten(2).transpose(1, 2), dim=-1)
        # Hbar: student entropy averaged over each block, divided by ln C (kept in the graph).
        p_s = s_logits.softmax(1)
        entropy = -(p_s * torch.log(p_s + 1e-6)).sum(1) / math.log(self.num_classes)
        entropy = block_mean(entropy, PATCH_BLOCK)
        labels_l = block_labels(y_l, PATCH_BLOCK, self.num_classes)
        labels_u = teacher_block_labels(t_logits[n_l:].softmax(1), PATCH_BLOCK, o["pseudo_label_confidence"])
        out = []
        for stream, labels, rows in (("labelled", labels_l, slice(0, n_l)), ("unlabelled", labels_u, slice(n_l, None))):
            if o["fecl_streams"] not in ("both", stream) or labels.shape[0] == 0:
                out.append(None)
                continue
            anchors = cap_anchors(labels, o["max_anchors"], self._generator(labels.device))
            compat = o["hard_negatives"] == "threshold"
            top_k = 0 if compat else o["top_k"]
            value = fecl(z[rows], anchors, z_t[rows], labels, entropy[rows], o["tau"], o["gamma"], top_k)
            if compat:
                value = value + threshold_hard_negative_loss(
                    z[rows], anchors, z_t[rows], labels, hard_negative_threshold(progress)
                )
            out.append((value, anchors_with_positive(anchors, self.num_classes)))
        return out[0], out[1]

    def _generator(self, device) -> torch.Generator:
        if self.anchor_generator is None or self.anchor_generator.device != torch.device(device):
            self.anchor_generator = torch.Generator(device=device)
            self.anchor_generator.manual_seed(20250406)
        return self.anchor_generator

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update(self.teacher, self.student, ema_decay(ctx.iteration, self.options["ema_decay"]))


def anchors_with_positive(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Number of anchors that have at least one positive: per sample, classes with >= 2 patches.

    labels: (B, N) with -1 for excluded patches. A float tensor (no host sync).
    """
    counts = torch.stack([(labels == c).sum(1) for c in range(num_classes)], 1)  # (B, C)
    return torch.where(counts >= 2, counts, torch.zeros_like(counts)).sum().float()


def pooled_mean(streams: list, like: torch.Tensor) -> torch.Tensor:
    """Anchor-weighted mean of per-stream FeCL means = the mean over all anchors of all streams."""
    if not streams:
        return like.sum() * 0.0
    total = sum(value * count for value, count in streams)
    count = sum(count for _, count in streams)
    return total / count.clamp_min(1.0)
