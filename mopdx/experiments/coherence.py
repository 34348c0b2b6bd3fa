"""Gradient coherence of the distillation loss (CaMOPD's argument, measurable on any run).

For a set of rollouts with their teacher prefill, the per-sample gradients
``g_i`` of the run's distillation loss over a parameter subset (e.g. the last
N layers, to bound memory) give:

* ``Coh(A) = ||sum_i g_i|| / sum_i ||g_i||`` -- 1 when all gradients point the
  same way, ``1/sqrt(n)`` for ``n`` orthogonal gradients of equal norm;
* the coherence gain of a selected subset over the whole batch
  (``Coh(selected) / Coh(all)``);
* the cosine and dot product between the mean gradient of one group of
  rollouts (general recovery) and another (domain preservation): negative
  means the updates counteract;
* the distribution of pairwise cosines.

``g_i`` is the gradient of sample ``i``'s *contribution* to the batch loss
exactly as training computes it (``losses.LOSSES``: the configured kind,
options and ``loss.average``; batch-level constants such as the PG mean
baseline and the truncated importance weights computed on the whole batch
first), so ``sum_i g_i`` is the gradient of the training loss on the batch.
Per-sample gradients come from ``torch.func`` (``vmap`` over ``grad``) on
right-padded sequences -- causal attention then needs no mask, which keeps
the forward free of data-dependent control flow -- or from a loop of
single-sample backward passes (``method="loop"``, the reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad, vmap

from mopdx import losses
from mopdx.backends.base import Rollouts, TeacherOutput
from mopdx.losses import BatchConstants, LossBatch, LossSpec
from mopdx.text import right_pad


@dataclass
class SampleBatch:
    """Rollouts re-laid for per-sample work: ``[prompt | completion | pad]`` from position 0."""

    input_ids: torch.Tensor  # [B, L]
    positions: torch.Tensor  # [B, C] index of the logit that predicts each completion token
    completion_ids: torch.Tensor  # [B, C]
    mask: torch.Tensor  # [B, C]
    rollout_logps: torch.Tensor  # [B, C] log-probs under the sampling policy

    @classmethod
    def from_rollouts(cls, r: Rollouts, pad_id: int) -> SampleBatch:
        seqs, starts = r.unpadded()
        ids, _ = right_pad(seqs, pad_id)
        width = ids.shape[1]
        c = r.completion_ids.shape[1]
        pos = torch.stack([(torch.arange(c) + st - 1).clamp(max=width - 1) for st in starts])
        return cls(ids, pos, r.completion_ids.cpu(), r.completion_mask.cpu(), r.rollout_logps.cpu())

    def loss_batch(self, teacher: TeacherOutput) -> LossBatch:
        """What the loss reads besides the student, with the teacher's prefill (on CPU)."""

        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.cpu()

        return LossBatch(self.completion_ids, self.mask, teacher.logps.cpu(), self.rollout_logps, cpu(teacher.topk_ids), cpu(teacher.topk_logps), cpu(teacher.full_logps))


def select_params(model: torch.nn.Module, last_layers: int = 1, head: bool = True) -> list[str]:
    """Names of the parameters of the last ``last_layers`` decoder layers (and the LM head)."""
    names = [n for n, _ in model.named_parameters()]
    layer_ids = sorted({int(n.split(".layers.")[1].split(".")[0]) for n in names if ".layers." in n})
    keep = set(layer_ids[-last_layers:]) if last_layers > 0 else set()
    out = [n for n in names if ".layers." in n and int(n.split(".layers.")[1].split(".")[0]) in keep]
    if head:
        out += [n for n in names if n.startswith("lm_head")]
    return out


def sample_loss(logps: torch.Tensor, row: LossBatch, constants: BatchConstants, spec: LossSpec) -> torch.Tensor:
    """One sample's contribution to the batch loss: ``logps`` ``[C, V]``, ``row`` and
    ``constants`` that sample's rows (leading dim 1) with the whole batch's denominator."""
    return losses.compute_loss(spec, logps[None], row, constants)[0]


ESTIMATORS = ("sampled", "expected")


def expected_pg_sample_loss(logps: torch.Tensor, row: LossBatch, constants: BatchConstants, spec: LossSpec) -> torch.Tensor:
    """One sample's PG contribution with each position's sampled token replaced by the exact
    expectation over the next token (``estimator="expected"``): ``-sum_v sg(p_s(v) A(v)) log p_s(v)``
    with ``A(v) = teacher_weight * clip(log p_t(v) - log p_s(v), +-adv_clip)``, reduced as training
    reduces (``loss.average``, the batch's denominator).

    Why: on-policy, its gradient is the conditional expectation of the PG loss's gradient given
    the sampled prefix (a constant baseline has zero mean, the importance weight is 1), so it
    estimates the same expected update as the sampled loss without the next-token sampling
    noise -- which, on a sharp student, puts a group's whole mean gradient on the few rollouts
    that sampled a slip (``concentration``).  Needs the teacher's full log-probs."""
    if spec.kind != "pg" or spec.reward_weight != 0:
        raise ValueError(f"the expected estimator is the teacher PG loss's (kind pg, reward_weight 0); this run's loss is {spec.kind!r}"
                         + (f" with reward_weight {spec.reward_weight}" if spec.kind == "pg" else ""))
    lt = row.need("full_logps", "pg (expected estimator)")
    ls = logps[None]  # [C, V] -> one sample's row, as sample_loss passes it
    coef = ls.detach().exp() * spec.teacher_weight * (lt - ls.detach()).clamp(-spec.adv_clip, spec.adv_clip)
    return losses.reduce_tokens(-(coef * ls).sum(-1), row.mask, spec.average, constants.denominator)


def sampled_logps(model: torch.nn.Module, batch: SampleBatch, chunk: int = 16) -> torch.Tensor:
    """``[B, C]``: the student's log-prob of each sampled token (no grad), the input of batch constants."""
    out = []
    with torch.no_grad():
        for lo in range(0, batch.input_ids.shape[0], chunk):
            sl = slice(lo, lo + chunk)
            logits = model(input_ids=batch.input_ids[sl], use_cache=False).logits.float()
            rows = torch.arange(logits.shape[0])[:, None]
            logps = torch.log_softmax(logits[rows, batch.positions[sl]], dim=-1)
            out.append(logps.gather(-1, batch.completion_ids[sl].unsqueeze(-1)).squeeze(-1))
    return torch.cat(out)


def per_sample_grads(
    model: torch.nn.Module,
    batch: SampleBatch,
    teacher: TeacherOutput,
    spec: LossSpec,
    params: Sequence[str],
    method: str = "vmap",
    chunk: int = 16,
    token_weight: torch.Tensor | None = None,
    estimator: str = "sampled",
) -> torch.Tensor:
    """``[B, P]``: for each sample, the flattened gradient w.r.t. ``params`` of its contribution
    to the batch loss ``spec`` defines (the rows sum to the batch loss's gradient).

    ``token_weight`` (``[B, C]``, 0/1) keeps the gradient that flows through the marked
    completion positions only: the loss's value is unchanged (constants, denominators and
    per-sequence means still see every token) and every position's term reads only its own
    log-probs, so the gradients of a split and of its complement add up to the whole one.
    Why: one shared component (tokens on which both teachers agree) can hide a conflict on
    a few tokens in a whole-gradient cosine; a split shows where each group's pull sits.

    ``estimator="expected"`` takes the PG loss's exact expectation over each position's next
    token instead of its sampled token (``expected_pg_sample_loss``; the teacher output must
    carry ``full_logps``)."""
    if method not in ("vmap", "loop"):
        raise ValueError(f"method must be 'vmap' or 'loop', got {method!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    one_loss = sample_loss if estimator == "sampled" else expected_pg_sample_loss
    named = dict(model.named_parameters())
    trainable = {n: named[n].detach() for n in params}
    frozen = {n: p.detach() for n, p in named.items() if n not in trainable}
    was_training = model.training
    model.eval()
    try:
        full = batch.loss_batch(teacher)
        const = losses.batch_constants(spec, sampled_logps(model, batch, chunk) if spec.entry.constants is not None else None, full)
        rows, per_token, denominator = full.tensors(), const.per_token, const.denominator
        weight = torch.ones_like(batch.mask, dtype=torch.float32) if token_weight is None else token_weight.float().cpu()
        if weight.shape != batch.mask.shape:
            raise ValueError(f"token_weight has shape {tuple(weight.shape)}; the completions are {tuple(batch.mask.shape)}")

        def loss_one(p: dict[str, torch.Tensor], ids: torch.Tensor, pos: torch.Tensor, row: dict[str, torch.Tensor], crow: dict[str, torch.Tensor],
                     w: torch.Tensor) -> torch.Tensor:
            logits = functional_call(model, {**frozen, **p}, args=(), kwargs={"input_ids": ids[None], "use_cache": False}).logits[0]
            logps = torch.log_softmax(logits.float()[pos], dim=-1)
            logps = w[:, None] * logps + (1.0 - w[:, None]) * logps.detach()  # same value; gradient through marked positions only
            one = LossBatch(**{k: v[None] for k, v in row.items()})
            return one_loss(logps, one, BatchConstants({k: v[None] for k, v in crow.items()}, denominator), spec)

        out = []
        if method == "vmap":
            g = vmap(grad(loss_one), in_dims=(None, 0, 0, 0, 0, 0))
            for lo in range(0, batch.input_ids.shape[0], chunk):
                sl = slice(lo, lo + chunk)
                grads = g(trainable, batch.input_ids[sl], batch.positions[sl], {k: v[sl] for k, v in rows.items()}, {k: v[sl] for k, v in per_token.items()}, weight[sl])
                out.append(torch.cat([grads[n].flatten(1) for n in params], dim=1))
        else:
            for i in range(batch.input_ids.shape[0]):
                p = {n: t.clone().requires_grad_(True) for n, t in trainable.items()}
                loss = loss_one(p, batch.input_ids[i], batch.positions[i], {k: v[i] for k, v in rows.items()}, {k: v[i] for k, v in per_token.items()}, weight[i])
                gs = torch.autograd.grad(loss, [p[n] for n in params])
                out.append(torch.cat([x.flatten() for x in gs])[None])
    finally:
        model.train(was_training)
    return torch.cat(out)


def coherence(g: torch.Tensor) -> float:
    """``||sum g_i|| / sum ||g_i||`` over the rows of ``g``."""
    norms = g.norm(dim=1).sum()
    return float(g.sum(0).norm() / norms) if norms > 0 else float("nan")


def coherence_gain(g: torch.Tensor, selected: Sequence[int] | torch.Tensor) -> float:
    """How much more coherent the selected rows are than all of them (ratio > 1: more)."""
    idx = torch.as_tensor(selected, dtype=torch.long)
    return coherence(g[idx]) / coherence(g)


def group_alignment(g: torch.Tensor, a: Sequence[int], b: Sequence[int], seed: int = 0) -> dict[str, float]:
    """Cosine and dot product between the mean gradients of rows ``a`` and rows ``b``, and each
    group's split-half cosine (``half_a`` / ``half_b``).

    Why the split halves: a mean gradient over a few hundred sampled rollouts can be mostly
    sampling noise (on the CaMOPD scenario, where a few percent of recovery rollouts need
    correcting, it was), and the cosine between two noise vectors is ~0 whatever the true
    directions.  A split-half cosine near 1 says a group's mean is stable; near 0, that a
    cosine involving it cannot be read."""
    ga, gb = g[torch.as_tensor(a)].mean(0), g[torch.as_tensor(b)].mean(0)
    return {"cos": float(torch.nn.functional.cosine_similarity(ga, gb, dim=0)), "dot": float(ga @ gb),
            "half_a": split_half_cos(g, a, seed), "half_b": split_half_cos(g, b, seed)}


def split_half_cos(g: torch.Tensor, rows: Sequence[int], seed: int = 0) -> float:
    """Cosine between the mean gradients of two random halves of ``rows`` (NaN below 2 rows)."""
    if len(rows) < 2:
        return float("nan")
    perm = torch.as_tensor(rows)[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]
    half = len(rows) // 2
    return float(torch.nn.functional.cosine_similarity(g[perm[:half]].mean(0), g[perm[half : 2 * half]].mean(0), dim=0))


def concentration(g: torch.Tensor, top: Sequence[int] = (1, 5)) -> dict[str, float]:
    """How many rows carry the summed gradient: the effective number ``(sum ||g_i||)^2 / sum ||g_i||^2``
    (``n`` for equal norms, 1 when one row holds it all) and the share of ``sum ||g_i||`` held by the
    largest ``top`` rows.

    Why: a sharp student's policy-gradient rows are ~0 wherever it samples what the teacher
    would (``grad log p`` vanishes as ``p -> 1`` and so does the advantage); a rare sampled slip
    carries a large advantage at a low-probability token.  On the CaMOPD lab scenario the
    per-rollout norms spanned six orders of magnitude and the top 5 of 256 rollouts held 99% of
    a group's summed norm, so a "group mean gradient" was the gradient of a handful of
    rollouts, and a cosine between two groups a cosine between those few."""
    norms = g.norm(dim=1)
    total = norms.sum()
    if total <= 0:
        return {"effective_n": float("nan"), **{f"top{k}_share": float("nan") for k in top}, "n": len(g)}
    ordered = norms.sort(descending=True).values
    return {"effective_n": float(total**2 / (norms**2).sum()), **{f"top{k}_share": float(ordered[:k].sum() / total) for k in top}, "n": len(g)}


def pairwise_cosines(g: torch.Tensor) -> torch.Tensor:
    """All ``n (n - 1) / 2`` cosines between distinct rows."""
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = unit @ unit.T
    i, j = torch.triu_indices(len(g), len(g), offset=1)
    return sims[i, j]
