"""The periodic verifier evaluation of a run (a Lightning callback).

Evaluation is generation-based (verifiers), so it lives in a callback rather
than Lightning's validation loop.  Its history is appended to
``<run>/eval.jsonl``, which also lets a resumed run keep its step-0
baseline for the normalised score.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from mopdx.config import EvalConfig
from mopdx.data import Example
from mopdx.run.evaluation import accuracy_by_domain
from mopdx.scores import group_metrics, normalised_scores

log = logging.getLogger("mopdx")


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
        self.history: list[dict[str, Any]] = [json.loads(l) for l in self.path.read_text().splitlines()] if self.path.is_file() else []

    @property
    def student0(self) -> dict[str, float] | None:
        return self.history[0]["acc"] if self.history and self.history[0]["step"] == 0 else None

    def evaluate(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
        step = trainer.global_step
        if self.history and self.history[-1]["step"] == step:
            return self.history[-1]
        if hasattr(module, "ensure_synced"):
            module.ensure_synced()  # an external engine (vLLM) must hold the trainer's weights
        backend = module.rollouts[self.peer] if self.peer else module.rollout
        acc = accuracy_by_domain(backend, module.tokenizer, self.examples, self.settings, greedy=self.settings.greedy)
        record: dict[str, Any] = {"step": step, "acc": acc}
        if self.settings.sampled:
            record["acc_sampled"] = accuracy_by_domain(backend, module.tokenizer, self.examples, self.settings, greedy=False)
        base = self.student0 or (acc if step == 0 else None)
        if base is not None and self.teacher_acc:
            record["score"] = normalised_scores(acc, base, self.teacher_acc)
            if self.groups:
                record["groups"] = group_metrics(acc, base, self.teacher_acc, self.groups)
        self.history.append(record)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every and trainer.global_step % self.every == 0 and trainer.global_step < trainer.max_steps:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluate(trainer, pl_module)
