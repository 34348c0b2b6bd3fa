"""One global batch over several processes: who samples what, what selection sees, how the loss is scaled.

Why: a step on W processes must give the update one process gives with the same
global batch (``data.batch_size``).  So (1) the step's prompts are drawn whole on
every process and process ``r`` takes prompts ``r, r + W, ...``, sampled with keyed
sampling under their global index (``Sampling.keys``); (2) sample selection
(CaMOPD's top-rho) runs over the *global* batch: every process gathers a
completion-only view of all rollouts, runs the strategy's ``select`` on it in the
one-process order, and keeps its own rows; (3) the loss divides by the global
denominator (``losses.batch_denominator`` summed over processes) times W, so that
Lightning's gradient average over processes is the global loss's gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from mopdx.backends.base import Rollouts, TeacherOutput
from mopdx.losses import batch_denominator


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard_keys(n: int, rank: int, world: int) -> list[int]:
    """The global indices of the prompts process ``rank`` samples (strided: domains stay mixed)."""
    return list(range(rank, n, world))


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over processes (``x`` itself in one process)."""
    if not distributed():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def global_denominator(mask: torch.Tensor, average: str) -> torch.Tensor | None:
    """The local loss's denominator that makes the process-averaged gradient the global one (``None``: one process)."""
    if not distributed():
        return None
    return all_sum(batch_denominator(mask, average).float()) / dist.get_world_size()


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


def global_select(strategy: Any, step: int, plan: Any, rollouts: Rollouts, teacher: TeacherOutput, keys: list[int], per_prompt: int) -> torch.Tensor:
    """``strategy.select`` over the global batch; returns this process's kept rows (local indices).

    The strategy sees a completion-only view (``prompt_len = 0``: ``input_ids`` are the
    completions) in the one-process order: rollout ``j`` of global prompt ``k`` is row
    ``k * per_prompt + j``, and its ``prompt_index`` is ``k``."""
    if not distributed():
        return strategy.select(step, plan, rollouts, teacher)
    local_rows = torch.arange(len(rollouts))
    prompt = rollouts.prompt_index.cpu()
    order = torch.tensor(keys)[prompt] * per_prompt + local_rows % per_prompt  # rows are prompt-major
    mine = {
        "order": order, "ids": rollouts.completion_ids.cpu(), "mask": rollouts.completion_mask.cpu(), "rlogps": rollouts.rollout_logps.cpu(),
        "tlogps": teacher.logps.cpu(), "domains": list(rollouts.domains),
    }
    parts: list[dict[str, Any]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, mine)
    width = max(p["ids"].shape[1] for p in parts)
    order_all = torch.cat([p["order"] for p in parts])
    sort = torch.argsort(order_all)
    cat = lambda k: torch.cat([_pad(p[k], width) for p in parts])[sort]  # noqa: E731
    domains = [d for p in parts for d in p["domains"]]
    mask = cat("mask")
    view = Rollouts(cat("ids"), mask.long(), 0, mask, cat("rlogps"), [domains[i] for i in sort.tolist()], order_all[sort] // per_prompt)
    kept_global = strategy.select(step, plan, view, TeacherOutput(cat("tlogps")))
    kept_order = set(order_all[sort][kept_global.cpu()].tolist())
    return torch.tensor([i for i in torch.argsort(order).tolist() if int(order[i]) in kept_order], dtype=torch.long)
