"""Value checks of a merged run config: each field's allowed values, one error line each.

Why a module of rules: the dataclass schema catches typos and wrong types, but
not values the types admit and the run cannot use (``rollout.top_k=-1``,
``train.precision=bogus``).  Those used to pass silently or fail minutes later,
inside a lab build or Lightning, with a traceback.  Here every framework field
has a rule; strategies (``check_config``) and plug-ins (``check_config`` hook,
``mopdx.plugins``) use the same helpers, so every message reads
``<key>=<value> is invalid; allowed: <what>``.  ``tests/unit/test_config_values.py``
walks every leaf of the resolved config and fails when a field lacks a test
entry, so a new field gets its rule and its test together.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mopdx import plugins
from mopdx.errors import ConfigError

# What pytorch_lightning 2.x's Trainer accepts for ``precision`` as a string
# (lightning_fabric/plugins/precision/precision.py: _PRECISION_INPUT_STR, its aliases
# and the integer forms, which reach us as strings).  Hard-coded: importing Lightning
# costs seconds, and validation must answer before anything heavy is imported.
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true", "64",
              "transformer-engine", "transformer-engine-float16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16", "float16")  # mopdx.models.DTYPES (importing it would load transformers)
SEED_MAX = 2**32 - 1  # numpy's seed range, which Lightning's seed_everything enforces
# train.loggers: name -> the package it needs besides Lightning's own (mopdx/run/loggers.py builds them)
LOGGER_PACKAGES: dict[str, str | None] = {"csv": None, "tensorboard": None, "wandb": "wandb", "mlflow": "mlflow"}


@dataclass(frozen=True)
class Rule:
    """A test on one value and the words that say what passes it."""

    ok: Callable[[Any], bool]
    allowed: str


def show(value: Any) -> str:
    """A value as the user would type it after ``key=`` (one line)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value) if value == "" or "\n" in value else value
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={show(value)} is invalid; allowed: {allowed}")


def check(key: str, value: Any, rule: Rule) -> None:
    if not rule.ok(value):
        raise fail(key, value, rule.allowed)


def check_fields(node: DictConfig, prefix: str, rules: Mapping[str, Rule]) -> None:
    """Apply ``rules`` (field name -> rule) to the fields of ``node`` (keys shown as ``prefix.field``)."""
    for name, rule in rules.items():
        check(f"{prefix}.{name}", node[name], rule)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return ""


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False, null: str | None = None, note: str = "") -> Rule:
    """A finite number within bounds; ``null`` (its meaning) admits None, ``note`` explains a value."""
    what = ("an integer" if integer else "a finite number") if lo is None and hi is None else ("an integer" if integer else "a number")

    def ok(v: Any) -> bool:
        if v is None:
            return null is not None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return ((lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))

    allowed = " ".join(x for x in (what, _interval(lo, hi, lo_open, hi_open)) if x)
    allowed += f" ({note})" if note else ""
    allowed += f", or null ({null})" if null else ""
    return Rule(ok, allowed)


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(choices))


def nonempty(what: str = "a non-empty string") -> Rule:
    return Rule(lambda v: isinstance(v, str) and v.strip() != "", what)


def contains(placeholder: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and placeholder in v, f"a string containing {placeholder}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
SEED = number(0, SEED_MAX, integer=True)
POSITIVE_INT = number(1, integer=True)
PROBABILITY_OPEN = number(0, 1, lo_open=True, hi_open=True)


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


FIELDS: dict[str, Rule] = {
    "model.dtype": one_of(*DTYPES),
    "model.initial_kl_warn": number(0),
    "model.teacher_backend": one_of("hf", "vllm"),
    "data.batch_size": POSITIVE_INT,
    "data.eval_per_domain": POSITIVE_INT,
    "data.max_prompt_tokens": number(0, integer=True, note="0 = the student's context length minus rollout.max_new_tokens"),
    "data.long_prompts": one_of("drop", "refuse"),
    "rollout.backend": one_of("hf", "vllm"),
    "rollout.n": POSITIVE_INT,
    "rollout.max_new_tokens": POSITIVE_INT,
    "rollout.temperature": number(0, lo_open=True),
    "rollout.top_p": number(0, 1, lo_open=True, note="1 = off"),
    "rollout.top_k": number(0, integer=True, note="0 = off"),
    "rollout.sync_every": POSITIVE_INT,
    "rollout.overlap_chunk": number(0, integer=True, note="0 = off"),
    "vllm.student_gpu_memory_utilization": number(0, 1, lo_open=True),
    "vllm.teacher_gpu_memory_utilization": number(0, 1, lo_open=True),
    "vllm.max_model_len": number(0, integer=True, note="0 = from the model config"),
    "vllm.enforce_eager": BOOL,
    "vllm.cpu_kvcache_gib": POSITIVE_INT,
    "vllm.sleep_teachers": BOOL,
    "remote.timeout_s": number(0, lo_open=True),
    "remote.retries": POSITIVE_INT,
    "remote.backoff_s": number(0),
    "loss.adv_clip": number(0, lo_open=True),
    "loss.adv_baseline": one_of("none", "mean"),
    "loss.topk": POSITIVE_INT,
    "loss.topk_tail": BOOL,
    "loss.jsd_beta": PROBABILITY_OPEN,
    "loss.is_clip": number(0, lo_open=True, null="off"),
    "loss.teacher_temperature": number(0, lo_open=True),
    "loss.average": one_of("sequence", "token"),
    "loss.teacher_weight": number(0),
    "loss.reward_weight": number(0),
    "loss.chunk_tokens": number(0, integer=True),
    "remote.batch_size": POSITIVE_INT,
    "remote.in_flight": POSITIVE_INT,
    "rollout.sampler": one_of("generate", "keyed"),
    "eval.sampler": one_of("generate", "keyed"),
    "loss.reward_std": BOOL,
    "loss.reward_sign": one_of("both", "negative", "positive"),
    "optim.lr": number(0, lo_open=True),
    "optim.weight_decay": number(0),
    "optim.warmup_steps": number(0, integer=True),
    "optim.schedule": one_of("constant", "cosine"),
    "optim.min_lr_ratio": number(0, 1),
    "optim.grad_clip": number(0, note="0 = off"),
    "optim.betas": Rule(lambda v: len(v) == 2 and all(number(0, 1, hi_open=True).ok(b) for b in v),
                        "two numbers in [0, 1), e.g. [0.9,0.98]"),
    "train.max_steps": POSITIVE_INT,
    "train.seed": SEED,
    "train.eval_every": number(0, integer=True, note="0 = only at start and end"),
    "train.ckpt_every": number(0, integer=True, note="0 = only the last checkpoint"),
    "train.log_every": POSITIVE_INT,
    "train.accelerator": one_of(*ACCELERATORS),
    "train.precision": one_of(*PRECISIONS),
    "train.threads": number(0, integer=True, note="0 = leave as is"),
    "train.keep_checkpoints": BOOL,
    "train.devices": POSITIVE_INT,
    "train.num_nodes": POSITIVE_INT,
    "train.parallel": one_of("auto", "ddp", "fsdp"),
    "train.wandb_project": nonempty("a W&B project name"),
    "train.wandb_offline": BOOL,
    "train.mlflow_tracking_uri": Rule(lambda v: isinstance(v, str) and v.strip() == v,
                                      "a tracking URI (http://host:5000, file:/path), or '' (a file store in the run folder's mlruns/)"),
    "train.mlflow_experiment": nonempty("an MLflow experiment name"),
    "eval.max_new_tokens": POSITIVE_INT,
    "eval.batch_size": POSITIVE_INT,
    "eval.greedy": BOOL,
    "eval.samples": POSITIVE_INT,
    "eval.temperature": number(0, lo_open=True),
    "eval.seed": SEED,
    "baseline.merge_scale": number(),
    "baseline.offpolicy_verified_only": BOOL,
    "baseline.rl_group": number(2, integer=True, note="GRPO needs at least 2 samples per prompt"),
    "baseline.offpolicy_temperature": number(0, lo_open=True),
    "run.out_dir": nonempty("a non-empty folder path"),
    "run.name": Rule(lambda v: v is None or (isinstance(v, str) and not any(c in v for c in "/\\") and v not in (".", "..")),
                     "a folder name without / or \\, or null (strategy name and time)"),
}


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
    if t.num_nodes > 1 and not cfg.run.name:
        raise fail("run.name", None, "a name with train.num_nodes > 1, so that every node writes to the same run folder")


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
    from mopdx.losses import LOSS_KINDS  # the one LOSSES table (imports torch: here, not at module load)

    # Plug-in nodes (``lab``) first: framework fields may interpolate them (base.yaml's
    # ``rollout.max_new_tokens: ${lab.max_new_tokens}``), and ``model.teachers."*"`` expands over
    # ``lab.domains``, so a bad lab value must be named as itself, not as its echo.
    plugins.check_config(cfg)
    check("loss.kind", cfg.loss.kind, one_of(*LOSS_KINDS))
    for key, rule in FIELDS.items():
        section, name = key.split(".")
        check(key, cfg[section][name], rule)
    _check_advantage(cfg)
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
        check_ref(f"model.teachers.{d}", ref, cfg, "a model folder, a server URL or a lab:<artifact> reference")
