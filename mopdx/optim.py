"""The optimiser and learning-rate schedule of every training loop (distillation, co-distillation).

AdamW with transformers' warmup schedules (``optim.schedule``: ``constant``,
or ``cosine`` down to ``optim.min_lr_ratio`` of the base lr at
``train.max_steps``), stepped once per optimiser step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup


def configure_optimizers(cfg: DictConfig, params: Iterable[Any], blocks: int = 1) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for ``params`` (tensors or parameter groups).

    ``blocks > 1`` (a strategy's ``schedule_blocks``, e.g. Cascade RL) splits
    ``train.max_steps`` into that many equal consecutive blocks, each with its own
    warmup and schedule, as if each were a run of its own."""
    o = cfg.optim
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
    total = int(cfg.train.max_steps)
    if blocks <= 1:
        sched = _schedule(opt, o, total)
    else:
        bounds = [total * b // blocks for b in range(blocks + 1)]
        inner = [_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), o, hi - lo) for lo, hi in zip(bounds, bounds[1:])]

        def factor(step: int) -> float:
            b = next((i for i in range(blocks) if step < bounds[i + 1]), blocks - 1)
            return inner[b].lr_lambdas[0](step - bounds[b])

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _schedule(opt: torch.optim.Optimizer, o: DictConfig, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if o.schedule == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=int(o.warmup_steps), num_training_steps=steps, min_lr_rate=float(o.min_lr_ratio))
    return get_constant_schedule_with_warmup(opt, num_warmup_steps=int(o.warmup_steps))


def refresh_lr(trainer: pl.Trainer) -> None:
    """Set each group's lr from the schedule at the restored step.

    A checkpoint stores the lr its run last used; a resume with another
    ``train.max_steps`` (extending a run) has another cosine schedule, and
    without this the first resumed step would use the old run's lr.
    """
    for config in trainer.lr_scheduler_configs:
        sched = config.scheduler
        if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
            for group, lr in zip(sched.optimizer.param_groups, sched.get_lr()):
                group["lr"] = lr
