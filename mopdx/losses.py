"""Distillation losses: pure functions of log-probabilities, and the one table of loss kinds.

Why one table: what a loss kind means -- what it needs from the teacher
(the log-prob of each sampled token, the teacher's top-k, or its whole
distribution), which function computes it and with which options -- is read
by config validation (``LOSS_KINDS``), by training (``DistillModule``) and by
the gradient-coherence analysis.  ``LOSSES`` is that single place; nothing
else branches on kind names, so an analysis cannot describe a different loss
from the one trained.

Conventions: ``[B, C]`` tensors are per completion token, ``mask`` is 1 on
real completion tokens; teacher inputs are treated as constants.  Per-token
losses become one number through ``reduce_tokens`` (``loss.average``):
``"sequence"`` averages each sequence over its own tokens (``1/|y|``) and then
over the batch, as in DESIGN.md; ``"token"`` averages over all completion
tokens of the batch (TRL, verl).  Given the whole batch's denominator, a slice
of the batch reduces to its exact contribution to the batch loss -- what the
coherence analysis differentiates per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch

from mopdx.advantages import combined_advantage, grpo_advantages, keep_sign
from mopdx.backends.base import Rollouts, ScoreRequest, TeacherOutput
from mopdx.divergences import forward_kl_tokens, full_reverse_kl_tokens, jsd_tokens, topk_reverse_kl_tokens
from mopdx.loss_config import AVERAGES, LossConfig

Needs = Literal["sampled", "topk", "full"]


# ------------------------------------------------------------------ reduction
def reduce_tokens(values: torch.Tensor, mask: torch.Tensor, average: str = "sequence", denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """Per-token values ``[B, C]`` -> the batch loss ``[]``; the one reduction every loss uses.

    ``"sequence"``: each sequence's mean over its own tokens, summed over
    sequences and divided by ``denominator`` (default: ``B``, the mean over
    sequences).  ``"token"``: the sum over all masked tokens divided by
    ``denominator`` (default: their number).  Pass the whole batch's
    ``batch_denominator`` with a slice of its rows to get that slice's
    contribution: the contributions of disjoint slices add up to the batch loss.
    """
    mask = mask.to(values.dtype)
    if average == "sequence":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean() if denominator is None else per_seq.sum() / denominator
    if average == "token":
        total = (values * mask).sum()
        return total / (mask.sum().clamp(min=1.0) if denominator is None else denominator)
    raise ValueError(f"unknown loss average {average!r}; use one of {', '.join(AVERAGES)}")


def batch_denominator(mask: torch.Tensor, average: str) -> torch.Tensor:
    """What ``reduce_tokens`` divides the batch by: its number of sequences or of completion tokens."""
    if average == "sequence":
        return torch.tensor(float(mask.shape[0]), device=mask.device)
    if average == "token":
        return mask.float().sum().clamp(min=1.0)
    raise ValueError(f"unknown loss average {average!r}; use one of {', '.join(AVERAGES)}")


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over all masked tokens (a diagnostic, not a loss)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# ---------------------------------------------------------- policy gradient
@dataclass
class PGStats:
    """Diagnostics of the policy-gradient form (detached)."""

    is_weight_mean: torch.Tensor  # mean truncated importance weight over tokens (1 when on-policy)


def pg_coefficients(
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    mask: torch.Tensor,
    adv_clip: float = 5.0,
    rollout_logps: torch.Tensor | None = None,
    is_clip: float | None = None,
    baseline: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantage, weight)``, ``[B, C]`` and detached: the PG loss's per-token coefficients.

    ``advantage = clip(lt - ls, +-adv_clip)`` minus, with ``baseline="mean"``,
    its mean over the batch's tokens; ``weight = min(pi_s / pi_rollout, is_clip)``
    when ``is_clip`` and ``rollout_logps`` are given, else 1.  The baseline is a
    batch quantity: compute these on the whole batch, then slice.
    """
    mask = mask.to(student_logps.dtype)
    adv = (teacher_logps - student_logps).detach().clamp(-adv_clip, adv_clip)
    if baseline == "mean":
        adv = adv - (adv * mask).sum() / mask.sum().clamp(min=1.0)
    elif baseline != "none":
        raise ValueError(f"unknown baseline {baseline!r}; use 'none' or 'mean'")
    weight = torch.ones_like(adv)
    if is_clip is not None and rollout_logps is not None:
        weight = torch.exp(student_logps.detach() - rollout_logps).clamp(max=is_clip)
    return adv, weight


def pg_loss(
    student_logps: torch.Tensor,
    advantage: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    average: str = "sequence",
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``reduce(-(weight * advantage) * ls)`` with the coefficients of ``pg_coefficients`` as constants."""
    return reduce_tokens(-(weight * advantage) * student_logps, mask, average, denominator)


def pg_reverse_kl(
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    mask: torch.Tensor,
    adv_clip: float = 5.0,
    rollout_logps: torch.Tensor | None = None,
    is_clip: float | None = None,
    baseline: str = "none",
    average: str = "sequence",
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
    adv, weight = pg_coefficients(student_logps, teacher_logps, mask, adv_clip, rollout_logps, is_clip, baseline)
    loss = pg_loss(student_logps, adv, weight, mask, average)
    return loss, PGStats(is_weight_mean=token_mean(weight, mask))


def advantage_stats(advantage: torch.Tensor, mask: torch.Tensor, adv_clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-level ``(mean, std, fraction beyond +-adv_clip)`` of ``A = lt - ls`` over masked tokens."""
    mask = mask.to(advantage.dtype)
    n = mask.sum().clamp(min=1.0)
    mean = (advantage * mask).sum() / n
    std = (((advantage - mean) ** 2 * mask).sum() / n).sqrt()
    clip_fraction = ((advantage.abs() > adv_clip).to(mask.dtype) * mask).sum() / n
    return mean, std, clip_fraction


# --------------------------------------------------------- distribution losses
def topk_reverse_kl(
    student_topk_logps: torch.Tensor,
    teacher_topk_logps: torch.Tensor,
    mask: torch.Tensor,
    tail: bool = False,
    average: str = "sequence",
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Top-k reverse KL (``divergences.topk_reverse_kl_tokens``) on ``[B, C, k]`` inputs, reduced."""
    return reduce_tokens(topk_reverse_kl_tokens(student_topk_logps, teacher_topk_logps, tail), mask, average, denominator)


def full_reverse_kl(
    student_logps: torch.Tensor, teacher_logps: torch.Tensor, mask: torch.Tensor, average: str = "sequence", denominator: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Exact per-token ``KL(student || teacher)`` over the vocabulary (``[B, C, V]`` inputs), reduced."""
    return reduce_tokens(full_reverse_kl_tokens(student_logps, teacher_logps), mask, average, denominator)


def forward_kl(
    student_logps: torch.Tensor, teacher_logps: torch.Tensor, mask: torch.Tensor, average: str = "sequence", denominator: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Per-token ``KL(teacher || student)`` (mode-covering), ``[B, C, V]`` inputs, reduced."""
    return reduce_tokens(forward_kl_tokens(student_logps, teacher_logps), mask, average, denominator)


def generalized_jsd(
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.5,
    average: str = "sequence",
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Generalised JSD (``jsd_tokens``) with ``[B, C, V]`` inputs, reduced."""
    return reduce_tokens(jsd_tokens(student_logps, teacher_logps, beta), mask, average, denominator)


# ------------------------------------------------------------ the loss table
_DEFAULTS = LossConfig()  # the one place the options' defaults are written (mopdx.loss_config)


@dataclass(frozen=True)
class LossSpec:
    """The configured loss: its kind and the ``cfg.loss`` options its maths reads.  Which options,
    not their defaults: each default is ``LossConfig``'s, and ``from_cfg`` copies the fields by name."""

    kind: str = _DEFAULTS.kind
    adv_clip: float = _DEFAULTS.adv_clip
    adv_baseline: str = _DEFAULTS.adv_baseline
    is_clip: float | None = _DEFAULTS.is_clip
    topk: int = _DEFAULTS.topk
    topk_tail: bool = _DEFAULTS.topk_tail
    jsd_beta: float = _DEFAULTS.jsd_beta
    average: str = _DEFAULTS.average
    teacher_weight: float = _DEFAULTS.teacher_weight  # PG form: weight of the teacher's per-token advantage
    reward_weight: float = _DEFAULTS.reward_weight  # PG form: weight of the GRPO verifier-reward advantage
    reward_std: bool = _DEFAULTS.reward_std  # GRPO: divide by the group's reward std (False: Dr. GRPO)
    reward_sign: str = _DEFAULTS.reward_sign  # GRPO: keep both signs, or only the negative / positive part

    def __post_init__(self) -> None:
        if self.kind not in LOSSES:
            raise ValueError(f"unknown loss kind {self.kind!r}; use one of {', '.join(LOSSES)}")
        if self.average not in AVERAGES:
            raise ValueError(f"unknown loss average {self.average!r}; use one of {', '.join(AVERAGES)}")

    @classmethod
    def from_cfg(cls, loss: Any) -> LossSpec:
        """From a run's ``cfg.loss`` node: every field of the spec, by name, as plain Python values."""
        return cls(**{f.name: loss[f.name] for f in fields(cls)})

    @property
    def uses_teacher(self) -> bool:
        """Whether the loss reads the teachers at all: not for pure RL (PG form, ``teacher_weight=0``)."""
        return self.kind != "pg" or self.teacher_weight != 0

    @property
    def uses_rewards(self) -> bool:
        """Whether the loss needs verifier rewards (and so groups of ``rollout.n`` samples)."""
        return self.kind == "pg" and self.reward_weight != 0

    @property
    def entry(self) -> LossKind:
        """This kind's row of ``LOSSES``."""
        return LOSSES[self.kind]

    def request(self) -> ScoreRequest:
        """What to ask the teachers for: the table entry's needs, with ``topk`` ids when it needs the top-k."""
        needs = self.entry.needs
        return ScoreRequest(topk=self.topk if needs == "topk" else 0, full=needs == "full")


@dataclass
class LossBatch:
    """Everything a loss reads besides the student's log-probs, aligned on completion tokens (all constants)."""

    completion_ids: torch.Tensor  # [B, C]
    mask: torch.Tensor  # [B, C]
    teacher_logps: torch.Tensor  # [B, C] teacher log-prob of each sampled token
    rollout_logps: torch.Tensor | None = None  # [B, C] sampling policy's log-probs (truncated importance ratio)
    topk_ids: torch.Tensor | None = None  # [B, C, k]
    topk_logps: torch.Tensor | None = None  # [B, C, k]
    full_logps: torch.Tensor | None = None  # [B, C, V]
    rewards: torch.Tensor | None = None  # [B] verifier reward of each rollout (RL advantage)
    groups: torch.Tensor | None = None  # [B] prompt index of each rollout: its GRPO group

    @classmethod
    def of(cls, rollouts: Rollouts, teacher: TeacherOutput, rewards: torch.Tensor | None = None) -> LossBatch:
        """A training batch: rollouts, their teacher prefill and (for RL) their rewards."""
        return cls(
            rollouts.completion_ids, rollouts.completion_mask, teacher.logps, rollouts.rollout_logps, teacher.topk_ids, teacher.topk_logps, teacher.full_logps,
            rewards, rollouts.prompt_index if rewards is not None else None,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields that are set, by name (``LossBatch(**tensors)`` rebuilds it; ``vmap`` maps over it)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def sampled(self, student_logps: torch.Tensor) -> torch.Tensor:
        """``[B, C, V] -> [B, C]``: the student's log-prob of each sampled token."""
        return student_logps.gather(-1, self.completion_ids.unsqueeze(-1)).squeeze(-1)

    def need(self, name: str, kind: str) -> torch.Tensor:
        """The teacher field ``name``, or a clear error when the prefill did not ask for it."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"loss {kind!r} needs the teacher's {name}; score with LossSpec.request() (LOSSES[{kind!r}].needs={LOSSES[kind].needs!r})")
        return value


@dataclass
class BatchConstants:
    """Batch-level quantities a loss treats as constants, computed once on the whole batch.

    ``per_token`` holds detached ``[B, C]`` tensors (the PG advantage after its
    baseline, the truncated importance weights); ``denominator`` is the
    reduction's (``batch_denominator``), ``None`` for "this batch's own".  Sliced
    to one sample's rows, they make that sample's loss its exact contribution
    to the batch loss.
    """

    per_token: dict[str, torch.Tensor] = field(default_factory=dict)
    denominator: torch.Tensor | None = None


LossFn = Callable[[torch.Tensor, LossBatch, LossSpec, BatchConstants], tuple[torch.Tensor, dict[str, torch.Tensor]]]
ConstantsFn = Callable[[torch.Tensor, LossBatch, LossSpec], dict[str, torch.Tensor]]
PerTokenFn = Callable[[torch.Tensor, torch.Tensor, LossSpec], torch.Tensor]


@dataclass(frozen=True)
class LossKind:
    """One loss kind: what it needs from the teacher and the function computing it.

    ``needs``: ``"sampled"`` (the teacher's log-prob of each sampled token),
    ``"topk"`` (its top-k ids and log-probs) or ``"full"`` (its whole
    distribution).  ``fn(student_logps [B, C, V], batch, spec, constants)``
    returns the loss and detached diagnostics; ``constants(sampled student
    log-probs [B, C], batch, spec)`` computes the kind's batch-level per-token
    constants (``None``: it has none).  ``"full"`` kinds also give
    ``per_token(student [.., V], teacher [.., V], spec) -> [..]``, so their
    loss can be computed chunk by chunk over positions (``mopdx.student_loss``).
    """

    needs: Needs
    fn: LossFn
    constants: ConstantsFn | None = None
    per_token: PerTokenFn | None = None


def _pg_constants(sampled: torch.Tensor, b: LossBatch, s: LossSpec) -> dict[str, torch.Tensor]:
    teacher_adv, weight = pg_coefficients(sampled, b.teacher_logps, b.mask, s.adv_clip, b.rollout_logps, s.is_clip, s.adv_baseline)
    reward_adv = None
    if s.uses_rewards:
        if b.rewards is None or b.groups is None:
            raise ValueError("loss.reward_weight > 0 needs the rollouts' verifier rewards and groups (LossBatch.rewards / groups)")
        reward_adv = keep_sign(grpo_advantages(b.rewards, b.groups, s.reward_std), s.reward_sign)
    adv = combined_advantage(teacher_adv if s.uses_teacher else None, reward_adv, b.mask, s.teacher_weight, s.reward_weight)
    return {"advantage": adv, "weight": weight}


def _pg(student: torch.Tensor, b: LossBatch, s: LossSpec, c: BatchConstants) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    weight = c.per_token["weight"]
    loss = pg_loss(b.sampled(student), c.per_token["advantage"], weight, b.mask, s.average, c.denominator)
    return loss, {"is_weight": token_mean(weight, b.mask)}


def _topk(student: torch.Tensor, b: LossBatch, s: LossSpec, c: BatchConstants) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids, teacher = b.need("topk_ids", s.kind), b.need("topk_logps", s.kind)
    return topk_reverse_kl(student.gather(-1, ids), teacher, b.mask, s.topk_tail, s.average, c.denominator), {}


def _full(student: torch.Tensor, b: LossBatch, s: LossSpec, c: BatchConstants) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    per_token = s.entry.per_token(student, b.need("full_logps", s.kind), s)  # type: ignore[misc]
    return reduce_tokens(per_token, b.mask, s.average, c.denominator), {}


LOSSES: dict[str, LossKind] = {
    "pg": LossKind("sampled", _pg, _pg_constants),
    "topk": LossKind("topk", _topk),
    "full_reverse_kl": LossKind("full", _full, per_token=lambda st, t, s: full_reverse_kl_tokens(st, t)),
    "forward_kl": LossKind("full", _full, per_token=lambda st, t, s: forward_kl_tokens(st, t)),
    "jsd": LossKind("full", _full, per_token=lambda st, t, s: jsd_tokens(st, t, s.jsd_beta)),
}
LOSS_KINDS = tuple(LOSSES)


def batch_constants(spec: LossSpec, sampled: torch.Tensor | None, batch: LossBatch) -> BatchConstants:
    """The whole batch's constants, with an explicit denominator, ready to be sliced per sample.

    ``sampled`` (the student's log-prob of each sampled token, ``[B, C]``) is
    read only by kinds with batch constants (``LOSSES[kind].constants``).
    """
    make = spec.entry.constants
    per_token: dict[str, torch.Tensor] = {}
    if make is not None:
        if sampled is None:
            raise ValueError(f"loss {spec.kind!r} has batch constants: pass the student's sampled-token log-probs")
        per_token = {k: v.detach() for k, v in make(sampled.detach(), batch, spec).items()}
    return BatchConstants(per_token, batch_denominator(batch.mask, spec.average))


def compute_loss(
    spec: LossSpec, student_logps: torch.Tensor, batch: LossBatch, constants: BatchConstants | None = None, denominator: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The configured loss of ``student_logps`` (``[B, C, V]``, with grad) and its diagnostics.

    Without ``constants`` they come from this batch (training), with ``denominator``
    (default: this batch's own; a multi-process step passes the global one); the
    coherence analysis passes one sample's slice of the whole batch's to get that
    sample's contribution to the batch loss.
    """
    entry = spec.entry
    if constants is None:
        per_token = entry.constants(batch.sampled(student_logps).detach(), batch, spec) if entry.constants is not None else {}
        constants = BatchConstants(per_token, denominator)
    return entry.fn(student_logps, batch, spec, constants)
