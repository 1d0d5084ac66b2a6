"""Loss terms of the dual-network uncertainty-guided pseudo-labelling method (arXiv 2509.13084).

Specification: docs/reference/companion-methods.md §1.4 (terms L1-L5), written for C >= 2 classes.
Notation: p^k = softmax(z^k) of network k in {A, B}, yhat^k = argmax_c p^k, y the label map,
class 0 is background. Shapes: probabilities/logits (B, C, *S), label maps and masks (B, *S),
features (B, D, *S). Every function computes in fp32; callers run it with autocast off.

Where the reference is binary-only, the C-class rule is chosen so that C = 2 gives exactly the
binary formula (each docstring says how).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .annotation import annotated_mask, fill_not_annotated

# Inside the log of the entropy used by the entropy filter (the released code's value).
FILTER_ENTROPY_EPS = 1e-10
# Added to the mask count of the mutual-correction mean (the released code's value).
MASK_EPS = 1e-16


def lower_percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile (0..100) of all elements, linear interpolation (``numpy.percentile``).

    Written with two ``kthvalue`` calls because ``torch.quantile`` refuses inputs of more than
    2^24 elements, fewer than four 128^3 patches.
    """
    flat = values.detach().reshape(-1).float()
    position = (flat.numel() - 1) * min(max(q, 0.0), 100.0) / 100.0
    below, above = math.floor(position), math.ceil(position)
    low = flat.kthvalue(below + 1).values
    if above == below:
        return low
    high = flat.kthvalue(above + 1).values
    return low + (high - low) * (position - below)


def filter_entropy(probs: torch.Tensor) -> torch.Tensor:
    """H = -sum_c p_c ln(p_c + 1e-10): (B, C, *S) -> (B, *S), natural log, not normalised."""
    probs = probs.float()
    return -(probs * torch.log(probs + FILTER_ENTROPY_EPS)).sum(dim=1)


def confident_disagreement_mask(probs_a: torch.Tensor, probs_b: torch.Tensor, tau: float) -> torch.Tensor:
    """L1's mutual-correction mask M: where the two networks' confident foreground calls differ.

    F^k_v = yhat^k_v if (yhat^k_v >= 1 and max_c p^k_v >= tau) else "none".
    M_v = 1 where F^A_v != F^B_v, i.e. exactly one network is confidently foreground, or both
    are with different classes. For C = 2 the second case cannot occur and M is the reference's
    XOR of "yhat^k = 1 and max p^k >= tau" (tau = 0.6).

    Returns a bool (B, *S) tensor, no gradient.
    """
    calls = []
    for probs in (probs_a, probs_b):
        confidence, prediction = probs.detach().float().max(dim=1)
        calls.append(torch.where((prediction >= 1) & (confidence >= tau), prediction, torch.full_like(prediction, -1)))
    return calls[0] != calls[1]


def mutual_correction_loss(probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_mc = sum_v M_v sum_{c>=1} (p_{c,v} - [y_v = c])^2 / (sum_v M_v + 1e-16),
    M_v = mask_v [y_v != -1]: a not-annotated voxel (partial labels) has no target to correct to.

    For C = 2 this is the reference's sum_v M_v (p_{1,v} - y_v)^2 / (sum_v M_v + 1e-16).
    probs (B, C, *S) with gradient, target (B, *S) int (-1 = not annotated), mask (B, *S) bool
    -> 0-d tensor (0 with a graph when no voxel is left).
    """
    probs = probs.float()
    one_hot = F.one_hot(fill_not_annotated(target), probs.shape[1]).movedim(-1, 1).float()
    squared_error = ((probs - one_hot)[:, 1:] ** 2).sum(dim=1)
    weights = (mask.bool() & annotated_mask(target)).float()
    return (weights * squared_error).sum() / (weights.sum() + MASK_EPS)


def union_pseudo_label(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """L2's shared hard pseudo-label: foreground if either network says foreground.

    Both predict background -> 0; exactly one predicts a foreground class -> that class; both
    predict foreground -> the class of the network with the larger max probability (A on ties).
    For C = 2 this is the reference's yhat^A OR yhat^B. (B, C, *S) x2 -> (B, *S) int64.
    """
    conf_a, pred_a = probs_a.detach().float().max(dim=1)
    conf_b, pred_b = probs_b.detach().float().max(dim=1)
    both_foreground = torch.where(conf_a >= conf_b, pred_a, pred_b)
    return torch.where(pred_a == 0, pred_b, torch.where(pred_b == 0, pred_a, both_foreground))


def entropy_filter(probs_a: torch.Tensor, probs_b: torch.Tensor, percentile: float = 20.0) -> torch.Tensor:
    """L2's kept voxels K: those where at least one network is among its most certain.

    t^k = percentile(H^k over all voxels given, ``percentile``); a voxel is ignored when
    H^A >= t^A and H^B >= t^B, kept otherwise (about 20-40 % of the voxels at percentile 20).
    (B, C, *S) x2 -> bool (B, *S), no gradient.
    """
    h_a, h_b = filter_entropy(probs_a.detach()), filter_entropy(probs_b.detach())
    ignored = (h_a >= lower_percentile(h_a, percentile)) & (h_b >= lower_percentile(h_b, percentile))
    return ~ignored


def filtered_pseudo_label_ce(
    logits: torch.Tensor, pseudo_label: torch.Tensor, kept: torch.Tensor, scale_by_kept_fraction: bool = False
) -> torch.Tensor:
    """L_u^k = mean_{v in K} CE(z^k_v, yhat_v)  [x N / |K| when ``scale_by_kept_fraction``].

    The released code multiplies the mean over K by N / |K| (N = all voxels); off by default
    (companion-methods.md §1.4 suggests a plain mean with an explicit weight).
    logits (B, C, *S), pseudo_label (B, *S), kept bool (B, *S) -> 0-d; 0 (with graph) if K is empty.
    """
    ce = F.cross_entropy(logits.float(), pseudo_label.long(), reduction="none")
    weights = kept.float()
    count = weights.sum()
    loss = (weights * ce).sum() / count.clamp_min(1.0)
    if scale_by_kept_fraction:
        loss = loss * (kept.numel() / count.clamp_min(1.0))
    return loss


def kl_rectified_pseudo_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """L3 (Zheng & Yang's uncertainty-rectified loss), teacher B detached, student A.

        ytilde_v = argmax_c p^B_{c,v};  D_v = sum_c p^B_c (ln p^B_c - ln p^A_c)   (KL(p^B || p^A))
        L_kl = mean_v [exp(-D_v) CE(z^A_v, ytilde_v)] + mean_v D_v

    The weight exp(-D) keeps its gradient (as in the reference); the + mean D term stops the
    student from lowering its weight by diverging. (B, C, *S) x2 -> 0-d.
    """
    log_p_student = F.log_softmax(student_logits.float(), dim=1)
    teacher = teacher_logits.detach().float()
    p_teacher, log_p_teacher = F.softmax(teacher, dim=1), F.log_softmax(teacher, dim=1)
    divergence = (p_teacher * (log_p_teacher - log_p_student)).sum(dim=1)
    ce = F.nll_loss(log_p_student, teacher.argmax(dim=1), reduction="none")
    return (torch.exp(-divergence) * ce).mean() + divergence.mean()


def cosine_output_consistency(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """L4 = mean_v [1 - cos(p^A_v, p^B_v)], cosine over the class vector; gradient to both."""
    return (1.0 - F.cosine_similarity(probs_a.float(), probs_b.float(), dim=1)).mean()


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance over the last axis, safe to differentiate at 0 (gradient 0 there)."""
    return ((a - b) ** 2).sum(dim=-1).clamp_min(1e-12).sqrt()


def prototype_alignment_loss(
    features: torch.Tensor,
    pseudo_label: torch.Tensor,
    kept: torch.Tensor,
    own_prediction: torch.Tensor,
    num_classes: int,
    sample_fraction: float = 0.01,
    margin: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """L5: pull uncertain voxel features towards reliable class prototypes, push classes apart.

    With hhat_v = h_v / ||h_v|| (over channels) and muhat_c = mu_c / ||mu_c||:
        mu_c  = mean of h_v over reliable voxels of class c  (v in K, yhat_v = c)
        U_c   = uncertain voxels the network itself calls c  (v not in K, yhat^s_v = c)
        n     = floor(sample_fraction * sum_{c>=1} |U_c|)  (binary: 1 % of |U_1|, as released);
                S_c = min(n, |U_c|) voxels drawn at random from U_c
        pull  = sum_c mean_{v in S_c} ||hhat_v - sg(muhat_c)||
        apart = mean_{c<c'} max(0, margin - ||muhat_c - muhat_c'||)
        L5    = pull + apart
    Prototypes are detached in ``pull`` (reliable voxels set the target, uncertain ones move)
    and keep their gradient in ``apart`` (which trains the reliable features). Classes without
    reliable voxels or without samples drop out of the sums; L5 is 0 (with a graph) if nothing is
    left. The released third term, + ||muhat_1 - muhat_0||, pulls the two classes together against
    the paper's stated aim (§1.8 point 5); the hinge is our repulsion.

    Args:
        features: (B, D, *S) voxel features of the weaker network (with gradient).
        pseudo_label: (B, *S) shared pseudo-label yhat; kept: (B, *S) bool K;
        own_prediction: (B, *S) argmax of the same network, yhat^s. All on the feature grid.
        num_classes: C.
        sample_fraction: fraction of the uncertain foreground count drawn per class.
        margin: hinge margin on the distance of unit prototypes (in [0, 2]).
        generator: random source for the draw (default: torch's global one).
    """
    dim = features.shape[1]
    raw = features.float().movedim(1, -1).reshape(-1, dim)
    voxels = F.normalize(raw, dim=1)
    pseudo_label, own_prediction, kept = pseudo_label.reshape(-1), own_prediction.reshape(-1), kept.reshape(-1)
    uncertain_sets = [torch.nonzero(~kept & (own_prediction == c)).squeeze(1) for c in range(num_classes)]
    n = int(sample_fraction * sum(len(s) for s in uncertain_sets[1:]))

    prototypes = {}
    for c in range(num_classes):
        reliable = kept & (pseudo_label == c)
        if reliable.any():
            prototypes[c] = F.normalize(raw[reliable].mean(dim=0), dim=0)

    pull = raw.sum() * 0.0  # a zero that keeps the graph, for steps where every set is empty
    for c, candidates in enumerate(uncertain_sets):
        if c not in prototypes or n == 0 or len(candidates) == 0:
            continue
        chosen = voxels[candidates[_random_order(len(candidates), candidates.device, generator)[:n]]]
        pull = pull + _distance(chosen, prototypes[c].detach()[None]).mean()

    pairs = [(a, b) for a in prototypes for b in prototypes if a < b]
    if not pairs:
        return pull
    distances = torch.stack([_distance(prototypes[a], prototypes[b]) for a, b in pairs])
    return pull + torch.relu(margin - distances).mean()


def _random_order(n: int, device: torch.device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A random permutation of range(n) on ``device`` (drawn on the CPU when a generator is given)."""
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator).to(device)
