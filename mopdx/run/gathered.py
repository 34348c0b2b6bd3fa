"""The student's full weights outside the training step, under FSDP.

Why: Lightning's ``fsdp`` strategy wraps the LightningModule in one FSDP unit.  Inside
``training_step`` (the wrapped module's forward) every process holds the full
parameters, so rollouts sampled there see the whole student.  Outside it -- the eval
callbacks, the final model folder -- each process holds only its shard, and ``generate``
or ``save_pretrained`` would read a fraction of the weights (with two or more cards; one
card keeps everything).  :func:`full_weights` gathers them for the duration of a block.
It is a collective: every process must enter it.  Without FSDP it does nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mopdx.run.assembly import save_final


def is_sharded(root: torch.nn.Module | None) -> bool:
    """True when ``root`` is, or contains, an FSDP unit."""
    if root is None:
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(m, FullyShardedDataParallel) for m in root.modules())


def full_weights(root: torch.nn.Module | None) -> AbstractContextManager:
    """Every parameter of ``root`` whole on every process inside the block (read only: changes
    are not written back to the shards); a no-op when ``root`` is not sharded."""
    if not is_sharded(root):
        return nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(root, writeback=False, recurse=True)


def trainer_root(trainer: object) -> torch.nn.Module | None:
    """The module Lightning's strategy wraps (``trainer.strategy.model``), if any."""
    strategy = getattr(trainer, "strategy", None)
    return getattr(strategy, "model", None)


class SaveFinal(pl.Callback):
    """Writes the run's ``final`` model folder when fit ends, from gathered weights.

    A callback rather than a line after ``trainer.fit``: at ``on_train_end`` every process
    is still in the process group, so the shards can be gathered (each process enters,
    the main one writes).  :meth:`ensure` covers a fit that ran no step (``--resume`` of a
    finished run), where Lightning calls no ``on_train_end``.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
        self.model, self.tokenizer, self.out = model, tokenizer, out
        self.done = False

    def save(self, trainer: pl.Trainer) -> None:
        with full_weights(trainer_root(trainer)):
            if trainer.is_global_zero:
                save_final(self.model, self.tokenizer, self.out)
        self.done = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def ensure(self, trainer: pl.Trainer) -> None:
        if not self.done:
            self.save(trainer)
