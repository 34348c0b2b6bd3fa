"""The Lightning trainer every loop runs under: logs, checkpoints, save-on-exception, pacing.

Why one factory: distillation and co-distillation must write the same run
folder layout (``checkpoints/last.ckpt``, ``logs/``, ``tb/``) so that resume,
compare and sweeps treat every run alike.

Why the checkpoint guards: a checkpoint is the only way back from a failure, so
none may be lost or poisoned -- every write is atomic (temp file + ``os.replace``)
and refuses non-finite weights, the two newest periodic checkpoints are kept,
a divergence sets aside the checkpoints that hold the weights that diverged,
and ``--resume`` falls back past an unreadable file to the newest intact one.
"""

from __future__ import annotations

import logging
import os
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.plugins import TorchCheckpointIO
from torch.utils.data import DataLoader, IterableDataset

from mopdx.errors import MopdxError
from mopdx.finite import NonFiniteError, checkpoint_tensors, first_nonfinite
from mopdx.run.loggers import make_loggers
from mopdx.run.progress import StepProgressBar

log = logging.getLogger("mopdx")

EXCEPTION_CKPT = "on_exception"
SET_ASIDE = ".diverged"  # suffix of checkpoints whose weights diverged (kept for inspection, never resumed)


def quiet_lightning() -> None:
    """Lightning sets its loggers to INFO on import; its device banner and tips are noise here."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _load(path: Path) -> dict[str, Any]:
    """A checkpoint with its tensors memory-mapped: opening one costs its metadata, not its size,
    and a truncated file fails here (its zip directory is at the end)."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _step_of(path: Path) -> int | None:
    """A checkpoint's ``global_step``, from its name (``epoch=E-step=N.ckpt``) when it has one;
    None when it cannot be read."""
    m = re.search(r"step=(\d+)", path.name)
    if m:
        return int(m.group(1))
    try:
        return int(_load(path).get("global_step", -1))
    except Exception:  # noqa: BLE001 - unreadable: resume_checkpoint skips it anyway
        return None


def _why(path: Path, exc: BaseException) -> str:
    """Why a checkpoint cannot be loaded, in a few words (torch's own message is long)."""
    if not zipfile.is_zipfile(path):  # a checkpoint is a zip archive whose index is at its end
        return "unreadable: truncated or not a checkpoint"
    text = str(exc).strip().splitlines()
    return f"unreadable: {text[0].split('. ')[0][:120] if text else type(exc).__name__}"


def resume_checkpoint(resume: Path | None) -> str | None:
    """The checkpoint a ``--resume`` continues from: the newest intact one in ``checkpoints/``.

    Candidates are ``last.ckpt``, the one written when the run stopped on an exception
    (Ctrl-C, a teacher server down) and the periodic ``epoch=E-step=N.ckpt``; at the same
    step ``last.ckpt`` wins.  A file that does not load (truncated by a full disk or a copy)
    or holds non-finite weights (a run from before the guards) is skipped with a warning that
    names it and the one used instead; when none is usable the error says so in one line.
    """
    if resume is None:
        return None
    ckpt_dir = resume / "checkpoints"
    files = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if not files:
        aside = sorted(p.name for p in ckpt_dir.glob(f"*.ckpt{SET_ASIDE}")) if ckpt_dir.is_dir() else []
        why = f" (set aside after a divergence: {', '.join(aside)})" if aside else ""
        raise MopdxError(f"nothing to resume in {resume}: no checkpoints/*.ckpt{why} -- start the run again without --resume")
    rank = {"last.ckpt": 0, f"{EXCEPTION_CKPT}.ckpt": 2}  # step files rank 1
    loaded, bad = [], []
    for p in files:
        try:
            ckpt = _load(p)
            loaded.append((int(ckpt.get("global_step", -1)), -rank.get(p.name, 1), p, ckpt))
        except Exception as exc:  # noqa: BLE001 - whatever torch.load raises, the file cannot be resumed
            bad.append(f"{p.name} ({_why(p, exc)})")
    chosen = None
    for step, _, p, ckpt in sorted(loaded, key=lambda t: t[:2], reverse=True):
        # weights only: the writer already refuses non-finite moments, and reading them too would
        # triple the cost of a resume (one full read of the chosen file, usually the first)
        name = first_nonfinite(ckpt.get("state_dict", {}).items())
        if name is None:
            chosen = (step, p)
            break
        bad.append(f"{p.name} (non-finite {name})")
    if chosen is None:
        raise MopdxError(f"no usable checkpoint to resume in {ckpt_dir}: {'; '.join(bad)} -- start the run again without --resume")
    if bad:
        log.warning("skipping unusable checkpoints: %s; resuming from %s (step %d)", "; ".join(bad), chosen[1].name, chosen[0])
    return str(chosen[1])


class SafeCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that cannot leave a torn or poisoned file.

    Lightning's own write goes through an fsspec transaction: the whole checkpoint is
    serialised in memory, written to a file in the system temp folder and moved over the
    target -- which, when the temp folder is on another filesystem (a tmpfs ``/tmp``), is a
    copy *into* the target: a kill mid-copy truncates ``last.ckpt``.  Here the checkpoint is
    written next to its target (``NAME.part``), flushed to disk and renamed over it
    (``os.replace`` is atomic on one filesystem), so the previous file stays whole until the
    new one is.  A checkpoint whose weights or optimiser moments hold a NaN/inf is refused
    (``NonFiniteError``): it could only be resumed into the same failure.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        bad = first_nonfinite(checkpoint_tensors(checkpoint))
        if bad is not None:
            raise NonFiniteError(f"refusing to write {path.name}: {bad} is non-finite at step {checkpoint.get('global_step')}", bad_step=None)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a power loss could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def set_aside(ckpt_dir: Path, step: int) -> list[str]:
    """Rename the checkpoints of ``step`` to ``*.ckpt.diverged``; returns their names.

    Why: they hold the weights a divergence at ``step`` started from, and resuming from
    them -- even with a lower lr -- recomputes the same non-finite loss or gradient.  The
    files are kept (renaming back resumes from them), but ``--resume`` no longer sees them.
    """
    moved = []
    for p in sorted(ckpt_dir.glob("*.ckpt")):
        if _step_of(p) == step:
            os.replace(p, p.with_name(p.name + SET_ASIDE))
            moved.append(p.name)
    return moved


class GuardedExceptionCheckpoint(OnExceptionCheckpoint):
    """``on_exception.ckpt`` for crashes and interrupts, never for a divergence.

    On a ``NonFiniteError`` the current state either is non-finite or is the state that
    produced the non-finite value, so nothing is written and the checkpoints of the step
    that diverged are set aside: ``--resume`` goes back to the one before.  A failure while
    saving is logged, not raised, so it cannot hide the error that stopped the run.
    """

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteError):
            ckpt_dir = Path(self.dirpath)
            moved = set_aside(ckpt_dir, exception.bad_step) if exception.bad_step is not None else []
            if moved:
                left = "--resume continues from the newest one left" if any(ckpt_dir.glob("*.ckpt")) else "no earlier checkpoint is left: start the run again"
                log.warning(
                    "renamed %s to *%s (rename back to use them): they hold the weights that diverged at step %d; %s",
                    ", ".join(moved), SET_ASIDE, exception.bad_step, left,
                )
            return
        try:
            super().on_exception(trainer, pl_module, exception)
        except Exception as exc:  # noqa: BLE001 - must not replace the error that stopped the run
            log.warning("could not write %s: %s", self.ckpt_path, exc)


def make_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[pl.Callback], resumed: bool, progress: bool, clip: bool = True) -> pl.Trainer:
    """The run's Lightning trainer: the ``train.loggers`` (CSV + TensorBoard by default), ``last.ckpt``, a checkpoint on exceptions.

    ``clip=False`` when the module clips its own gradients (``configure_gradient_clipping``;
    both loops now do, to check the gradient norm before the optimiser applies it).
    Without ``train.keep_checkpoints`` the two newest periodic checkpoints are kept besides
    ``last.ckpt``: one more than needed, so a fallback remains when the newest is set aside.
    No version counter: a resume from a periodic checkpoint (``last.ckpt`` unreadable) must
    overwrite ``last.ckpt`` and the steps it replays, not write ``last-v1.ckpt`` beside them.
    """
    ckpt_dir = run_dir / "checkpoints"
    # A resumed run logs to a new sub-folder so the logs of the first attempt are kept.
    log_version = "" if not resumed else f"resume-{time.strftime('%Y%m%d-%H%M%S')}"
    keep = -1 if cfg.train.keep_checkpoints else 2
    ckpt = ModelCheckpoint(
        dirpath=ckpt_dir, every_n_train_steps=cfg.train.ckpt_every or None, save_last=True,
        save_top_k=keep, monitor="step", mode="max", enable_version_counter=False,
    )
    return pl.Trainer(
        max_steps=cfg.train.max_steps,
        accelerator=cfg.train.accelerator,
        devices=int(cfg.train.devices),
        num_nodes=int(cfg.train.num_nodes),
        strategy=str(cfg.train.parallel),
        precision=cfg.train.precision,
        gradient_clip_val=(cfg.optim.grad_clip or None) if clip else None,
        log_every_n_steps=cfg.train.log_every,
        logger=make_loggers(cfg, run_dir, log_version),
        callbacks=[*callbacks, ckpt, GuardedExceptionCheckpoint(ckpt_dir, filename=EXCEPTION_CKPT), *([StepProgressBar()] if progress else [])],
        plugins=[SafeCheckpointIO()],
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
