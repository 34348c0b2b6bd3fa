"""Baselines that are not on-policy distillation: mixed SFT, off-policy SFT, parameter merging.

Each writes a run folder like ``fit`` does (``config.yaml``, ``eval.jsonl`` with the
step-0 and final evals, ``summary.json``, ``report.md``, ``final/``), so
``compare`` averages them with the distillation runs.  Budgets match a
distillation run of the same config: ``train.max_steps`` optimiser steps of
``data.batch_size x rollout.n`` sequences.

* ``mixed_sft``: SFT on the reference answers of the training prompts of all domains.
* ``offpolicy_sft``: each domain's teacher samples answers to the prompts the
  distillation run would draw (same steps, same shares); the student is finetuned
  on them (sequence-level distillation, off-policy).  With
  ``baseline.offpolicy_verified_only`` only the samples its verifier accepts are kept
  (rejection sampling), so the student never imitates a teacher's wrong answer.
* ``merge_avg``: the teachers' weights averaged.
* ``merge_task``: task arithmetic, ``student + baseline.merge_scale * sum_d (teacher_d - student)``.

(Mix-RL, Cascade RL, cascade and single-teacher on-policy distillation are ``fit``
runs: ``mix_rl``, ``cascade_rl``, ``cascade`` and ``single_teacher:<domain>`` in ``compare``.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mopdx.backends.base import Sampling
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.data import Example, PromptPool
from mopdx.distill.rewards import verifier_rewards
from mopdx.errors import ConfigError, TrainingError
from mopdx.run.assembly import distill_refs, prepare, save_final, write_summary
from mopdx.run.evaluation import accuracy_by_domain
from mopdx.run.fit import teacher_accuracy
from mopdx.scores import normalised_scores
from mopdx.sft import SFTSpec, train_sft
from mopdx.tables import domain_table
from mopdx.stops import cut_at_stops
from mopdx.text import encode_prompt

BASELINES = ("mixed_sft", "offpolicy_sft", "merge_avg", "merge_task")


def _teacher_rollouts(cfg: DictConfig, train: list[Example], teachers: dict[str, torch.nn.Module], tok: Any) -> list[Example]:
    """Teacher-sampled answers to the prompts a distillation run of ``cfg`` would draw
    (only the verified ones with ``baseline.offpolicy_verified_only``)."""
    pool = PromptPool(train, seed=cfg.train.seed)
    domains = sorted({e.domain for e in train})
    ratios = dict(cfg.data.domain_ratios) or {d: 1.0 for d in domains}
    prompts = [e for step in range(cfg.train.max_steps) for e in pool.draw(step, ratios, cfg.data.batch_size)]
    sampling = Sampling(n=cfg.rollout.n, max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.baseline.offpolicy_temperature)
    out: list[Example] = []
    for d, model in teachers.items():
        mine = [e for e in prompts if e.domain == d]
        backend = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id)
        for lo in range(0, len(mine), 512):
            chunk = mine[lo : lo + 512]
            r = cut_at_stops(backend.generate([encode_prompt(tok, e) for e in chunk], [d] * len(chunk), sampling.with_seed(cfg.train.seed + lo)), tok)
            texts = tok.batch_decode(r.completion_ids, skip_special_tokens=True)
            verified = verifier_rewards(tok, r, chunk).tolist() if cfg.baseline.offpolicy_verified_only else [1.0] * len(texts)
            out += [Example(d, chunk[int(p)].prompt, t.strip()) for p, t, ok in zip(r.prompt_index.tolist(), texts, verified) if ok == 1.0]
    if not out:
        raise TrainingError("off-policy SFT: no teacher sample passed its verifier (baseline.offpolicy_verified_only=true); set it to false")
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
    """Build the ``method`` model from ``cfg``'s student and teachers, evaluate, summarise.

    ``merge_task:<scale>`` is task arithmetic at that scale (else ``baseline.merge_scale``)."""
    method, _, arg = method.partition(":")
    if method not in BASELINES or (arg and method != "merge_task"):
        raise ConfigError(f"unknown baseline {method + (':' + arg if arg else '')!r}; known: {', '.join(BASELINES)}, merge_task:<scale>")
    try:
        scale = float(arg) if arg else float(cfg.baseline.merge_scale)
    except ValueError:
        raise ConfigError(f"baseline merge_task:{arg}: the scale must be a number, e.g. merge_task:0.5") from None
    inputs = prepare(cfg, progress, distill_refs)
    with inputs.run_folder(run_dir=run_dir) as run_dir:
        tok, evals = inputs.tokenizer, inputs.evals
        student = inputs.load("student")

        def acc_of(model: torch.nn.Module) -> dict[str, float]:
            return accuracy_by_domain(HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id), tok, evals, cfg.eval)

        # each teacher loaded once: for its accuracy (own domain only, cached in the run), rollouts and merges
        panels = [d for d in inputs.domains if f"teacher {d!r}" not in inputs.models]
        if panels:
            raise ConfigError(f"baselines take one teacher per domain; domain(s) {panels} have a panel (model.teachers.<d>.<name>): name one folder each")
        refs = {d: inputs.models[f"teacher {d!r}"] for d in inputs.domains}
        teachers = {d: HFTeacherScorer(inputs.load(f"teacher {d!r}")) for d in inputs.domains}
        teacher_acc = teacher_accuracy(cfg, refs, tok, evals, run_dir, teachers)
        teacher_models = {d: t.model for d, t in teachers.items()}
        student0 = acc_of(student)
        torch.manual_seed(cfg.train.seed)
        spec = SFTSpec(steps=cfg.train.max_steps, batch_size=cfg.data.batch_size * cfg.rollout.n, lr=cfg.optim.lr, seed=cfg.train.seed)
        steps = cfg.train.max_steps
        budget = {"steps": steps, "sequences_per_step": spec.batch_size, "sampled_tokens": 0}
        if method == "mixed_sft":
            train_sft(student, tok, inputs.train, spec, desc="mixed SFT")
        elif method == "offpolicy_sft":
            data = _teacher_rollouts(cfg, inputs.train, teacher_models, tok)
            budget["sampled_tokens"] = sum(len(tok(e.answer)["input_ids"]) + 1 for e in data)  # + EOS; the teachers' samples
            train_sft(student, tok, data, spec, desc="off-policy SFT")
        else:
            _merge(student, list(teacher_models.values()), method, scale)
            steps = 0
            budget = {"steps": 0, "sequences_per_step": 0, "sampled_tokens": 0}
        final = acc_of(student)
        with (run_dir / "eval.jsonl").open("w") as fh:
            for step, acc in ((0, student0), (steps, final)):
                fh.write(json.dumps({"step": step, "acc": acc, "score": normalised_scores(acc, student0, teacher_acc)}) + "\n")
        save_final(student, tok, run_dir / "final")
        score = normalised_scores(final, student0, teacher_acc)
        summary = {"run_dir": str(run_dir), "steps": steps, "eval_step": steps, "method": method, "student0": student0, "teacher": teacher_acc,
                   "final": final, "normalised": score, "budget": budget}
        table = domain_table({"student@0": student0, "teacher": teacher_acc, "final": final, "normalised": score}, inputs.domains)
        return write_summary(run_dir, summary, f"{run_dir.name} ({method})", table)
