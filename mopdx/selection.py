"""Gap-based sample selection (CaMOPD), usable by any strategy.

After the teacher prefill and before the backward pass, each rollout gets a
score -- its mean token-level teacher-student log-prob gap -- and only the
top ``rho`` fraction of the batch enters the loss.  Rollouts whose gap is
largest are where the student most disagrees with its teacher, which is
where an update carries the most (and most coherent) signal.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mopdx.errors import ConfigError

if TYPE_CHECKING:  # strategies' config nodes read the names below at config load; torch loads when a step selects
    import torch

GAP_MODES = ("abs", "positive", "negative", "signed")
# How token gaps become one score per rollout. ``mean`` (the paper's 1/|y| sum) makes a short
# rollout's score the noisier one, so with token gaps of equal spread the shortest rollouts
# reach the extremes and get picked more often; ``sqrt`` (sum / sqrt|y|) gives every length
# the same noise under that null, ``sum`` ranks by the total (favours long rollouts).
LENGTH_NORMS = ("mean", "sqrt", "sum")
# Which rollouts a selecting strategy keeps: the top ``rho`` by gap, or the controls a reviewer
# asks for -- a random subset of the same size, or a random subset whose lengths match the
# gap-selected one (does selection only pick lengths?).
SELECTORS = ("gap", "random", "length_matched")


def sequence_gap(
    teacher_logps: torch.Tensor, student_logps: torch.Tensor, mask: torch.Tensor, mode: str = "abs", length_norm: str = "mean",
) -> torch.Tensor:
    """Per-rollout token gap ``d_t = lt_t - ls_t`` over completion tokens, reduced per ``length_norm``: ``[B, C] -> [B]``.

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
    total, n = (d * m).sum(-1), m.sum(-1).clamp(min=1.0)
    if length_norm == "mean":
        return total / n
    if length_norm == "sqrt":
        return total / n.sqrt()
    if length_norm == "sum":
        return total
    raise ConfigError(f"unknown gap length normalisation {length_norm!r}; use one of {', '.join(LENGTH_NORMS)}")


def length_correlation(scores: torch.Tensor, lengths: torch.Tensor) -> float:
    """Pearson correlation of per-rollout scores with lengths (0 when either is constant): logged
    so that a selection that mostly picks by length shows itself."""
    import torch

    x, y = scores.double(), lengths.double()
    if x.numel() < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


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
    import torch

    n = scores.numel()
    k = keep_count(n, rho)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def random_subset(n: int, rho: float, generator: torch.Generator) -> torch.Tensor:
    """``keep_count(n, rho)`` indices drawn uniformly without replacement, ascending (the random-selection control)."""
    import torch

    return torch.randperm(n, generator=generator)[: keep_count(n, rho)].sort().values


def length_matched_subset(lengths: torch.Tensor, reference: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """As many indices as ``reference`` holds, random except that their lengths match the reference's.

    Each reference index (longest first) takes a not-yet-taken rollout of the nearest length,
    ties broken at random: the length-matched control keeps what gap selection does to the
    length distribution and nothing else."""
    import torch

    order = torch.randperm(lengths.numel(), generator=generator).tolist()  # random tie-break
    free = dict.fromkeys(order)
    chosen = []
    for ref in sorted(reference.tolist(), key=lambda i: -int(lengths[i])):
        target = int(lengths[ref])
        best = min(free, key=lambda j: abs(int(lengths[j]) - target))  # first in random order among the nearest
        chosen.append(best)
        del free[best]
    return torch.tensor(sorted(chosen), dtype=torch.long)


def choose(selector: str, gaps: torch.Tensor, lengths: torch.Tensor, rho: float, generator: torch.Generator) -> torch.Tensor:
    """Indices a ``selector`` keeps (ascending): ``gap`` (top ``rho`` by score), ``random`` or ``length_matched``."""
    if selector == "gap":
        return select_top_fraction(gaps, rho)
    if selector == "random":
        return random_subset(gaps.numel(), rho, generator)
    if selector == "length_matched":
        return length_matched_subset(lengths, select_top_fraction(gaps, rho), generator)
    raise ConfigError(f"unknown selector {selector!r}; use one of {', '.join(SELECTORS)}")
