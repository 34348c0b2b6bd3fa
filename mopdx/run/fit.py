"""``fit``: assemble a distillation run from its config and train it.

Order matters for the user: everything that can fail on bad input (config,
model folders, tokenizers, data, routing) is checked before the run folder
exists and before any model loads (``run.assembly``); co-distillation
strategies are handed to their own loop (``run.codistill``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from mopdx.backends.factory import check_engine_combination, make_rollout_backend, make_teachers
from mopdx.backends.hf import HFRolloutBackend
from mopdx.data import Example, PromptPool
from mopdx.distill.module import DistillModule
from mopdx.distill.rewards import check_answers
from mopdx.envs.registry import environment_factory, episode_spec
from mopdx.losses import LossSpec
from mopdx.models import load_model, load_tokenizer
from mopdx.plugins import is_remote
from mopdx.run import ranks
from mopdx.run.assembly import RunInputs, distill_refs, prepare, write_summary
from mopdx.run.callbacks import PeriodicEval
from mopdx.run.evaluation import accuracy_by_domain
from mopdx.run.gathered import SaveFinal
from mopdx.run.trainer import StepDataModule, make_trainer, quiet_lightning, resume_checkpoint
from mopdx.scores import group_metrics, normalised_scores
from mopdx.strategy import get_strategy_class
from mopdx.tables import domain_table, group_table
from mopdx.teacher_config import domain_of, split_key, teacher_keys

log = logging.getLogger("mopdx")


def teacher_accuracy(
    cfg: DictConfig, refs: dict[str, str], tokenizer: Any, evals: list[Example], run_dir: Path, loaded: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """Each teacher's accuracy on its own domain, decoded exactly as the student is (``cfg.eval``).

    ``refs`` maps domains to teacher folders; ``loaded`` holds scorers already in memory
    (their model is reused).  A pure-RL run loads no scorer, but its teachers are still
    scored from their folders: the normalised score needs them.  Remote teachers only
    prefill, so their accuracy is unknown and their domains get no normalised score.
    Cached in the run folder (resumes) and under ``run.out_dir`` by a digest of the
    teachers, eval settings and prompts, so the runs of a comparison score them once."""
    path = run_dir / "teacher_acc.json"
    if path.is_file():
        return json.loads(path.read_text())
    episodes = [OmegaConf.to_container(cfg.env, resolve=True)] if cfg.env.environments else []  # scored by episode: another figure
    key = json.dumps([sorted(refs.items()), OmegaConf.to_container(cfg.eval, resolve=True), [(e.domain, e.prompt, e.answer) for e in evals], *episodes])
    shared = Path(cfg.run.out_dir) / ".teacher_acc" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if shared.is_file():
        acc = json.loads(shared.read_text())
    else:
        acc = {}
        for tkey, ref in refs.items():
            domain = domain_of(tkey)
            subset = [e for e in evals if e.domain == domain]
            if not subset:
                continue
            scorer = _member((loaded or {}).get(domain), tkey)
            model = getattr(scorer, "model", None)
            if model is None and is_remote(ref):
                log.warning("teacher %r is remote: its accuracy is unknown, so %r gets no normalised score", tkey, domain)
                continue
            if model is None:
                model = load_model(getattr(scorer, "model_dir", ref), cfg.model.dtype, what=f"teacher {tkey!r}")
            own = getattr(scorer, "tt", None) or (load_tokenizer(ref) if cfg.model.cross_tokenizer and not is_remote(ref) else tokenizer)
            backend = HFRolloutBackend(model, own.pad_token_id, own.eos_token_id)
            make_env = environment_factory(cfg)  # a multi-turn domain's teacher is scored by episode, as the student is
            value = accuracy_by_domain(backend, own, subset, cfg.eval, episodes=(make_env, episode_spec(cfg)) if make_env else None)[domain]
            if tkey != domain:  # a panel: the normalised score's bar is its best teacher
                log.info("teacher %r: accuracy %.3f on %r", tkey, value, domain)
            acc[domain] = max(acc.get(domain, value), value)
        shared.parent.mkdir(parents=True, exist_ok=True)
        shared.write_text(json.dumps(acc, indent=2))
    path.write_text(json.dumps(acc, indent=2))
    return acc


def _member(scorer: Any, key: str) -> Any:
    """The scorer of teacher ``key`` (``d`` or ``d/name``) inside a domain's scorer or panel."""
    name = split_key(key)[1]
    if scorer is None or name is None:
        return scorer
    return scorer.teachers[scorer.names.index(name)] if hasattr(scorer, "names") else None


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

    spec = LossSpec.from_cfg(cfg.loss)
    inputs = prepare(cfg, progress, distill_refs, need_teachers=spec.uses_teacher)
    teacher_refs = teacher_keys(inputs.models, inputs.domains)
    if spec.uses_rewards:
        check_answers(inputs.train)
    check_engine_combination(cfg, teacher_refs if spec.uses_teacher else {})
    strategy = strategy_cls(cfg, inputs.domains)
    with inputs.run_folder(resume) as run_dir:  # locked while training; removed if the run fails before any work
        student = inputs.load("student")
        teachers = make_teachers(cfg, teacher_refs, inputs.tokenizer) if spec.uses_teacher else {}  # pure RL loads none
        rollout = make_rollout_backend(cfg, inputs.models["student"], student, inputs.tokenizer)
        prompts = PromptPool(inputs.train, seed=cfg.train.seed)
        module = DistillModule(cfg, student, inputs.tokenizer, teachers, strategy, prompts, rollout_backend=rollout)
        # the main process scores the teachers (before the others start) and writes the results
        teacher_acc = teacher_accuracy(cfg, teacher_refs, inputs.tokenizer, inputs.evals, run_dir, teachers) if not ranks.is_helper(cfg) else {}
        groups = {g: list(ds) for g, ds in cfg.eval.groups.items()}
        evaluator = PeriodicEval(inputs.evals, cfg.eval, cfg.train.eval_every, run_dir, teacher_acc, groups)
        final = SaveFinal(student, inputs.tokenizer, run_dir / "final")  # after the last eval
        trainer = make_trainer(cfg, run_dir, [evaluator, *(callbacks or []), final], resume is not None, progress)
        trainer.fit(module, datamodule=StepDataModule(), ckpt_path=ckpt_path)
        final.ensure(trainer)
        if not trainer.is_global_zero:
            return {"run_dir": str(run_dir), "steps": trainer.global_step, "rank": trainer.global_rank}
        budget = {"steps": trainer.global_step, "sequences_per_step": int(cfg.data.batch_size) * int(cfg.rollout.n), "sampled_tokens": module.sampled_tokens}
        return summarise(inputs, evaluator, teacher_acc, trainer.global_step, budget)


def summarise(inputs: RunInputs, evaluator: PeriodicEval, teacher_acc: dict[str, float], steps: int, budget: dict[str, int] | None = None) -> dict[str, Any]:
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
        "final": final, "normalised": score, "budget": budget or {"steps": steps},
    }
    table = domain_table({"student@0": student0, "teacher": teacher_acc, "final": final, "normalised": score}, inputs.domains)
    if evaluator.groups:
        summary["groups"] = group_metrics(final, student0, teacher_acc, evaluator.groups)
        summary["group_domains"] = evaluator.groups
        table += "\n\n" + group_table(summary["groups"], evaluator.groups)
    return write_summary(inputs.run_dir, summary, inputs.run_dir.name, table)
