"""The periodic verifier evaluation of a run (a Lightning callback).

Evaluation is generation-based (verifiers), so it lives in a callback rather
than Lightning's validation loop.  Its history is kept in
``<run>/eval.jsonl`` (one record per eval step, in step order), which also
lets a resumed run keep its step-0 baseline for the normalised score.

Why the history is written the way it is: a run can be killed at any moment
and resumed from a checkpoint older than its last eval.  The file is
therefore rewritten whole and atomically (tmp file, then ``os.replace``)
rather than appended to, so a kill never leaves half a line; on resume the
records after the restored checkpoint's step are dropped (the resumed run
evaluates those steps again); and readers (``read_history``) keep the last
record per step, in step order, and skip a truncated last line left by an
older writer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from mopdx.config import EvalConfig
from mopdx.data import Example
from mopdx.distill.sharding import shard_keys
from mopdx.errors import DataError, TrainingError
from mopdx.run.evaluation import accuracy_by_domain
from mopdx.run.gathered import full_weights, trainer_root
from mopdx.scores import group_metrics, normalised_scores

log = logging.getLogger("mopdx")


def read_history(path: Path) -> list[dict[str, Any]]:
    """The eval records in ``path``: the last record per step, sorted by step.

    Duplicates and out-of-order records come from runs resumed before the history was
    cut back to the restored step; a last line that is not JSON is what a kill during an
    append leaves, and is skipped with a warning.  A bad line elsewhere is an error."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    by_step: dict[int, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                log.warning("%s: ignoring its truncated last line (the run was killed while writing it)", path)
                continue
            raise DataError(f"{path} line {i + 1} is not JSON: delete that line (or the file) and resume the run") from None
        by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def write_history(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """Write ``history`` to ``path`` atomically: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in history)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class PeriodicEval(pl.Callback):
    """Evaluates the student at step 0, every ``every`` steps and at the end."""

    def __init__(
        self,
        examples: Sequence[Example],
        settings: EvalConfig,
        every: int,
        run_dir: Path,
        teacher_acc: dict[str, float],
        groups: dict[str, list[str]] | None = None,
        peer: str | None = None,
    ) -> None:
        self.examples, self.settings, self.every = list(examples), settings, every
        self.groups = groups or {}
        # ``peer``: evaluate ``module.rollouts[peer]`` (one of several trained models) into
        # eval_<peer>.jsonl; otherwise ``module.rollout`` into eval.jsonl.
        self.peer = peer
        self.path = run_dir / (f"eval_{peer}.jsonl" if peer else "eval.jsonl")
        self.teacher_acc = teacher_acc
        self.history: list[dict[str, Any]] = read_history(self.path)
        self.restored_step: int | None = None

    @property
    def student0(self) -> dict[str, float] | None:
        return self.history[0]["acc"] if self.history and self.history[0]["step"] == 0 else None

    def final(self, step: int) -> dict[str, Any]:
        """The eval record of the run's last step ``step``; an error rather than an older eval,
        which would be reported as the run's final result."""
        last = self.history[-1] if self.history else None
        if last is None or last["step"] != step:
            found = "no eval" if last is None else f"the last eval is at step {last['step']}"
            raise TrainingError(f"{self.path.name}: the run ended at step {step} but {found}; resume it (--resume) to run its final eval")
        return last

    def evaluate(self, trainer: pl.Trainer, module: pl.LightningModule, step: int | None = None) -> dict[str, Any]:
        """Evaluate at ``step`` (default: the trainer's step), or return the record already made there."""
        step = trainer.global_step if step is None else step
        if self.history and self.history[-1]["step"] == step:
            return self.history[-1]
        # each process scores its share (all of them in one process); the metrics reduce over processes
        keys = shard_keys(len(self.examples), trainer.global_rank, trainer.world_size)
        domains = sorted({e.domain for e in self.examples})
        with full_weights(trainer_root(trainer)):  # outside the training step FSDP keeps shards only
            if hasattr(module, "ensure_synced"):
                module.ensure_synced()  # an external engine (vLLM) must hold the trainer's weights
            backend = module.rollouts[self.peer] if self.peer else module.rollout
            make_env = getattr(module, "make_env", None)  # multi-turn domains are evaluated by episode
            episodes = (make_env, module.episode_spec) if make_env is not None else None
            acc = accuracy_by_domain(backend, module.tokenizer, [self.examples[k] for k in keys], self.settings, keys=keys, domains=domains,
                                     episodes=episodes)
        record: dict[str, Any] = {"step": step, "acc": dict(acc)}
        if getattr(acc, "ungraded", 0):
            record["ungraded"] = acc.ungraded  # samples whose verifier raised (counted as wrong)
        base = self.student0 or (acc if step == 0 else None)
        if base is not None and self.teacher_acc:
            record["score"] = normalised_scores(acc, base, self.teacher_acc)
            if self.groups:
                record["groups"] = group_metrics(acc, base, self.teacher_acc, self.groups)
        self.history = [h for h in self.history if h["step"] < step] + [record]
        if not trainer.is_global_zero:
            return record
        write_history(self.path, self.history)
        prefix = f"eval/{self.peer}/" if self.peer else "eval/"
        metrics = {f"{prefix}acc_{d}": v for d, v in acc.items()}
        metrics.update({f"{prefix}score_{d}": v for d, v in record.get("score", {}).items()})
        metrics.update({f"{prefix}{g}_{k}": v for g, m in record.get("groups", {}).items() for k, v in m.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        shown = " ".join(f"{d}={v:.2f}" for d, v in acc.items())
        shown += "".join(f" | {g}: acc {m['acc']:.2f} ({m['delta']:+.3f} from step 0, recovered {m['recovered']:.2f})" for g, m in record.get("groups", {}).items())
        who = f"peer {self.peer} " if self.peer else ""
        if "score" in record:
            shown += f" (normalised mean {record['score']['mean']:.3f})"
        log.info("eval %s@ step %d: %s", who, step, shown)
        return record

    def evaluate_restored(self, trainer: pl.Trainer, module: pl.LightningModule, step: int) -> None:
        """Evaluate at the step a checkpoint restored, unless that eval was completed before the kill."""
        if self.history and self.history[-1]["step"] == step:
            return
        if hasattr(module, "sync_rollout_weights"):
            module.sync_rollout_weights()  # an external engine (vLLM) still holds the weights it was built from
        self.evaluate(trainer, module, step)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """On resume: drop the records made after the checkpoint's step, which the resumed run makes again.

        Done here, at the restore, because ``on_train_start`` (the first hook that sees the
        restored ``trainer.global_step``) does not run when the restored step is already
        ``max_steps``."""
        self.restored_step = int(checkpoint["global_step"])
        kept = [h for h in self.history if h["step"] <= self.restored_step]
        if len(kept) < len(self.history):
            log.info("%s: dropping %d eval(s) after the restored step %d", self.path.name, len(self.history) - len(kept), self.restored_step)
        self.history = kept
        if self.path.is_file() and trainer.is_global_zero:
            write_history(self.path, kept)  # also clears a truncated last line

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A run killed at ``max_steps`` before its final eval: Lightning restores it and skips
        training and ``on_train_end``, so the final eval happens here (weights restored,
        model on its device, loggers open; the trainer's own step is restored only later)."""
        step = self.restored_step
        if step is not None and 0 <= trainer.max_steps <= step:
            self.evaluate_restored(trainer, pl_module, step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if step == 0:
            self.evaluate(trainer, pl_module)
        elif self.every and step % self.every == 0:  # a resume from an eval step whose eval was lost
            self.evaluate_restored(trainer, pl_module, step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every and trainer.global_step % self.every == 0 and trainer.global_step < trainer.max_steps:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluate(trainer, pl_module)
