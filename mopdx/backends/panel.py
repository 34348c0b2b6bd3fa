"""Several teachers on one sample: a panel of a domain's teachers, combined into one scorer.

Why a scorer: routing, overlap and every loss kind see one ``TeacherOutput`` per
rollout, as with one teacher, so nothing downstream changes.  The rules
(``model.combine.<domain>.rule``):

* ``mixture`` -- the teachers' mixture distribution ``log sum_j w_j p_j``: on the sampled
  token for the PG advantage, over the vocabulary for the full kinds, and its top-k for
  ``topk`` (which then needs every teacher's full distribution: ``hf`` teachers).
* ``advantage`` -- the weighted sum of per-teacher advantages ``sum_j w_j (lt_j - ls)``,
  i.e. the sampled-token log-prob ``sum_j w_j lt_j`` (weights normalised to 1): a PG rule
  (its "distribution" is an unnormalised product of experts, so the other kinds refuse it).
* ``closest`` -- per token, the teacher whose sampled-token log-prob is closest to the
  student's (the sampler's log-prob of the token, ``Rollouts.rollout_logps``).
* ``confident`` -- per token, the teacher that gives the sampled token the highest log-prob.

Per-token choices keep the chosen teacher's top-k or full distribution at that token, so
they serve every loss kind their teachers can.  Ties go to the teacher listed first.
Weights are fixed (``weights``) or move linearly to ``weights_end`` over ``train.max_steps``.
With one teacher the panel returns that teacher's output unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from mopdx.backends.base import Rollouts, ScoreRequest, TeacherOutput, TeacherScorer
from mopdx.teacher_config import RULES


def normalised(weights: Sequence[float]) -> torch.Tensor:
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    return (w / w.sum()).float()


class TeacherPanel:
    """The teachers of one domain, scored on the same rollouts and combined by ``rule``."""

    def __init__(self, names: Sequence[str], teachers: Sequence[TeacherScorer], rule: str = "mixture",
                 weights: Sequence[float] = (), weights_end: Sequence[float] = (), max_steps: int = 1) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown combination rule {rule!r}; use one of {', '.join(RULES)}")
        self.names, self.teachers, self.rule = list(names), list(teachers), rule
        self.start = normalised(weights or [1.0] * len(self.teachers))
        self.end = normalised(weights_end) if weights_end else self.start
        self.max_steps = max(1, int(max_steps))
        self.step = 0
        self.sums: dict[str, list[float]] = {}
        self.tokens = 0.0

    def at_step(self, step: int) -> None:
        """The training step, for scheduled weights."""
        self.step = step

    @property
    def weights(self) -> torch.Tensor:
        f = min(1.0, self.step / self.max_steps)
        return (1 - f) * self.start + f * self.end

    def score(self, rollouts: Rollouts, request: ScoreRequest) -> TeacherOutput:
        if len(self.teachers) == 1:
            return self.teachers[0].score(rollouts, request)
        ask = ScoreRequest(topk=0, full=True) if self.rule == "mixture" and request.topk else request
        outs = self._score_all(rollouts, ask)
        lt = torch.stack([o.logps for o in outs])  # [J, B, C]
        w = self.weights.to(lt.device)
        mask = rollouts.completion_mask.to(lt.device)
        if self.rule == "mixture":
            logw = w.clamp_min(1e-30).log()[:, None, None]
            logps = torch.logsumexp(lt + logw, 0)
            share = (lt + logw - logps).exp()  # each teacher's posterior responsibility for the token
            out = TeacherOutput(logps=logps)
            if request.full or request.topk:
                full = torch.logsumexp(torch.stack([o.full_logps for o in outs]) + logw[..., None], 0)  # type: ignore[misc]
                if request.full:
                    out.full_logps = full
                if request.topk:
                    out.topk_logps, out.topk_ids = full.topk(min(request.topk, full.shape[-1]), dim=-1)
        elif self.rule == "advantage":
            out = TeacherOutput(logps=(w[:, None, None] * lt).sum(0))
            share = w[:, None, None].expand_as(lt)
        else:
            fit = -(lt - rollouts.rollout_logps.to(lt.device)).abs() if self.rule == "closest" else lt
            choice = fit.argmax(0)  # [B, C]; ties: the first teacher
            out = _chosen(outs, choice)
            share = torch.stack([(choice == j).float() for j in range(len(outs))])
        self._record(lt, rollouts.rollout_logps.to(lt.device), share, mask)
        return out

    def _score_all(self, rollouts: Rollouts, request: ScoreRequest) -> list[TeacherOutput]:
        """Every teacher's prefill of ``rollouts``: served teachers at the same time (each waits on its
        server), local ones one after the other (they share this machine's cores or card)."""
        served = [j for j, t in enumerate(self.teachers) if getattr(t, "served", False)]
        outs: dict[int, TeacherOutput] = {}
        if len(served) > 1:
            with ThreadPoolExecutor(max_workers=len(served), thread_name_prefix="panel") as pool:
                futures = {j: pool.submit(self.teachers[j].score, rollouts, request) for j in served}
                outs.update({j: f.result() for j, f in futures.items()})
        for j, t in enumerate(self.teachers):
            if j not in outs:
                outs[j] = t.score(rollouts, request)
        return [outs[j] for j in range(len(self.teachers))]

    def _record(self, lt: torch.Tensor, ls: torch.Tensor, share: torch.Tensor, mask: torch.Tensor) -> None:
        """Add this prefill's tokens to the step's sums (a step may prefill in chunks)."""
        for j, name in enumerate(self.names):
            sums = self.sums.setdefault(name, [0.0, 0.0])
            sums[0] += float(((ls - lt[j]) * mask).sum())
            sums[1] += float((share[j] * mask).sum())
        self.tokens += float(mask.sum())

    def metrics(self) -> dict[str, float]:
        """Per teacher, over the prefills since the last call: its sampled-token KL estimate from the
        student's sampler (``<name>/kl``) and the share of tokens it wins (``<name>/share``: the
        posterior responsibility for ``mixture``, the weight for ``advantage``, the choices otherwise)."""
        n = max(self.tokens, 1.0)
        out = {f"{name}/{k}": v / n for name, (kl, sh) in self.sums.items() for k, v in (("kl", kl), ("share", sh))}
        self.sums, self.tokens = {}, 0.0
        return out


def _chosen(outs: list[TeacherOutput], choice: torch.Tensor) -> TeacherOutput:
    """Each token's output from the teacher ``choice`` picks there."""

    def pick(attr: str) -> torch.Tensor | None:
        parts = [getattr(o, attr) for o in outs]
        if any(p is None for p in parts):
            return None
        stacked = torch.stack(parts)  # [J, B, C, ...]
        index = choice.to(stacked.device)[None].reshape(1, *choice.shape, *([1] * (stacked.dim() - 3)))
        return stacked.gather(0, index.expand(1, *stacked.shape[1:])).squeeze(0)

    return TeacherOutput(logps=pick("logps"), topk_ids=pick("topk_ids"), topk_logps=pick("topk_logps"), full_logps=pick("full_logps"))  # type: ignore[arg-type]
