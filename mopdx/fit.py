"""``fit``: assemble a run from its config and train it.

Order matters for the user: everything that can fail on bad input (config,
model folders, tokenizers, data, routing) is checked before the first
training step, and the resolved config is written to the run folder first,
so ``fit --config <run>/config.yaml`` reproduces the run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.callbacks import PeriodicEval, SaveOnError
from mopdx.config import to_yaml
from mopdx.data import PromptPool, StepDataModule, load_prompts
from mopdx.errors import ConfigError, DataError, MopdxError
from mopdx.evaluate import EvalSettings, accuracy_by_domain
from mopdx.lab.build import resolve_ref
from mopdx.lab.domains import Example
from mopdx.metrics import domain_table, group_metrics, group_table, normalised_scores
from mopdx.models import check_model_folder, check_model_vocab, check_same_vocab, load_model, load_tokenizer
from mopdx.module import DistillModule
from mopdx.strategy import get_strategy_class

log = logging.getLogger("mopdx")


def new_run_dir(cfg: DictConfig) -> Path:
    """``<out_dir>/<name>``; a fresh suffix when the folder exists (never overwrite a run)."""
    base = Path(cfg.run.out_dir)
    name = cfg.run.name or f"{cfg.strategy.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base / name, 1
    while path.exists():
        i += 1
        path = base / f"{name}-{i}"
    path.mkdir(parents=True)
    return path


def eval_settings(cfg: DictConfig) -> EvalSettings:
    e = cfg.eval
    return EvalSettings(max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, greedy=e.greedy, sampled=e.sampled, temperature=cfg.rollout.temperature)


def take_per_domain(examples: list[Example], n: int) -> list[Example]:
    counts: dict[str, int] = {}
    out = []
    for ex in examples:
        if counts.get(ex.domain, 0) < n:
            counts[ex.domain] = counts.get(ex.domain, 0) + 1
            out.append(ex)
    return out


def _teacher_accuracy(cfg: DictConfig, teachers: dict[str, Any], tokenizer: Any, evals: list[Example], run_dir: Path) -> dict[str, float]:
    """Each teacher's accuracy on its own domain (cached in the run folder for resumes)."""
    path = run_dir / "teacher_acc.json"
    if path.is_file():
        return json.loads(path.read_text())
    acc: dict[str, float] = {}
    for domain, scorer in teachers.items():
        subset = [e for e in evals if e.domain == domain]
        if subset:
            backend = HFRolloutBackend(scorer.model, tokenizer.pad_token_id, tokenizer.eos_token_id)
            acc[domain] = accuracy_by_domain(backend, tokenizer, subset, eval_settings(cfg))[domain]
    path.write_text(json.dumps(acc, indent=2))
    return acc


def _quiet_lightning() -> None:
    """Lightning sets its loggers to INFO on import; its device banner and tips are noise here."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _resume_checkpoint(resume: Path | None) -> str | None:
    if resume is None:
        return None
    last = resume / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise MopdxError(f"nothing to resume in {resume}: no checkpoints/last.ckpt")
    return str(last)


def make_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[pl.Callback], resumed: bool, progress: bool, clip: bool = True) -> pl.Trainer:
    """The run's Lightning trainer: CSV + TensorBoard logs, ``last.ckpt``, save-on-error.

    ``clip=False`` when the module clips its own gradients (``configure_gradient_clipping``).
    """
    ckpt_dir = run_dir / "checkpoints"
    # A resumed run logs to a new sub-folder so the logs of the first attempt are kept.
    log_version = "" if not resumed else f"resume-{time.strftime('%Y%m%d-%H%M%S')}"
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=cfg.train.ckpt_every or None, save_last=True, save_top_k=1, monitor=None)
    return pl.Trainer(
        max_steps=cfg.train.max_steps,
        accelerator=cfg.train.accelerator,
        devices=1,
        precision=cfg.train.precision,
        gradient_clip_val=(cfg.optim.grad_clip or None) if clip else None,
        log_every_n_steps=cfg.train.log_every,
        logger=[CSVLogger(run_dir, name="logs", version=log_version), TensorBoardLogger(run_dir, name="tb", version=log_version)],
        callbacks=[*callbacks, ckpt, SaveOnError(ckpt_dir)],
        default_root_dir=run_dir,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def fit(cfg: DictConfig, resume: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train a student as ``cfg`` says; returns the summary written to ``summary.json``."""
    _quiet_lightning()
    if cfg.rollout.backend != "hf":
        raise ConfigError(f"rollout.backend={cfg.rollout.backend!r} is not available in this build; use rollout.backend=hf")
    ckpt_path = _resume_checkpoint(resume)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    strategy_cls = get_strategy_class(cfg.strategy.name)
    if strategy_cls.loop == "codistill":  # peers that teach each other (OPCoD): no external teachers
        from mopdx.codistill_run import fit_codistill

        return fit_codistill(cfg, strategy_cls, ckpt_path, resume, progress)

    train_examples = load_prompts(resolve_ref(cfg.data.train, cfg.lab, progress=progress))
    domains = sorted({e.domain for e in train_examples})
    no_teacher = [d for d in domains if d not in cfg.model.teachers]
    if no_teacher:
        raise ConfigError(f"domain(s) {no_teacher} in the training data have no teacher: set model.teachers.<domain>=<model folder>")
    unknown = [d for d in cfg.data.domain_ratios if d not in domains]
    if unknown:
        raise DataError(f"data.domain_ratios names domain(s) {unknown} that have no training prompts; domains: {domains}")
    bad_groups = {g: [d for d in ds if d not in domains] for g, ds in cfg.eval.groups.items()}
    bad_groups = {g: ds for g, ds in bad_groups.items() if ds}
    if bad_groups:
        raise ConfigError(f"eval.groups names domain(s) with no training prompts: {bad_groups}; domains: {domains}")
    # Only the teachers of domains that occur in the data are resolved and loaded.
    student_path = check_model_folder(resolve_ref(cfg.model.student, cfg.lab, progress=progress), "student")
    teacher_paths = {d: check_model_folder(resolve_ref(cfg.model.teachers[d], cfg.lab, progress=progress), f"teacher {d!r}") for d in domains}
    eval_examples = take_per_domain(load_prompts(resolve_ref(cfg.data.eval, cfg.lab, progress=progress)), cfg.data.eval_per_domain)

    tokenizer = load_tokenizer(student_path)
    for d, p in teacher_paths.items():
        check_same_vocab(tokenizer, load_tokenizer(p), d)

    run_dir = resume if resume is not None else new_run_dir(cfg)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))

    student = load_model(student_path, cfg.model.dtype, what="student")
    check_model_vocab(student, tokenizer, "student")
    teachers = {}
    for d, p in teacher_paths.items():
        model = load_model(p, cfg.model.dtype, what=f"teacher {d!r}")
        check_model_vocab(model, tokenizer, f"teacher {d!r}")
        teachers[d] = HFTeacherScorer(model, temperature=cfg.loss.teacher_temperature)

    strategy = strategy_cls(cfg, domains)
    prompts = PromptPool(train_examples, seed=cfg.train.seed)
    module = DistillModule(cfg, student, tokenizer, teachers, strategy, prompts)
    teacher_acc = _teacher_accuracy(cfg, teachers, tokenizer, eval_examples, run_dir)
    groups = {g: list(ds) for g, ds in cfg.eval.groups.items()}
    evaluator = PeriodicEval(eval_examples, eval_settings(cfg), cfg.train.eval_every, run_dir, teacher_acc, groups)
    trainer = make_trainer(cfg, run_dir, [evaluator], resume is not None, progress)
    trainer.fit(module, datamodule=StepDataModule(), ckpt_path=ckpt_path)

    final_dir = run_dir / "final"
    student.save_pretrained(final_dir, safe_serialization=True)
    tokenizer.save_pretrained(final_dir)
    return summarise(run_dir, evaluator, teacher_acc, domains, trainer.global_step)


def summarise(run_dir: Path, evaluator: PeriodicEval, teacher_acc: dict[str, float], domains: list[str], steps: int) -> dict[str, Any]:
    """Write ``summary.json`` / ``report.md`` and return the summary."""
    student0 = evaluator.student0 or {}
    final = evaluator.history[-1]["acc"]
    score = normalised_scores(final, student0, teacher_acc)
    summary = {"run_dir": str(run_dir), "steps": steps, "student0": student0, "teacher": teacher_acc, "final": final, "normalised": score}
    if evaluator.groups:
        summary["groups"] = group_metrics(final, student0, teacher_acc, evaluator.groups)
        summary["group_domains"] = evaluator.groups
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    table = domain_table({"student@0": student0, "teacher": teacher_acc, "final": final, "normalised": score}, domains)
    if evaluator.groups:
        table += "\n\n" + group_table(summary["groups"], evaluator.groups)
    (run_dir / "report.md").write_text(f"# {run_dir.name}\n\n{table}\n")
    summary["table"] = table
    return summary
