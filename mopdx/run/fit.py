"""``fit``: assemble a distillation run from its config and train it.

Order matters for the user: everything that can fail on bad input (config,
model folders, tokenizers, data, routing) is checked before the run folder
exists and before any model loads (``run.assembly``); co-distillation
strategies are handed to their own loop (``run.codistill``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from mopdx.backends.base import TeacherScorer
from mopdx.backends.factory import check_engine_combination, make_rollout_backend, make_teachers
from mopdx.backends.hf import HFRolloutBackend
from mopdx.data import Example, PromptPool
from mopdx.distill.module import DistillModule
from mopdx.models import load_model
from mopdx.run.assembly import RunInputs, distill_refs, prepare, save_final, write_summary
from mopdx.run.callbacks import PeriodicEval
from mopdx.run.evaluation import accuracy_by_domain
from mopdx.run.trainer import StepDataModule, make_trainer, quiet_lightning, resume_checkpoint
from mopdx.scores import group_metrics, normalised_scores
from mopdx.strategy import get_strategy_class
from mopdx.tables import domain_table, group_table

log = logging.getLogger("mopdx")


def teacher_accuracy(cfg: DictConfig, teachers: dict[str, TeacherScorer], tokenizer: Any, evals: list[Example], run_dir: Path) -> dict[str, float]:
    """Each teacher's accuracy on its own domain (cached in the run folder for resumes).

    Remote teachers only prefill, so their accuracy is unknown and their domains get
    no normalised score; a vLLM teacher is evaluated with a transformers copy."""
    path = run_dir / "teacher_acc.json"
    if path.is_file():
        return json.loads(path.read_text())
    acc: dict[str, float] = {}
    for domain, scorer in teachers.items():
        subset = [e for e in evals if e.domain == domain]
        if not subset:
            continue
        model = getattr(scorer, "model", None)
        if model is None and hasattr(scorer, "model_dir"):
            model = load_model(scorer.model_dir, cfg.model.dtype, what=f"teacher {domain!r}")
        if model is None:
            log.warning("teacher %r is remote: its accuracy is unknown, so %r gets no normalised score", domain, domain)
            continue
        backend = HFRolloutBackend(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
        acc[domain] = accuracy_by_domain(backend, tokenizer, subset, cfg.eval)[domain]
    path.write_text(json.dumps(acc, indent=2))
    return acc


def fit(cfg: DictConfig, resume: Path | None = None, progress: bool = True, callbacks: list[pl.Callback] | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the summary written to ``summary.json``.

    ``callbacks`` run after the run's periodic eval (e.g. a sweep's pruning callback)."""
    quiet_lightning()
    ckpt_path = resume_checkpoint(resume)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    strategy_cls = get_strategy_class(cfg.strategy.name)
    if strategy_cls.loop == "codistill":  # peers that teach each other (OPCoD): no external teachers
        from mopdx.run.codistill import fit_codistill

        return fit_codistill(cfg, strategy_cls, ckpt_path, resume, progress, callbacks)

    inputs = prepare(cfg, progress, distill_refs)
    teacher_refs = {d: inputs.models[f"teacher {d!r}"] for d in inputs.domains}
    check_engine_combination(cfg, teacher_refs)
    strategy = strategy_cls(cfg, inputs.domains)
    with inputs.run_folder(resume) as run_dir:  # locked while training; removed if the run fails before any work
        student = inputs.load("student")
        teachers = make_teachers(cfg, teacher_refs, inputs.tokenizer)
        rollout = make_rollout_backend(cfg, inputs.models["student"], student, inputs.tokenizer)
        prompts = PromptPool(inputs.train, seed=cfg.train.seed)
        module = DistillModule(cfg, student, inputs.tokenizer, teachers, strategy, prompts, rollout_backend=rollout)
        teacher_acc = teacher_accuracy(cfg, teachers, inputs.tokenizer, inputs.evals, run_dir)
        groups = {g: list(ds) for g, ds in cfg.eval.groups.items()}
        evaluator = PeriodicEval(inputs.evals, cfg.eval, cfg.train.eval_every, run_dir, teacher_acc, groups)
        trainer = make_trainer(cfg, run_dir, [evaluator, *(callbacks or [])], resume is not None, progress)
        trainer.fit(module, datamodule=StepDataModule(), ckpt_path=ckpt_path)

        save_final(student, inputs.tokenizer, run_dir / "final")
        return summarise(inputs, evaluator, teacher_acc, trainer.global_step)


def summarise(inputs: RunInputs, evaluator: PeriodicEval, teacher_acc: dict[str, float], steps: int) -> dict[str, Any]:
    """Write ``summary.json`` / ``report.md`` and return the summary.

    ``final`` is the eval at the run's last step ``steps`` (named by ``eval_step``); an older
    eval is refused (``PeriodicEval.final``) rather than reported as the run's result."""
    assert inputs.run_dir is not None
    student0 = evaluator.student0 or {}
    record = evaluator.final(steps)
    final = record["acc"]
    score = normalised_scores(final, student0, teacher_acc)
    summary: dict[str, Any] = {
        "run_dir": str(inputs.run_dir), "steps": steps, "eval_step": record["step"], "student0": student0, "teacher": teacher_acc,
        "final": final, "normalised": score,
    }
    table = domain_table({"student@0": student0, "teacher": teacher_acc, "final": final, "normalised": score}, inputs.domains)
    if evaluator.groups:
        summary["groups"] = group_metrics(final, student0, teacher_acc, evaluator.groups)
        summary["group_domains"] = evaluator.groups
        table += "\n\n" + group_table(summary["groups"], evaluator.groups)
    return write_summary(inputs.run_dir, summary, inputs.run_dir.name, table)
