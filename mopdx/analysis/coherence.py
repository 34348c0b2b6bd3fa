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
from mopdx.text import right_pad


@dataclass
class SampleBatch:
    """Rollouts re-laid for per-sample work: ``[prompt | completion | pad]`` from position 0."""

    input_ids: torch.Tensor  # [B, L]
    positions: torch.Tensor  # [B, C] index of the logit that predicts each completion token
    completion_ids: torch.Tensor  # [B, C]
    mask: torch.Tensor  # [B, C]

    @classmethod
    def from_rollouts(cls, r: Rollouts, pad_id: int) -> SampleBatch:
        seqs, starts = r.unpadded()
        ids, _ = right_pad(seqs, pad_id)
        width = ids.shape[1]
        c = r.completion_ids.shape[1]
        pos = torch.stack([(torch.arange(c) + st - 1).clamp(max=width - 1) for st in starts])
        return cls(ids, pos, r.completion_ids.cpu(), r.completion_mask.cpu())


def select_params(model: torch.nn.Module, last_layers: int = 1, head: bool = True) -> list[str]:
    """Names of the parameters of the last ``last_layers`` decoder layers (and the LM head)."""
    names = [n for n, _ in model.named_parameters()]
    layer_ids = sorted({int(n.split(".layers.")[1].split(".")[0]) for n in names if ".layers." in n})
    keep = set(layer_ids[-last_layers:]) if last_layers > 0 else set()
    out = [n for n in names if ".layers." in n and int(n.split(".layers.")[1].split(".")[0]) in keep]
    if head:
        out += [n for n in names if n.startswith("lm_head")]
    return out


def sample_loss(logps: torch.Tensor, completion_ids: torch.Tensor, mask: torch.Tensor, teacher: dict[str, torch.Tensor], kind: str, adv_clip: float = 5.0) -> torch.Tensor:
    """The distillation loss of one sample (``logps`` [C, V]); mirrors ``DistillModule.compute_loss``."""
    lp, m = logps[None], mask[None]
    if kind == "topk":
        return losses.topk_reverse_kl(lp.gather(-1, teacher["topk_ids"][None]), teacher["topk_logps"][None], m, tail=True)
    if kind == "full_reverse_kl":
        return losses.full_reverse_kl(lp, teacher["full_logps"][None], m)
    ls = lp.gather(-1, completion_ids[None, :, None]).squeeze(-1)
    return losses.pg_reverse_kl(ls, teacher["logps"][None], m, adv_clip)[0]


def _teacher_rows(t: TeacherOutput) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in (("logps", t.logps), ("topk_ids", t.topk_ids), ("topk_logps", t.topk_logps), ("full_logps", t.full_logps)) if v is not None}


def per_sample_grads(
    model: torch.nn.Module,
    batch: SampleBatch,
    teacher: TeacherOutput,
    kind: str,
    params: Sequence[str],
    method: str = "vmap",
    chunk: int = 16,
) -> torch.Tensor:
    """``[B, P]``: the flattened gradient of each sample's loss w.r.t. ``params``."""
    named = dict(model.named_parameters())
    trainable = {n: named[n].detach() for n in params}
    frozen = {n: p.detach() for n, p in named.items() if n not in trainable}
    rows = _teacher_rows(teacher)
    keys = sorted(rows)

    def loss_one(p: dict[str, torch.Tensor], ids: torch.Tensor, pos: torch.Tensor, cids: torch.Tensor, mask: torch.Tensor, *trow: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**frozen, **p}, args=(), kwargs={"input_ids": ids[None], "use_cache": False}).logits[0]
        logps = torch.log_softmax(logits.float()[pos], dim=-1)
        return sample_loss(logps, cids, mask, dict(zip(keys, trow)), kind)

    was_training = model.training
    model.eval()
    out = []
    try:
        if method == "vmap":
            g = vmap(grad(loss_one), in_dims=(None, 0, 0, 0, 0, *[0] * len(keys)))
            for lo in range(0, batch.input_ids.shape[0], chunk):
                sl = slice(lo, lo + chunk)
                grads = g(trainable, batch.input_ids[sl], batch.positions[sl], batch.completion_ids[sl], batch.mask[sl], *[rows[k][sl] for k in keys])
                out.append(torch.cat([grads[n].flatten(1) for n in params], dim=1))
        elif method == "loop":
            for i in range(batch.input_ids.shape[0]):
                p = {n: t.clone().requires_grad_(True) for n, t in trainable.items()}
                loss = loss_one(p, batch.input_ids[i], batch.positions[i], batch.completion_ids[i], batch.mask[i], *[rows[k][i] for k in keys])
                gs = torch.autograd.grad(loss, [p[n] for n in params])
                out.append(torch.cat([x.flatten() for x in gs])[None])
        else:
            raise ValueError(f"method must be 'vmap' or 'loop', got {method!r}")
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


def group_alignment(g: torch.Tensor, a: Sequence[int], b: Sequence[int]) -> dict[str, float]:
    """Cosine and dot product between the mean gradients of rows ``a`` and rows ``b``."""
    ga, gb = g[torch.as_tensor(a)].mean(0), g[torch.as_tensor(b)].mean(0)
    return {"cos": float(torch.nn.functional.cosine_similarity(ga, gb, dim=0)), "dot": float(ga @ gb)}


def pairwise_cosines(g: torch.Tensor) -> torch.Tensor:
    """All ``n (n - 1) / 2`` cosines between distinct rows."""
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = unit @ unit.T
    i, j = torch.triu_indices(len(g), len(g), offset=1)
    return sims[i, j]
