"""FeCL: DyCON's focal, entropy-aware patch contrastive loss with teacher top-K hard negatives."""

from __future__ import annotations

import torch
from torch import nn

from .uncl import at_least_fp32

NEG_INF = float("-inf")


def _masked_logsumexp(terms: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Row-wise log(sum_j exp(terms_ij)) over entries where ``keep``; -inf for an empty row.

    terms, keep: (M, J) -> (M,). Subtracting each row's detached maximum makes the value exact
    (the shift cancels) and stable; the double ``torch.where`` keeps empty rows and masked
    entries (which may hold -inf or junk) from producing NaN gradients.
    """
    terms = torch.where(keep, terms, torch.full_like(terms, NEG_INF))
    if terms.shape[1] == 0:
        return terms.new_full((terms.shape[0],), NEG_INF)
    row_max = terms.amax(dim=1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    sums = torch.exp(terms - row_max).sum(dim=1)
    has_any = keep.any(dim=1)
    safe_log = torch.log(torch.where(has_any, sums, torch.ones_like(sums)))
    return torch.where(has_any, safe_log + row_max.squeeze(1), torch.full_like(sums, NEG_INF))


def _log_focal_negative(cosine: torch.Tensor, gamma: float) -> torch.Tensor:
    """log F-_iq = log(max(c_iq, 0)^gamma) = gamma * ln c_iq, and -inf where c_iq <= 0.

    The log is taken of a safe value (1 where c <= 0), so no NaN/inf gradient appears there.
    """
    if gamma == 0:  # max(c, 0)^0 = 1 for every negative
        return torch.zeros_like(cosine)
    positive = cosine > 0
    log_cosine = torch.log(torch.where(positive, cosine, torch.ones_like(cosine)))
    return torch.where(positive, gamma * log_cosine, torch.full_like(cosine, NEG_INF))


def _teacher_hard_negative_term(
    z: torch.Tensor, labels: torch.Tensor, z_teacher: torch.Tensor, teacher_labels: torch.Tensor, tau: float, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor, the terms log(1/K) + S^T_il of its K hardest teacher negatives.

    z (M, D), labels (M,) >= 0; z_teacher (T, D), teacher_labels (T,) >= 0.
    Returns (terms (M, k), keep (M, k)) with k = min(top_k, T); K_i = min(top_k, #teacher
    embeddings of another label) and keep marks the K_i selected entries of each row.
    """
    k = min(top_k, z_teacher.shape[0])
    if k == 0:
        empty = z.new_zeros((z.shape[0], 0))
        return empty, empty.bool()
    cross_logits = (z @ z_teacher.T) / tau  # (M, T); ordering by S^T equals ordering by cosine
    other_label = teacher_labels[None, :] != labels[:, None]
    candidates = torch.where(other_label, cross_logits, torch.full_like(cross_logits, NEG_INF))
    hardest, _ = candidates.topk(k, dim=1)  # (M, k), -inf beyond the available ones
    available = other_label.sum(dim=1).clamp(max=k)  # K_i
    keep = torch.arange(k, device=z.device)[None, :] < available[:, None]
    log_inverse_k = -torch.log(available.clamp(min=1).to(z.dtype))
    return hardest + log_inverse_k[:, None], keep


def _fecl_one_sample(
    z: torch.Tensor,
    labels: torch.Tensor,
    z_teacher: torch.Tensor,
    teacher_labels: torch.Tensor,
    entropy: torch.Tensor,
    tau: float,
    gamma: float,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of per-anchor losses of one sample and the number of anchors that have a positive.

    z (N, D), labels (N,), z_teacher (N_T, D), teacher_labels (N_T,), entropy (N,).
    """
    # Dropping excluded patches first bounds the (M, M) matrices by the capped anchor count.
    member = labels >= 0
    z, labels, entropy = z[member], labels[member], entropy[member]
    teacher_member = teacher_labels >= 0
    z_teacher, teacher_labels = z_teacher[teacher_member], teacher_labels[teacher_member]

    cosine = z @ z.T  # (M, M)
    logits = cosine / tau
    same_label = labels[:, None] == labels[None, :]
    not_self = ~torch.eye(labels.shape[0], dtype=torch.bool, device=z.device)
    positive = same_label & not_self
    negative = ~same_label
    num_positives = positive.sum(dim=1)
    has_positive = num_positives > 0

    # log of everything in D(i) except exp(S_ik): the weighted student negatives and the
    # teacher top-K term, one log-sum-exp per anchor row.
    student_negative_terms = _log_focal_negative(cosine, gamma) + logits
    teacher_terms, teacher_keep = _teacher_hard_negative_term(z, labels, z_teacher, teacher_labels, tau, top_k)
    log_rest = _masked_logsumexp(
        torch.cat([student_negative_terms, teacher_terms], dim=1),
        torch.cat([negative, teacher_keep], dim=1),
    )  # (M,)

    # -log(exp(S_ik) / D(i)) = log(exp(S_ik) + exp(log_rest_i)) - S_ik; logaddexp subtracts the
    # larger of its two arguments internally, so this is the exact, stable log-sum-exp.
    pair_nll = torch.logaddexp(logits, log_rest[:, None]) - logits
    focal_positive = (1.0 - cosine).clamp(min=0.0) ** gamma * torch.exp(entropy)[:, None]
    pair_loss = torch.where(positive, focal_positive * pair_nll, torch.zeros_like(pair_nll))
    anchor_loss = pair_loss.sum(dim=1) / num_positives.clamp(min=1)
    anchor_loss = torch.where(has_positive, anchor_loss, torch.zeros_like(anchor_loss))
    return anchor_loss.sum(), has_positive.sum()


def fecl(
    z: torch.Tensor,
    labels: torch.Tensor,
    z_teacher: torch.Tensor,
    teacher_labels: torch.Tensor,
    entropy: torch.Tensor,
    tau: float = 0.6,
    gamma: float = 2.0,
    top_k: int = 64,
) -> torch.Tensor:
    """Focal entropy-aware contrastive loss (DyCON's FeCL), pairs formed within each sample.

    For sample b and anchor i (label y_i >= 0): positives P(i) = {k != i : y_k = y_i},
    negatives N(i) = {q : y_q >= 0, y_q != y_i}; c_ij = z_i . z_j, S_ij = c_ij / tau::

        F+_ik = (1 - c_ik)^gamma * exp(Hbar_i)        Hbar_i = entropy[b, i]
        F-_iq = max(c_iq, 0)^gamma
        D_ik  = exp(S_ik) + sum_{q in N(i)} F-_iq exp(S_iq) + (1/K) sum_{l in HN_K(i)} exp(S^T_il)
        l_i   = (1 / |P(i)|) sum_{k in P(i)} F+_ik * (-log(exp(S_ik) / D_ik))
        L     = mean of l_i over the anchors (of all samples) that have at least one positive

    HN_K(i) are the K teacher embeddings of the same sample with teacher label >= 0 and != y_i
    most similar to z_i, S^T_il = z_i . z^T_l / tau, K = min(top_k, number available); the term
    is 0 when none is available. The paper's slide prints the top-K sum inside the sum over q;
    we read it as one added term of the denominator, as written above (docs/dycon.md, D2).

    The denominator is evaluated as an exact row-wise log-sum-exp over [S_ik, log F-_iq + S_iq,
    log(1/K) + S^T_il] with the self pair masked out; F- = 0 gives -inf there without NaN
    gradients. Focal and entropy weights are not detached; teacher embeddings are constants.
    Memory is O(N^2) per sample (cap the anchors with ``cap_anchors``).

    Args:
        z: (B, N, D) student patch embeddings, L2-normalised along D.
        labels: (B, N) integer patch labels, -1 for patches that take no part.
        z_teacher: (B, N_T, D) teacher patch embeddings, L2-normalised (detached here).
        teacher_labels: (B, N_T) integer labels of the teacher patches, -1 to exclude.
        entropy: (B, N) student entropy per patch normalised to [0, 1] (gradient kept).
        tau: temperature. gamma: focal exponent. top_k: teacher hard negatives per anchor.

    Returns:
        0-d tensor (fp32, or fp64 for fp64 inputs); exactly 0 (still connected to ``z``) when no anchor has a positive.
    """
    if z.dim() != 3 or z_teacher.dim() != 3:
        raise ValueError(f"z and z_teacher must be (B, N, D), got {tuple(z.shape)} and {tuple(z_teacher.shape)}")
    if labels.shape != z.shape[:2] or entropy.shape != z.shape[:2] or teacher_labels.shape != z_teacher.shape[:2]:
        raise ValueError("labels/entropy must be (B, N) like z, teacher_labels (B, N_T) like z_teacher")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z32, z_teacher32, entropy32 = at_least_fp32(z), at_least_fp32(z_teacher.detach()), at_least_fp32(entropy)
        total = z32.sum() * 0.0
        anchors = torch.zeros((), dtype=torch.long, device=z.device)
        for b in range(z.shape[0]):
            sample_sum, sample_anchors = _fecl_one_sample(
                z32[b], labels[b], z_teacher32[b], teacher_labels[b], entropy32[b], tau, gamma, top_k
            )
            total = total + sample_sum
            anchors += sample_anchors
        return total / anchors.clamp(min=1)


class FeCLLoss(nn.Module):
    """Module form of :func:`fecl` holding tau, gamma and top_k.

    ``forward(z (B, N, D), labels (B, N), z_teacher (B, N_T, D), teacher_labels (B, N_T),
    entropy (B, N)) -> 0-d tensor``::

        L = mean_i (1/|P(i)|) sum_{k in P(i)} F+_ik * -log(exp(S_ik) / D_ik)
        D_ik = exp(S_ik) + sum_{q in N(i)} F-_iq exp(S_iq) + (1/K) sum_{l in HN_K(i)} exp(S^T_il)

    with F+ = (1 - c)^gamma exp(Hbar_i), F- = max(c, 0)^gamma, S = c / tau (see :func:`fecl`).
    """

    def __init__(self, tau: float = 0.6, gamma: float = 2.0, top_k: int = 64):
        super().__init__()
        if tau <= 0 or gamma < 0 or top_k < 0:
            raise ValueError(f"need tau > 0, gamma >= 0, top_k >= 0; got {tau}, {gamma}, {top_k}")
        self.tau, self.gamma, self.top_k = tau, gamma, top_k

    def forward(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        z_teacher: torch.Tensor,
        teacher_labels: torch.Tensor,
        entropy: torch.Tensor,
    ) -> torch.Tensor:
        return fecl(z, labels, z_teacher, teacher_labels, entropy, self.tau, self.gamma, self.top_k)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, gamma={self.gamma}, top_k={self.top_k}"
