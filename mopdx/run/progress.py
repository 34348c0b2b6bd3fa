"""The training progress bar: optimiser steps out of ``train.max_steps``.

A run is step-based (one endless epoch of step indices), so Lightning's default bar reads
"Epoch 0/-2", counts this attempt's batches against the steps left (a resumed run showed
"200/49") and shows the logger's version number. This bar counts the trainer's global step
against ``max_steps``, so a resumed run starts where it left off. tqdm, not rich: tqdm is a
declared dependency, rich only sometimes installed.
"""

from __future__ import annotations

import sys
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    """``step n/max_steps`` with the module's progress-bar metrics (no ``v_num``)."""

    @property
    def train_description(self) -> str:
        return "step"

    def init_train_tqdm(self) -> Tqdm:
        steps = self.trainer.max_steps
        return Tqdm(
            desc=self.train_description, total=steps if steps and steps > 0 else None, initial=self.trainer.global_step,
            position=2 * self.process_position, disable=self.is_disabled, leave=True, dynamic_ncols=True,
            file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        # the one endless epoch: the bar made in on_train_start is the bar (not called on a resume)
        pass

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # the batch index restarts at 0 in a resumed attempt; the global step does not
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
