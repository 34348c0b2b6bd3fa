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
) -> torch.Tensor:
    """``[B, P]``: for each sample, the flattened gradient w.r.t. ``params`` of its contribution
    to the batch loss ``spec`` defines (the rows sum to the batch loss's gradient)."""
    if method not in ("vmap", "loop"):
        raise ValueError(f"method must be 'vmap' or 'loop', got {method!r}")
    named = dict(model.named_parameters())
    trainable = {n: named[n].detach() for n in params}
    frozen = {n: p.detach() for n, p in named.items() if n not in trainable}
    was_training = model.training
    model.eval()
    try:
        full = batch.loss_batch(teacher)
        const = losses.batch_constants(spec, sampled_logps(model, batch, chunk) if spec.entry.constants is not None else None, full)
        rows, per_token, denominator = full.tensors(), const.per_token, const.denominator

        def loss_one(p: dict[str, torch.Tensor], ids: torch.Tensor, pos: torch.Tensor, row: dict[str, torch.Tensor], crow: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = functional_call(model, {**frozen, **p}, args=(), kwargs={"input_ids": ids[None], "use_cache": False}).logits[0]
            logps = torch.log_softmax(logits.float()[pos], dim=-1)
            one = LossBatch(**{k: v[None] for k, v in row.items()})
            return sample_loss(logps, one, BatchConstants({k: v[None] for k, v in crow.items()}, denominator), spec)

        out = []
        if method == "vmap":
            g = vmap(grad(loss_one), in_dims=(None, 0, 0, 0, 0))
            for lo in range(0, batch.input_ids.shape[0], chunk):
                sl = slice(lo, lo + chunk)
                grads = g(trainable, batch.input_ids[sl], batch.positions[sl], {k: v[sl] for k, v in rows.items()}, {k: v[sl] for k, v in per_token.items()})
                out.append(torch.cat([grads[n].flatten(1) for n in params], dim=1))
        else:
            for i in range(batch.input_ids.shape[0]):
                p = {n: t.clone().requires_grad_(True) for n, t in trainable.items()}
                loss = loss_one(p, batch.input_ids[i], batch.positions[i], {k: v[i] for k, v in rows.items()}, {k: v[i] for k, v in per_token.items()})
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


def pairwise_cosines(g: torch.Tensor) -> torch.Tensor:
    """All ``n (n - 1) / 2`` cosines between distinct rows."""
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = unit @ unit.T
    i, j = torch.triu_indices(len(g), len(g), offset=1)
    return sims[i, j]
