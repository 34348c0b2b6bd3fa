"""Baselines that are not on-policy distillation: mixed SFT, off-policy SFT, parameter merging.

Each writes a run folder like ``fit`` does (``config.yaml``, ``eval.jsonl`` with the
step-0 and final evals, ``summary.json``, ``report.md``, ``final/``), so
``compare`` averages them with the distillation runs.  Budgets match a
distillation run of the same config: ``train.max_steps`` optimiser steps of
``data.batch_size x rollout.n`` sequences.

* ``mixed_sft``: SFT on the reference answers of the training prompts of all domains.
* ``offpolicy_sft``: each domain's teacher samples answers to the prompts the
  distillation run would draw (same steps, same shares); the student is finetuned
  on them (sequence-level distillation, off-policy).
* ``merge_avg``: the teachers' weights averaged.
* ``merge_task``: task arithmetic, ``student + baseline.merge_scale * sum_d (teacher_d - student)``.

(Cascade and single-teacher on-policy distillation are ``fit`` runs:
``--strategy cascade`` and ``single_teacher:<domain>`` in ``compare``.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.config import to_yaml
from mopdx.data import PromptPool, load_prompts
from mopdx.errors import ConfigError
from mopdx.evaluate import accuracy_by_domain
from mopdx.lab.build import resolve_ref
from mopdx.lab.domains import Example
from mopdx.lab.sft import SFTSpec, train_sft
from mopdx.metrics import domain_table, normalised_scores
from mopdx.models import check_model_folder, load_model, load_tokenizer
from mopdx.text import encode_prompt

BASELINES = ("mixed_sft", "offpolicy_sft", "merge_avg", "merge_task")


def _teacher_rollouts(cfg: DictConfig, train: list[Example], teachers: dict[str, torch.nn.Module], tok: Any) -> list[Example]:
    """Teacher-sampled answers to the prompts a distillation run of ``cfg`` would draw."""
    pool = PromptPool(train, seed=cfg.train.seed)
    domains = sorted({e.domain for e in train})
    ratios = dict(cfg.data.domain_ratios) or {d: 1.0 for d in domains}
    prompts = [e for step in range(cfg.train.max_steps) for e in pool.draw(step, ratios, cfg.data.batch_size)]
    out: list[Example] = []
    for d, model in teachers.items():
        mine = [e for e in prompts if e.domain == d]
        backend = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id)
        for lo in range(0, len(mine), 512):
            chunk = mine[lo : lo + 512]
            r = backend.generate([encode_prompt(tok, e.prompt) for e in chunk], [d] * len(chunk), n=cfg.rollout.n,
                                 max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.baseline.offpolicy_temperature, seed=cfg.train.seed + lo)
            texts = tok.batch_decode(r.completion_ids, skip_special_tokens=True)
            out += [Example(d, chunk[int(p)].prompt, t.strip()) for p, t in zip(r.prompt_index.tolist(), texts)]
    return out


def _merge(student: torch.nn.Module, teachers: list[torch.nn.Module], method: str, scale: float) -> None:
    base = {k: v.clone() for k, v in student.state_dict().items()}
    states = [t.state_dict() for t in teachers]
    merged = {}
    for k, v in base.items():
        if not v.is_floating_point():
            merged[k] = v
        elif method == "merge_avg":
            merged[k] = torch.stack([s[k] for s in states]).mean(0)
        else:
            merged[k] = v + scale * sum(s[k] - v for s in states)
    student.load_state_dict(merged)


def run_baseline(method: str, cfg: DictConfig, run_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Build the ``method`` model from ``cfg``'s student and teachers, evaluate, summarise."""
    from mopdx.fit import _teacher_accuracy, eval_settings, take_per_domain

    if method not in BASELINES:
        raise ConfigError(f"unknown baseline {method!r}; known: {', '.join(BASELINES)}")
    train = load_prompts(resolve_ref(cfg.data.train, cfg.lab, progress=progress))
    domains = sorted({e.domain for e in train})
    student_dir = check_model_folder(resolve_ref(cfg.model.student, cfg.lab, progress=progress), "student")
    teacher_dirs = {d: str(check_model_folder(resolve_ref(cfg.model.teachers[d], cfg.lab, progress=progress), f"teacher {d!r}")) for d in domains}
    evals = take_per_domain(load_prompts(resolve_ref(cfg.data.eval, cfg.lab, progress=progress)), cfg.data.eval_per_domain)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    tok = load_tokenizer(student_dir)
    student = load_model(student_dir, cfg.model.dtype)
    settings = eval_settings(cfg)

    def acc_of(model: torch.nn.Module) -> dict[str, float]:
        return accuracy_by_domain(HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id), tok, evals, settings)

    # each teacher loaded once: for its accuracy (fit's helper: own domain only, cached in the run), rollouts and merges
    teachers = {d: HFTeacherScorer(load_model(p, cfg.model.dtype)) for d, p in teacher_dirs.items()}
    teacher_acc = _teacher_accuracy(cfg, teachers, tok, evals, run_dir)
    teacher_models = {d: t.model for d, t in teachers.items()}
    student0 = acc_of(student)
    torch.manual_seed(cfg.train.seed)
    spec = SFTSpec(steps=cfg.train.max_steps, batch_size=cfg.data.batch_size * cfg.rollout.n, lr=cfg.optim.lr, seed=cfg.train.seed)
    steps = cfg.train.max_steps
    if method == "mixed_sft":
        train_sft(student, tok, train, spec, desc="mixed SFT")
    elif method == "offpolicy_sft":
        train_sft(student, tok, _teacher_rollouts(cfg, train, teacher_models, tok), spec, desc="off-policy SFT")
    else:
        _merge(student, list(teacher_models.values()), method, cfg.baseline.merge_scale)
        steps = 0
    final = acc_of(student)
    with (run_dir / "eval.jsonl").open("w") as fh:
        for step, acc in ((0, student0), (steps, final)):
            fh.write(json.dumps({"step": step, "acc": acc, "score": normalised_scores(acc, student0, teacher_acc)}) + "\n")
    student.save_pretrained(run_dir / "final", safe_serialization=True)
    tok.save_pretrained(run_dir / "final")
    score = normalised_scores(final, student0, teacher_acc)
    summary = {"run_dir": str(run_dir), "steps": steps, "method": method, "student0": student0, "teacher": teacher_acc, "final": final, "normalised": score}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    table = domain_table({"student@0": student0, "teacher": teacher_acc, "final": final, "normalised": score}, domains)
    (run_dir / "report.md").write_text(f"# {run_dir.name} ({method})\n\n{table}\n")
    summary["table"] = table
    return summary
