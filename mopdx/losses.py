"""Distillation losses as pure functions of log-probabilities.

Conventions: ``[B, C]`` tensors are per completion token, ``mask`` is 1 on
real completion tokens; each loss is averaged per sequence over its own
tokens (``1/|y|``) and then over the batch, as in DESIGN.md.  Teacher inputs
are treated as constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's own tokens, then over sequences: ``[B, C] -> []``."""
    mask = mask.to(values.dtype)
    per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.mean()


def per_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, C] -> [B]``: each sequence's mean over its masked tokens."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


@dataclass
class PGStats:
    """Diagnostics of the policy-gradient form (all detached)."""

    advantage_mean: torch.Tensor
    advantage_std: torch.Tensor
    clip_fraction: torch.Tensor
    reverse_kl_estimate: torch.Tensor  # mean of (ls - lt) over tokens: unbiased per-token KL estimate
    is_weight_mean: torch.Tensor


def pg_reverse_kl(
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    mask: torch.Tensor,
    adv_clip: float = 5.0,
    rollout_logps: torch.Tensor | None = None,
    is_clip: float | None = None,
    baseline: str = "none",
) -> tuple[torch.Tensor, PGStats]:
    """Policy-gradient reverse KL: ``-(1/|y|) sum_t clip(sg(lt - ls)) * ls``.

    With samples from the student, its gradient equals the gradient of the
    per-token reverse KL in expectation.  When rollouts come from a stale
    engine (``rollout_logps``), tokens are weighted by the truncated ratio
    ``min(pi_s / pi_rollout, is_clip)``.  ``baseline="mean"`` subtracts the
    batch-mean clipped advantage: the expected gradient is unchanged (a
    constant baseline has zero mean under the sampling policy) but the
    "push every sampled token down" component that inflates entropy when most
    advantages are negative is removed.
    """
    mask = mask.to(student_logps.dtype)
    raw_adv = (teacher_logps - student_logps).detach()
    adv = raw_adv.clamp(-adv_clip, adv_clip)
    if baseline == "mean":
        adv = adv - (adv * mask).sum() / mask.sum().clamp(min=1.0)
    elif baseline != "none":
        raise ValueError(f"unknown baseline {baseline!r}; use 'none' or 'mean'")
    weight = torch.ones_like(adv)
    if is_clip is not None and rollout_logps is not None:
        weight = torch.exp(student_logps.detach() - rollout_logps).clamp(max=is_clip)
    loss = masked_sequence_mean(-(weight * adv) * student_logps, mask)
    mean, std, clip_fraction = advantage_stats(raw_adv, mask, adv_clip)
    stats = PGStats(
        advantage_mean=mean,
        advantage_std=std,
        clip_fraction=clip_fraction,
        reverse_kl_estimate=-mean,
        is_weight_mean=(weight * mask).sum() / mask.sum().clamp(min=1.0),
    )
    return loss, stats


def advantage_stats(advantage: torch.Tensor, mask: torch.Tensor, adv_clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-level ``(mean, std, fraction beyond +-adv_clip)`` of ``A = lt - ls`` over masked tokens."""
    mask = mask.to(advantage.dtype)
    n = mask.sum().clamp(min=1.0)
    mean = (advantage * mask).sum() / n
    std = (((advantage - mean) ** 2 * mask).sum() / n).sqrt()
    clip_fraction = ((advantage.abs() > adv_clip).to(mask.dtype) * mask).sum() / n
    return mean, std, clip_fraction


def topk_reverse_kl(
    student_topk_logps: torch.Tensor, teacher_topk_logps: torch.Tensor, mask: torch.Tensor, tail: bool = False
) -> torch.Tensor:
    """Generalised reverse KL on the teacher's top-k support, no renormalisation.

    ``sum_{v in K} p log(p/q) - p + q`` with ``p`` the student and ``q`` the
    teacher.  Each term is >= 0 and its gradient w.r.t. ``log p`` vanishes
    at ``p = q``; with ``K`` = whole vocabulary it equals the full reverse KL.
    Inputs are ``[B, C, k]`` log-probs gathered at the teacher's top-k ids.

    The sum ignores student mass outside ``K``, so a student can lower the
    loss by moving mass there (seen on the lab: k = 64 of 283 tokens collapsed
    at lr 2e-3).  ``tail=True`` adds the same term for the lumped remainder
    ``p_rest = 1 - sum_K p`` vs ``q_rest = 1 - sum_K q``, which closes that hole.
    """
    p = student_topk_logps.exp()
    q = teacher_topk_logps.detach().exp()
    per_token = (p * (student_topk_logps - teacher_topk_logps.detach()) - p + q).sum(-1)
    if tail:
        eps = 1e-6
        p_rest = (1.0 - p.sum(-1)).clamp(min=eps)
        q_rest = (1.0 - q.sum(-1)).clamp(min=eps)
        per_token = per_token + p_rest * (p_rest.log() - q_rest.log()) - p_rest + q_rest
    return masked_sequence_mean(per_token, mask)


def full_reverse_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Exact per-token ``KL(student || teacher)`` over the vocabulary (``[B, C, V]`` inputs)."""
    p = student_logps.exp()
    per_token = (p * (student_logps - teacher_logps.detach())).sum(-1)
    return masked_sequence_mean(per_token, mask)


def forward_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``KL(teacher || student)`` (mode-covering), ``[B, C, V]`` inputs."""
    q = teacher_logps.detach().exp()
    per_token = (q * (teacher_logps.detach() - student_logps)).sum(-1)
    return masked_sequence_mean(per_token, mask)


def generalized_jsd(student_logps: torch.Tensor, teacher_logps: torch.Tensor, mask: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised JSD as in GKD: ``beta KL(t || m) + (1 - beta) KL(s || m)``, ``m = beta t + (1 - beta) s``.

    ``beta -> 0`` approaches forward KL's behaviour, ``beta -> 1`` reverse
    KL's (up to scale); ``beta`` must lie strictly inside ``(0, 1)``.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
    t = teacher_logps.detach()
    log_m = torch.logsumexp(torch.stack([t + torch.log(torch.tensor(beta)), student_logps + torch.log(torch.tensor(1 - beta))]), dim=0)
    kl_t = (t.exp() * (t - log_m)).sum(-1)
    kl_s = (student_logps.exp() * (student_logps - log_m)).sum(-1)
    return masked_sequence_mean(beta * kl_t + (1 - beta) * kl_s, mask)


LOSS_KINDS = ("pg", "topk", "full_reverse_kl", "forward_kl", "jsd")
