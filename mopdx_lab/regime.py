"""The papers' regime, checked on a built lab: close same-origin teachers, a real gap, a student that can learn.

Why a check and not a hope: a lab result is evidence about a distillation
method only inside the regime the papers work in.  Outside it (teachers
nats away from the student, a student that never answers right) a
comparison measures the lab.  So the build measures, per domain,

* the initial per-token KL student -> teacher, estimated as on the first
  training step: ``mean_t log p_s(y_t) - log p_t(y_t)`` over the student's
  own samples (T = 1);
* the teacher's and the student's sampled accuracy (the run's avg@k);

and says loudly -- a warning in the build log, ``regime.json`` next to the
manifest, ``lab info`` -- when a figure falls outside the bounds.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mopdx.backends.base import Rollouts, Sampling, ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.data import Example
from mopdx.text import encode_prompt

log = logging.getLogger("mopdx")


@dataclass
class RegimeBounds:
    """The regime the lab promises (defaults: issue 15; the MOPD paper starts near 0.04 nats)."""

    kl_min: float = 0.02
    kl_max: float = 0.2
    min_gap: float = 0.15  # teacher minus student sampled accuracy, per domain
    min_student: float = 0.2  # student sampled accuracy, per domain


@dataclass
class DomainRegime:
    domain: str
    kl: float
    student: float
    teacher: float

    @property
    def gap(self) -> float:
        return self.teacher - self.student

    def problems(self, b: RegimeBounds) -> list[str]:
        """What is outside the bounds, one phrase each (empty: in the regime)."""
        out = []
        if not b.kl_min <= self.kl <= b.kl_max:
            out.append(f"initial per-token KL {self.kl:.3f} nats outside [{b.kl_min}, {b.kl_max}]")
        if self.gap < b.min_gap:
            out.append(f"teacher - student = {self.gap:+.3f} < {b.min_gap}")
        if self.student < b.min_student:
            out.append(f"student accuracy {self.student:.3f} < {b.min_student}")
        return out


@torch.no_grad()
def token_log_ratios(
    student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Example], max_new_tokens: int, seed: int = 0
) -> tuple[Rollouts, torch.Tensor]:
    """The student's own T = 1 samples of ``prompts`` and, per completion token, ``log p_s(y_t) - log p_t(y_t)``
    (``[B, C]``, zero past each completion): what ``initial_kl`` averages, kept per token so a
    caller can split it by rollout (``benchmarks/kl_spread.py``)."""
    rollouts = HFRolloutBackend(student, tokenizer.pad_token_id, tokenizer.eos_token_id).generate(
        [encode_prompt(tokenizer, e) for e in prompts], [e.domain for e in prompts], Sampling(max_new_tokens=max_new_tokens, seed=seed)
    )
    request = ScoreRequest()
    # a scorer freezes its model; a measurement must not (the closed-loop build measures a teacher
    # between RFT rounds and trains it on: mopdx_lab/stage2.py)
    flags = [(p, p.requires_grad) for m in (student, teacher) for p in m.parameters()]
    try:
        ls = HFTeacherScorer(student).score(rollouts, request).logps
        lt = HFTeacherScorer(teacher).score(rollouts, request).logps
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return rollouts, (ls - lt) * rollouts.completion_mask


def initial_kl(
    student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Example], max_new_tokens: int, seed: int = 0
) -> float:
    """Per-token KL(student || teacher) on the student's own T = 1 samples of ``prompts``
    (the Monte-Carlo estimate a MOPD run logs as ``kl/<domain>`` at its first step)."""
    rollouts, diff = token_log_ratios(student, teacher, tokenizer, prompts, max_new_tokens, seed)
    return float(diff.sum() / rollouts.completion_mask.sum().clamp(min=1.0))


def report(regimes: list[DomainRegime], bounds: RegimeBounds) -> dict:
    """The regime as JSON, and a loud warning per domain outside it."""
    rows = {}
    for r in regimes:
        problems = r.problems(bounds)
        rows[r.domain] = {"kl": r.kl, "student": r.student, "teacher": r.teacher, "gap": r.gap, "problems": problems}
        if problems:
            log.warning("LAB OUTSIDE THE PAPERS' REGIME for %r: %s -- a comparison on this lab measures the lab, not the method", r.domain, "; ".join(problems))
    ok = not any(v["problems"] for v in rows.values())
    return {"in_regime": ok, "bounds": asdict(bounds), "domains": rows}
