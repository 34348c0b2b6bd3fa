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
from mopdx.backends.remote import is_remote
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


def _teacher_ref(cfg: DictConfig, domain: str, progress: bool) -> str:
    ref = cfg.model.teachers[domain]
    if is_remote(ref):
        return ref
    return check_model_folder(resolve_ref(ref, cfg.lab, progress=progress), f"teacher {domain!r}")


def _engine_settings(cfg: DictConfig, share: float) -> Any:
    from mopdx.backends.vllm import EngineSettings

    v = cfg.vllm
    return EngineSettings(
        dtype=cfg.model.dtype, gpu_memory_utilization=share, max_model_len=v.max_model_len, enforce_eager=v.enforce_eager,
        seed=cfg.train.seed, cpu_kvcache_gib=v.cpu_kvcache_gib, max_logprobs=max(20, cfg.loss.topk), sleep_between_uses=v.sleep_teachers,
    )


def make_teachers(cfg: DictConfig, paths: dict[str, str], tokenizer: Any) -> dict[str, Any]:
    """One scorer per distinct teacher (domains that share a folder or server share it):
    remote (``http://...``), vLLM (``model.teacher_backend=vllm``) or transformers."""
    from mopdx.backends.remote import RemoteTeacherScorer
    from mopdx.models import tokenizer_fingerprint

    by_ref: dict[str, Any] = {}
    for d, ref in paths.items():
        if ref in by_ref:
            continue
        if is_remote(ref):
            r = cfg.remote
            by_ref[ref] = RemoteTeacherScorer(ref, tokenizer_fingerprint(tokenizer), r.timeout_s, r.retries, r.backoff_s, name=f"teacher {d!r}")
        elif cfg.model.teacher_backend == "vllm":
            from mopdx.backends.vllm import VLLMTeacherScorer

            by_ref[ref] = VLLMTeacherScorer(ref, _engine_settings(cfg, cfg.vllm.teacher_gpu_memory_utilization), topk=cfg.loss.topk)
        else:
            model = load_model(ref, cfg.model.dtype, what=f"teacher {d!r}")
            check_model_vocab(model, tokenizer, f"teacher {d!r}")
            by_ref[ref] = HFTeacherScorer(model, temperature=cfg.loss.teacher_temperature)
    return {d: by_ref[ref] for d, ref in paths.items()}


def make_rollout_backend(cfg: DictConfig, student_path: str, student: Any, tokenizer: Any) -> Any:
    """The student's sampler: the trainer's own module (hf) or an in-process vLLM engine."""
    if cfg.rollout.backend == "vllm":
        from mopdx.backends.vllm import VLLMRolloutBackend

        return VLLMRolloutBackend(student_path, tokenizer.pad_token_id, tokenizer.eos_token_id, _engine_settings(cfg, cfg.vllm.student_gpu_memory_utilization))
    return HFRolloutBackend(student, tokenizer.pad_token_id, tokenizer.eos_token_id)


def _teacher_accuracy(cfg: DictConfig, teachers: dict[str, Any], tokenizer: Any, evals: list[Example], run_dir: Path) -> dict[str, float]:
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
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=cfg.train.ckpt_every or None, save_last=True, save_top_k=-1 if cfg.train.keep_checkpoints else 1, monitor=None)
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


def fit(cfg: DictConfig, resume: Path | None = None, progress: bool = True, callbacks: list[pl.Callback] | None = None) -> dict[str, Any]:
    """Train a student as ``cfg`` says; returns the summary written to ``summary.json``.

    ``callbacks`` run after the run's periodic eval (e.g. a sweep's pruning callback)."""
    _quiet_lightning()
    ckpt_path = _resume_checkpoint(resume)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    strategy_cls = get_strategy_class(cfg.strategy.name)
    if strategy_cls.loop == "codistill":  # peers that teach each other (OPCoD): no external teachers
        if cfg.rollout.backend != "hf":
            raise ConfigError("the co-distillation loop (OPCoD) samples with the hf backend only; set rollout.backend=hf")
        from mopdx.codistill_run import fit_codistill

        return fit_codistill(cfg, strategy_cls, ckpt_path, resume, progress, callbacks)

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
    teacher_paths = {d: _teacher_ref(cfg, d, progress) for d in domains}
    eval_examples = take_per_domain(load_prompts(resolve_ref(cfg.data.eval, cfg.lab, progress=progress)), cfg.data.eval_per_domain)

    tokenizer = load_tokenizer(student_path)
    for d, p in teacher_paths.items():
        if not is_remote(p):  # a remote teacher proves its tokenizer when it connects
            check_same_vocab(tokenizer, load_tokenizer(p), d)

    run_dir = resume if resume is not None else new_run_dir(cfg)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))

    student = load_model(student_path, cfg.model.dtype, what="student")
    check_model_vocab(student, tokenizer, "student")
    if cfg.rollout.overlap_chunk and cfg.rollout.backend == "vllm" and cfg.model.teacher_backend == "vllm" and not all(map(is_remote, teacher_paths.values())):
        raise ConfigError(
            "rollout.overlap_chunk with a vLLM student and local vLLM teachers: two in-process vLLM engines cannot run at the same time; "
            "serve the teachers (`python -m mopdx serve-teacher`, model.teachers.<d>=http://...) or use model.teacher_backend=hf"
        )
    teachers = make_teachers(cfg, teacher_paths, tokenizer)
    rollout = make_rollout_backend(cfg, student_path, student, tokenizer)

    strategy = strategy_cls(cfg, domains)
    prompts = PromptPool(train_examples, seed=cfg.train.seed)
    module = DistillModule(cfg, student, tokenizer, teachers, strategy, prompts, rollout_backend=rollout)
    teacher_acc = _teacher_accuracy(cfg, teachers, tokenizer, eval_examples, run_dir)
    groups = {g: list(ds) for g, ds in cfg.eval.groups.items()}
    evaluator = PeriodicEval(eval_examples, eval_settings(cfg), cfg.train.eval_every, run_dir, teacher_acc, groups)
    trainer = make_trainer(cfg, run_dir, [evaluator, *(callbacks or [])], resume is not None, progress)
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
