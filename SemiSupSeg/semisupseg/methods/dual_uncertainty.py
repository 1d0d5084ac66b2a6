"""Dual-network uncertainty-guided pseudo-labelling (Lu, Wu, Chaddad et al., arXiv 2509.13084).

Specification: docs/reference/companion-methods.md §1 (terms in losses/dual_uncertainty_terms.py).
Two different networks are trained together on the same patches, no EMA teacher:
    A = ResNetVNet (ResNet-34 encoder + V-Net decoder, networks/resnet_vnet.py), built here
    B = build_network(), the run's network (the V-Net in the paper)
Training step (B = B_l + B_u patches, z^k logits, p^k softmax, h^k last decoder features):
    L1  L_sup^k = CE + Dice (labelled, SupervisedLoss) + alpha L_mc^k, k in {A, B}, alpha = 0.5,
        L_mc on voxels where exactly one network is confidently (max p >= 0.6) foreground
    L2  L_u^k  = mean over kept unlabelled voxels of CE(z^k, yhat), yhat = union pseudo-label,
        kept = at least one network among its 20 % lowest-entropy voxels
    L3  L_kl   = mean exp(-KL(p^B || p^A)) CE(z^A, argmax p^B) + mean KL, B detached (all patches)
    L4  L_cos  = mean (1 - cos(p^A, p^B)) (all patches, gradient to both)
    L5  L_c    = prototype alignment of the uncertain unlabelled voxels' features of the weaker
                 network (larger labelled Dice loss this step), weight 0.1 ramp(t/T; 1.0)
    L = sum_k L_sup^k + w_u sum_k L_u^k + lambda_c(t) L_c + w_kl L_kl + w_cos L_cos
Prediction averages the softmax of A and B (``inference_networks`` returns both).

This is the **paper-intended** form: every term carries gradient (the released code computes L2
and L5 from detached tensors, so they train nothing; §1.8). ``as_released=True`` reproduces
what the released code optimises: L2 and L5 are still computed and logged but left out of the
loss, so only L1, L3 and L4 train the networks. That is its only behavioural difference; the
released extras that cannot change training are not copied (the N/|K| factor on L2 is an
option, ``cps_scale_by_kept_fraction``; the released L5 is NaN in its logs and attracts the two
prototypes, see losses/dual_uncertainty_terms.py).

C > 2 classes (the reference is binary): the mutual-correction mask compares the networks'
confident foreground *classes*; the squared error sums over foreground classes; the union
pseudo-label takes the foreground class when one network says foreground and the more confident
network's class when both do; prototypes and uncertain sets are per class and the prototypes of
every class pair are pushed apart. Each reduces to the binary rule for C = 2.

Voxel features for L5: A's last decoder feature map (``forward_decoder_features``, b channels at
full resolution, as in the paper). For B we use its ``forward_decoder_features`` when the network
has one; otherwise the input of its ``head_dropout`` module (the last decoder feature map of the
engine's ``vnet`` and ``unet3d``) captured by a forward pre-hook. Pseudo-labels and masks are
brought to the feature grid by nearest-neighbour sampling when the grids differ.

Partial labels (y = -1 where not annotated): L1's CE + Dice and its mutual-correction term count
annotated voxels only (the weaker network is chosen on that masked Dice). L3 and L4 run on every
patch, so the unannotated voxels of the labelled patches get them like unlabelled voxels; L2 and
L5 reach those voxels through the unlabelled stream, which the sampler also feeds every partially
labelled case to.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import SupervisedLoss
from ..losses.dual_uncertainty_terms import (
    confident_disagreement_mask,
    cosine_output_consistency,
    entropy_filter,
    filtered_pseudo_label_ce,
    kl_rectified_pseudo_label_loss,
    mutual_correction_loss,
    prototype_alignment_loss,
    union_pseudo_label,
)
from ..networks.resnet_vnet import ResNetVNet
from ..training.schedules import sigmoid_rampup
from .base import Batch, Method, StepContext, StepOutput, flag_problems, number_problems, raise_option_problems


def logits_and_decoder_features(network: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits, last decoder feature map) of ``network`` in one forward pass.

    Uses ``network.forward_decoder_features`` when present; otherwise captures the input of the
    module ``network.head_dropout`` (the dropout in front of the 1x1x1 classifier).
    """
    if hasattr(network, "forward_decoder_features"):
        return network.forward_decoder_features(x)
    dropout = getattr(network, "head_dropout", None)
    if not isinstance(dropout, nn.Module):
        raise TypeError(
            f"{type(network).__name__} exposes neither forward_decoder_features nor a head_dropout module; "
            "the dual-network method needs its last decoder feature map"
        )
    captured: List[torch.Tensor] = []
    handle = dropout.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    try:
        logits = network(x)
    finally:
        handle.remove()
    return logits, captured[-1]


def to_grid(label_map: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Nearest-neighbour resampling of a (B, *S) label map or mask to spatial ``size``."""
    if tuple(label_map.shape[1:]) == tuple(size):
        return label_map
    resampled = F.interpolate(label_map[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
    return resampled.to(label_map.dtype)


class DualUncertainty(Method):
    """Two networks (ResNet-34/V-Net decoder + the run's network) teaching each other.

    Options (released values unless said otherwise):
        mutual_correction_weight: alpha of L1; 0.5.
        confidence_threshold: tau of the mutual-correction mask; 0.6.
        entropy_percentile: per-network entropy percentile of the L2 filter; 20.
        cps_weight: weight w_u of L2 (released: 1 on each network); 1.0.
        cps_scale_by_kept_fraction: multiply L2 by N / |K| as released; false (ours).
        kl_weight: weight of L3; 1.0.  cosine_weight: weight of L4; 1.0.
        prototype_weight: maximum lambda_c of L5; 0.1.
        prototype_ramp: fraction of the run over which lambda_c ramps up (sigmoid); 1.0, which is
            the released 40 x 150 iterations of its 6000.
        prototype_sample_fraction: uncertain voxels drawn per class, as a fraction of the
            uncertain foreground count; 0.01.
        prototype_margin: hinge margin pushing unit class prototypes apart; 1.0 (ours: the
            released term attracts them; distance 1 is cosine similarity 0.5).
        resnet_base_width: stem width of network A (stages 2b..16b); 16.
        resnet_blocks: basic blocks per stage of A; [3, 4, 6, 3] (ResNet-34).
        resnet_dropout: dropout before A's classifier; 0.5.
        as_released: leave L2 and L5 out of the loss (they have no gradient as released); false.

    Logged parts: sup_a, sup_b (CE + Dice + alpha L_mc), dice_a, dice_b, mc_a, mc_b, cps (L_u^A +
    L_u^B), kl, cos, proto (L5), kept_fraction, weaker (0 = A, 1 = B).
    """

    name = "dual_uncertainty"
    description = (
        "Dual-network uncertainty-guided pseudo-labelling (arXiv 2509.13084): ResNet-34 net + the run's "
        "network teach each other."
    )
    defaults = {
        "mutual_correction_weight": 0.5,
        "confidence_threshold": 0.6,
        "entropy_percentile": 20.0,
        "cps_weight": 1.0,
        "cps_scale_by_kept_fraction": False,
        "kl_weight": 1.0,
        "cosine_weight": 1.0,
        "prototype_weight": 0.1,
        "prototype_ramp": 1.0,
        "prototype_sample_fraction": 0.01,
        "prototype_margin": 1.0,
        "resnet_base_width": 16,
        "resnet_blocks": [3, 4, 6, 3],
        "resnet_dropout": 0.5,
        "as_released": False,
    }

    def __init__(self, build_network, num_classes, options):
        super().__init__(build_network, num_classes, options)
        self._validate()
        o = self.options
        self.net_a = ResNetVNet(
            in_channels=1,
            num_classes=num_classes,
            base_width=o["resnet_base_width"],
            blocks=o["resnet_blocks"],
            dropout=o["resnet_dropout"],
            projection=False,
        )
        self.net_b = build_network()
        self.supervised = SupervisedLoss(num_classes)

    def _validate(self) -> None:
        o = self.options
        problems = number_problems(o, {
            "confidence_threshold": (0.0, 1.0, False),
            "entropy_percentile": (0.0, 100.0, False),
            "prototype_sample_fraction": (0.0, 1.0, False),
            "prototype_margin": (0.0, 2.0, False),
            "resnet_base_width": (1, None, True),
            "resnet_dropout": (0.0, 1.0, False),
        })
        problems += number_problems(o, {key: (0.0, None, False) for key in (
            "mutual_correction_weight", "cps_weight", "kl_weight", "cosine_weight", "prototype_weight",
            "prototype_ramp")})
        blocks = o["resnet_blocks"]
        if not (isinstance(blocks, (list, tuple)) and len(blocks) == 4
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in blocks)):
            problems.append(f"resnet_blocks must be 4 integers >= 1, got {blocks!r}")
        problems += flag_problems(o, ["cps_scale_by_kept_fraction", "as_released"])
        raise_option_problems(self.name, problems)

    def trainable_parameters(self) -> List[nn.Parameter]:
        return list(self.net_a.parameters()) + list(self.net_b.parameters())

    def inference_networks(self) -> List[nn.Module]:
        return [self.net_a, self.net_b]

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        o = self.options
        n_l = batch.x_l.shape[0]
        x = torch.cat([batch.x_l, batch.x_u])
        z_a, h_a = logits_and_decoder_features(self.net_a, x)
        z_b, h_b = logits_and_decoder_features(self.net_b, x)

        with torch.autocast(device_type=x.device.type, enabled=False):
            p_a, p_b = torch.softmax(z_a.float(), dim=1), torch.softmax(z_b.float(), dim=1)
            # L1: supervised + mutual correction on the labelled patches
            sup_a = self.supervised.parts(z_a[:n_l], batch.y_l)
            sup_b = self.supervised.parts(z_b[:n_l], batch.y_l)
            disagree = confident_disagreement_mask(p_a[:n_l], p_b[:n_l], o["confidence_threshold"])
            mc_a = mutual_correction_loss(p_a[:n_l], batch.y_l, disagree)
            mc_b = mutual_correction_loss(p_b[:n_l], batch.y_l, disagree)
            alpha = o["mutual_correction_weight"]
            l_sup_a, l_sup_b = sup_a["total"] + alpha * mc_a, sup_b["total"] + alpha * mc_b
            # L3, L4: agreement between the networks on every patch
            l_kl = kl_rectified_pseudo_label_loss(z_a, z_b)
            l_cos = cosine_output_consistency(p_a, p_b)
            # the weaker network (larger labelled Dice loss; B on ties, as released) gives L5 its features
            weaker_is_a = bool(sup_a["dice"] > sup_b["dice"])
            l_cps, l_proto, kept_fraction = self._unlabelled_terms(
                z_a[n_l:], z_b[n_l:], p_a[n_l:], p_b[n_l:], (h_a if weaker_is_a else h_b)[n_l:],
                (p_a if weaker_is_a else p_b)[n_l:],
            )
            lambda_c = o["prototype_weight"] * sigmoid_rampup(ctx.progress, o["prototype_ramp"])
            loss = l_sup_a + l_sup_b + o["kl_weight"] * l_kl + o["cosine_weight"] * l_cos
            if not o["as_released"]:
                loss = loss + o["cps_weight"] * l_cps + lambda_c * l_proto

        return StepOutput(loss, {
            "sup_a": l_sup_a.detach(),
            "sup_b": l_sup_b.detach(),
            "dice_a": sup_a["dice"].detach(),
            "dice_b": sup_b["dice"].detach(),
            "mc_a": mc_a.detach(),
            "mc_b": mc_b.detach(),
            "cps": l_cps.detach(),
            "kl": l_kl.detach(),
            "cos": l_cos.detach(),
            "proto": l_proto.detach(),
            "kept_fraction": kept_fraction.detach(),
            "weaker": torch.tensor(0.0 if weaker_is_a else 1.0, device=x.device),
        })

    def _unlabelled_terms(self, z_a, z_b, p_a, p_b, features, weaker_probs):
        """L2 (summed over both networks), L5 and the kept fraction on the unlabelled patches."""
        o = self.options
        if z_a.shape[0] == 0:  # no unlabelled patches this step
            zero = z_a.float().sum() * 0.0 + z_b.float().sum() * 0.0
            return zero, zero, torch.zeros((), device=z_a.device)
        pseudo = union_pseudo_label(p_a, p_b)
        kept = entropy_filter(p_a, p_b, o["entropy_percentile"])
        scale = o["cps_scale_by_kept_fraction"]
        l_cps = filtered_pseudo_label_ce(z_a, pseudo, kept, scale) + filtered_pseudo_label_ce(z_b, pseudo, kept, scale)
        grid = features.shape[2:]
        l_proto = prototype_alignment_loss(
            features,
            to_grid(pseudo, grid),
            to_grid(kept, grid),
            to_grid(weaker_probs.detach().argmax(dim=1), grid),
            self.num_classes,
            sample_fraction=o["prototype_sample_fraction"],
            margin=o["prototype_margin"],
        )
        return l_cps, l_proto, kept.float().mean()
