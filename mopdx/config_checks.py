"""Value checks of a merged run config that a field's own rule cannot make, one error line each.

Each field's allowed values are the rule of its ``setting`` in the schema
(``mopdx.config``, ``mopdx.rules``); ``validate`` walks those fields and checks
each against its rule, then the rules that join several fields (rewards need
groups, several processes need keyed sampling, a logger needs its package),
the references (a model folder, a ``lab:`` artifact) and the data sources.
Strategies (``check_config``) and plug-ins (``check_config`` hook,
``mopdx.plugins``) use the same helpers, so every message reads
``<key>=<value> is invalid; allowed: <what>``.  ``tests/unit/test_config_values.py``
walks every leaf of the resolved config and fails when a field lacks a test
entry, so a new field gets its rule and its test together.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mopdx import plugins
from mopdx.errors import ConfigError
from mopdx.rules import check, fail, field_rules, nonempty, number, one_of, show
from mopdx.teacher_config import check_teachers, panel_of

# What pytorch_lightning 2.x's Trainer accepts for ``precision`` as a string
# (lightning_fabric/plugins/precision/precision.py: _PRECISION_INPUT_STR, its aliases
# and the integer forms, which reach us as strings).  Hard-coded: importing Lightning
# costs seconds, and validation must answer before anything heavy is imported.
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true", "64",
              "transformer-engine", "transformer-engine-float16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16", "float16")  # mopdx.models.DTYPES (importing it would load transformers)
# train.loggers: name -> the package it needs besides Lightning's own (mopdx/run/loggers.py builds them)
LOGGER_PACKAGES: dict[str, str | None] = {"csv": None, "tensorboard": None, "wandb": "wandb", "mlflow": "mlflow"}


def check_names(key: str, names: Iterable[str], known: Iterable[str] | None = None, *, source: str = "",
                allow_empty: bool = False) -> None:
    """A list of distinct names, each among ``known`` (described as ``source``) when given."""
    names, pool = list(names), None if known is None else list(known)
    allowed = "a list of distinct names" if allow_empty else "a non-empty list of distinct names"
    if pool is not None:
        allowed += f" from {', '.join(map(str, pool)) or '(none)'}" + (f" ({source})" if source else "")
    bad = (not names and not allow_empty) or len(set(names)) != len(names) \
        or any(not isinstance(n, str) or not n for n in names) or (pool is not None and any(n not in pool for n in names))
    if bad:
        raise fail(key, names, allowed)


def check_ref(key: str, value: Any, cfg: DictConfig, what: str) -> None:
    """A model folder / prompt file / plug-in reference: non-empty, and known to its plug-in."""
    check(key, value, nonempty(what))
    plugins.check_ref(str(value), cfg, key)




def _check_advantage(cfg: DictConfig) -> None:
    """The PG form's two advantage sources: at least one on, rewards only with groups to normalise in."""
    loss = cfg.loss
    if loss.reward_weight > 0 and loss.kind != "pg":
        raise fail("loss.reward_weight", loss.reward_weight, f"0 with loss.kind={loss.kind} (verifier rewards enter the PG form only: loss.kind=pg)")
    if loss.kind == "pg" and loss.teacher_weight == 0 and loss.reward_weight == 0:
        raise fail("loss.teacher_weight", loss.teacher_weight, "> 0, or loss.reward_weight > 0 (with both 0 the PG loss has no signal)")
    if loss.reward_weight > 0 and cfg.rollout.n < 2:
        raise fail("rollout.n", cfg.rollout.n, "at least 2 with loss.reward_weight > 0 (GRPO normalises rewards within each prompt's group of rollout.n samples)")


def _check_teacher_temperature(cfg: DictConfig) -> None:
    """vLLM's prompt log-probs are not temperature-scaled, and a top-k cannot be renormalised at
    another temperature: only an in-process transformers teacher can apply one."""
    t = float(cfg.loss.teacher_temperature)
    if t == 1.0:
        return
    served = [d for d, ref in cfg.model.teachers.items() if plugins.is_remote(ref)]
    if served or cfg.model.teacher_backend == "vllm":
        who = f"served teacher(s) {served}" if served else "model.teacher_backend=vllm"
        raise fail("loss.teacher_temperature", t, f"1 with {who}: vLLM returns log-probs at temperature 1 and its top-k cannot be rescaled; "
                   "use model.teacher_backend=hf with local teacher folders to score at another temperature")


def _check_rollout_backend(cfg: DictConfig) -> None:
    """What continuous batching cannot do, named before any engine is built: it draws with one
    seed per call, so per-rollout keyed seeds (and the several processes that need them) are out."""
    if cfg.rollout.backend != "hf_cb":
        return
    world = int(cfg.train.devices) * int(cfg.train.num_nodes)
    if world > 1:
        raise fail("rollout.backend", "hf_cb", f"hf or vllm with {world} processes (continuous batching draws with one seed per call, "
                   "so a rollout would depend on which process samples it)")
    for key in ("rollout.sampler", "eval.sampler"):
        section, name = key.split(".")
        if cfg[section][name] == "keyed" and not (section == "eval" and cfg.eval.greedy):
            raise fail(key, "keyed", "generate with rollout.backend=hf_cb (continuous batching draws with one seed per call, not per "
                       "rollout); keyed sampling needs rollout.backend=hf or vllm")


def _check_processes(cfg: DictConfig) -> None:
    """Several processes give the update of one only when nothing depends on how the batch is cut."""
    t = cfg.train
    if t.parallel == "fsdp":
        import torch

        if t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available()):
            raise fail("train.parallel", "fsdp", "ddp on this machine: Lightning's FSDP runs on CUDA GPUs only (train.accelerator=gpu)")
    world = int(t.devices) * int(t.num_nodes)
    if world == 1:
        return
    if t.parallel == "auto":
        raise fail("train.parallel", t.parallel, f"ddp or fsdp with train.devices x train.num_nodes = {world} processes")
    for key in ("rollout.sampler", "eval.sampler"):
        section, name = key.split(".")
        if cfg[section][name] != "keyed":
            raise fail(key, cfg[section][name], f"keyed with {world} processes (each rollout must not depend on which process samples it)")
    if cfg.loss.adv_baseline == "mean":
        raise fail("loss.adv_baseline", "mean", f"none with {world} processes (the batch-mean baseline is not gathered across processes)")
    together = "RANK" in os.environ or "SLURM_PROCID" in os.environ  # torchrun / SLURM start every process at once
    if (t.num_nodes > 1 or together) and not cfg.run.name:
        why = "train.num_nodes > 1" if t.num_nodes > 1 else "processes started together (torchrun, SLURM)"
        raise fail("run.name", None, f"a name with {why}, so that every process writes to the same run folder")


def _check_loggers(cfg: DictConfig) -> None:
    """Known, distinct logger names, each with its package installed: a missing ``wandb`` would
    otherwise fail inside Lightning, after the models are loaded."""
    names = list(cfg.train.loggers)
    check_names("train.loggers", names, LOGGER_PACKAGES, source="[] = none", allow_empty=True)
    for name in names:
        package = LOGGER_PACKAGES[name]
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.loggers={show(names)}: {name} needs the {package} package, which is not installed: "
                              f"pip install {package} (or drop {name} from train.loggers)")


def _check_data(cfg: DictConfig) -> None:
    """Data sources, field map, stop strings and the verifier table: shape, names and libraries, nothing read."""
    from mopdx.data_sources import DEFAULT_FIELDS, sources
    from mopdx.errors import DataError
    from mopdx.verifiers.table import build_table

    for key, what in (("data.train", "a prompt file (.jsonl, .parquet), a datasets folder, a list of them, or lab:train"),
                      ("data.eval", "a prompt file with answers, a datasets folder, a list of them, or lab:eval")):
        value = cfg.data[key.split(".")[1]]
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value)
        elif not isinstance(value, (str, DictConfig)):
            raise fail(key, value, what)
        try:
            srcs = sources(value, key)
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        for src in srcs:
            check_ref(src.where, src.path, cfg, what)
    unknown = sorted(set(cfg.data.fields) - set(DEFAULT_FIELDS))
    if unknown:
        raise fail(f"data.fields.{unknown[0]}", cfg.data.fields[unknown[0]], f"a field map of {', '.join(DEFAULT_FIELDS)} to column names")
    for role, column in cfg.data.fields.items():
        check(f"data.fields.{role}", column, nonempty("a column name"))
    for i, stop in enumerate(cfg.data.stop):
        check(f"data.stop[{i}]", stop, nonempty("a non-empty stop string"))
    build_table(OmegaConf.to_container(cfg.data.verifiers, resolve=True))  # type: ignore[arg-type]


def validate(cfg: DictConfig, loop: str = "distill") -> None:
    """Value checks that types alone cannot express (the strategy node checks itself).
    ``loop``: the strategy's loop; co-distillation trains its peers and has no student or
    teachers, so ``model.student`` / ``model.teachers`` are checked only for ``distill``."""
    # Plug-in nodes (``lab``) first: framework fields may interpolate them (base.yaml's
    # ``rollout.max_new_tokens: ${lab.max_new_tokens}``), and ``model.teachers."*"`` expands over
    # ``lab.domains``, so a bad lab value must be named as itself, not as its echo.
    plugins.check_config(cfg)
    for key, value, rule in field_rules(cfg):  # each field's rule, from its setting in the schema (mopdx.config)
        check(key, value, rule)
    from mopdx.losses import LOSS_KINDS  # the one LOSSES table; it imports torch, so after every torch-free check

    check("loss.kind", cfg.loss.kind, one_of(*LOSS_KINDS))
    _check_advantage(cfg)
    _check_rollout_backend(cfg)
    _check_processes(cfg)
    _check_teacher_temperature(cfg)
    _check_loggers(cfg)
    teachers = cfg.model.teachers
    rl_only = cfg.loss.kind == "pg" and cfg.loss.teacher_weight == 0
    ratios = cfg.data.domain_ratios
    for d, r in ratios.items():
        check(f"data.domain_ratios.{d}", r, number(0))
        if d not in teachers and not rl_only and r > 0 and loop == "distill":  # a zero share switches a merged-in domain off
            raise fail(f"data.domain_ratios.{d}", r, f"shares of domains with a model.teachers entry ({', '.join(teachers)})")
    if ratios and not any(r > 0 for r in ratios.values()):
        raise fail("data.domain_ratios", ratios, "shares >= 0 with at least one > 0, or {} (uniform)")
    for g, ds in cfg.eval.groups.items():
        check_names(f"eval.groups.{g}", ds)
    _check_data(cfg)  # before the models: data of one's own with a bad field says so, not "no teachers"
    if loop == "distill":
        check_ref("model.student", cfg.model.student, cfg, "a model folder or a lab:<artifact> reference")
        if len(teachers) == 0 and not rl_only:
            raise ConfigError("model.teachers is empty: map each domain to a teacher folder (model.teachers.<domain>=<folder>)")
    for d, ref in teachers.items():
        panel = panel_of(ref)
        for key, r in ({f"model.teachers.{d}": ref} if panel is None else {f"model.teachers.{d}.{n}": v for n, v in panel.items()}).items():
            check_ref(key, r, cfg, "a model folder, a server URL or a lab:<artifact> reference")
    check_teachers(cfg)
