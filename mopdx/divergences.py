"""Per-token divergences between the student's and a teacher's distributions.

Why a module of their own: the same per-token maths serves the whole-batch
losses (``mopdx.losses``, ``[B, C, V]`` inputs) and the chunked path
(``mopdx.student_loss``, one chunk of positions at a time, ``[N, V]``), so it
is written once, for any leading shape, over the last (vocabulary) axis.
Teacher inputs are constants (detached here).
"""

from __future__ import annotations

import torch


def topk_reverse_kl_tokens(student_topk_logps: torch.Tensor, teacher_topk_logps: torch.Tensor, tail: bool = False) -> torch.Tensor:
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
    return per_token


def full_reverse_kl_tokens(student_logps: torch.Tensor, teacher_logps: torch.Tensor) -> torch.Tensor:
    """Per-token ``KL(student || teacher)`` over the last (vocabulary) axis."""
    p = student_logps.exp()
    return (p * (student_logps - teacher_logps.detach())).sum(-1)


def forward_kl_tokens(student_logps: torch.Tensor, teacher_logps: torch.Tensor) -> torch.Tensor:
    """Per-token ``KL(teacher || student)`` (mode-covering) over the last axis."""
    t = teacher_logps.detach()
    return (t.exp() * (t - student_logps)).sum(-1)


def jsd_tokens(student_logps: torch.Tensor, teacher_logps: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Per-token generalised JSD as in GKD: ``beta KL(t || m) + (1 - beta) KL(s || m)``, ``m = beta t + (1 - beta) s``.

    ``beta -> 0`` approaches forward KL's behaviour, ``beta -> 1`` reverse
    KL's (up to scale); ``beta`` must lie strictly inside ``(0, 1)``.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
    t = teacher_logps.detach()
    log_m = torch.logsumexp(torch.stack([t + torch.log(torch.tensor(beta)), student_logps + torch.log(torch.tensor(1 - beta))]), dim=0)
    kl_t = (t.exp() * (t - log_m)).sum(-1)
    kl_s = (student_logps.exp() * (student_logps - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s
