"""Gap-based sample selection (CaMOPD), usable by any strategy.

After the teacher prefill and before the backward pass, each rollout gets a
score -- its mean token-level teacher-student log-prob gap -- and only the
top ``rho`` fraction of the batch enters the loss.  Rollouts whose gap is
largest are where the student most disagrees with its teacher, which is
where an update carries the most (and most coherent) signal.
"""

from __future__ import annotations

import math

import torch

from mopdx.errors import ConfigError

GAP_MODES = ("abs", "positive", "negative", "signed")


def sequence_gap(teacher_logps: torch.Tensor, student_logps: torch.Tensor, mask: torch.Tensor, mode: str = "abs") -> torch.Tensor:
    """Per-rollout mean token gap ``d_t = lt_t - ls_t`` over completion tokens: ``[B, C] -> [B]``.

    ``abs``: ``|d_t|`` (recovery branch); ``positive``: ``max(d_t, 0)`` (tokens
    the teacher likes more than the student: preservation branch);
    ``negative``: ``max(-d_t, 0)`` (the opposite sign convention); ``signed``: ``d_t``.
    """
    d = (teacher_logps - student_logps).detach()
    if mode == "abs":
        d = d.abs()
    elif mode == "positive":
        d = d.clamp(min=0)
    elif mode == "negative":
        d = (-d).clamp(min=0)
    elif mode != "signed":
        raise ConfigError(f"unknown gap mode {mode!r}; use one of {', '.join(GAP_MODES)}")
    m = mask.to(d.dtype)
    return (d * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def keep_count(n: int, rho: float) -> int:
    """How many of ``n`` samples a keep-ratio ``rho`` in (0, 1] keeps (at least one)."""
    if not 0.0 < rho <= 1.0:
        raise ConfigError(f"selection ratio rho must be in (0, 1], got {rho}")
    return max(1, min(n, math.ceil(rho * n - 1e-9)))


def select_top_fraction(scores: torch.Tensor, rho: float) -> torch.Tensor:
    """Indices of the ``ceil(rho * n)`` largest scores, in ascending index order.

    Ties are broken by position (earlier rollouts first), so selection is
    deterministic and independent of the sort implementation.
    """
    n = scores.numel()
    k = keep_count(n, rho)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)
