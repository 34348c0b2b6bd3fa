"""The Lightning trainer every loop runs under: logs, checkpoints, save-on-exception, pacing.

Why one factory: distillation and co-distillation must write the same run
folder layout (``checkpoints/last.ckpt``, ``logs/``, ``tb/``) so that resume,
compare and sweeps treat every run alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, IterableDataset

from mopdx.errors import MopdxError

EXCEPTION_CKPT = "on_exception"


def quiet_lightning() -> None:
    """Lightning sets its loggers to INFO on import; its device banner and tips are noise here."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resume_checkpoint(resume: Path | None) -> str | None:
    """The checkpoint a ``--resume`` continues from: the newer of ``last.ckpt`` and the one
    written when the run stopped on an exception (NaN loss, Ctrl-C, a teacher server down)."""
    if resume is None:
        return None
    ckpt_dir = resume / "checkpoints"
    found = [p for p in (ckpt_dir / "last.ckpt", ckpt_dir / f"{EXCEPTION_CKPT}.ckpt") if p.is_file()]
    if not found:
        raise MopdxError(f"nothing to resume in {resume}: no checkpoints/last.ckpt")
    if len(found) == 1:
        return str(found[0])
    steps = [torch.load(p, map_location="cpu", weights_only=False).get("global_step", -1) for p in found]
    return str(found[max(range(len(found)), key=lambda i: (steps[i], -i))])


def make_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[pl.Callback], resumed: bool, progress: bool, clip: bool = True) -> pl.Trainer:
    """The run's Lightning trainer: CSV + TensorBoard logs, ``last.ckpt``, a checkpoint on exceptions.

    ``clip=False`` when the module clips its own gradients (``configure_gradient_clipping``).
    """
    ckpt_dir = run_dir / "checkpoints"
    # A resumed run logs to a new sub-folder so the logs of the first attempt are kept.
    log_version = "" if not resumed else f"resume-{time.strftime('%Y%m%d-%H%M%S')}"
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=cfg.train.ckpt_every or None, save_last=True, save_top_k=-1 if cfg.train.keep_checkpoints else 1, monitor=None)
    return pl.Trainer(
        max_steps=cfg.train.max_steps,
        accelerator=cfg.train.accelerator,
        devices=1,
        precision=cfg.train.precision,
        gradient_clip_val=(cfg.optim.grad_clip or None) if clip else None,
        log_every_n_steps=cfg.train.log_every,
        logger=[CSVLogger(run_dir, name="logs", version=log_version), TensorBoardLogger(run_dir, name="tb", version=log_version)],
        callbacks=[*callbacks, ckpt, OnExceptionCheckpoint(ckpt_dir, filename=EXCEPTION_CKPT)],
        default_root_dir=run_dir,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


class _StepIndices(IterableDataset):
    """Yields step numbers forever; the module turns a step into prompts itself."""

    def __iter__(self) -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1


class StepDataModule(pl.LightningDataModule):
    """Lightning needs a dataloader; ours only paces the loop (prompts depend on the step)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_StepIndices(), batch_size=None, num_workers=0)
