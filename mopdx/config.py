"""Typed configuration: dataclass schemas merged with OmegaConf.

Merge order (later wins): dataclass defaults -> ``configs/base.yaml`` ->
``configs/strategy/<name>.yaml`` -> a plug-in's default run (the lab's, only when
no file or override names training data of the user's own: ``plugins.defaults_apply``)
-> each ``--config`` file -> ``key=value`` overrides.  The schema is in struct mode, so a misspelled key or a wrong
type fails here, naming the key, before any model is loaded.  Each strategy
contributes the schema of the ``strategy`` node through its ``Config``.
Values the types admit but a run cannot use are rejected right after the
merge (``mopdx.config_checks.validate``, then the strategy's ``check_config``),
so every bad value costs seconds, never a lab build or a model load.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mopdx import plugins
from mopdx.codistill.settings import CoDistillConfig, check_codistill_values
from mopdx.envs.settings import EnvConfig, check_env
from mopdx.config_checks import ACCELERATORS, DTYPES, PRECISIONS, validate
from mopdx.errors import ConfigError
from mopdx.loss_config import LossConfig
from mopdx.paths import configs_dir
from mopdx.rules import BOOL, POSITIVE_INT, SEED, Rule, nonempty, number, one_of, setting
from mopdx.strategy import StrategyConfig, get_strategy_class
from mopdx.teacher_config import CombineConfig

# Each field's type and default are written here, and its allowed values as the rule of its
# ``setting`` (mopdx.rules): the checks, ``config keys`` and the loss spec are derived from them.
# Cross-field rules (a reward weight needs groups, a backend needs its package) stay in
# mopdx.config_checks.validate.
BETAS = Rule(lambda v: len(v) == 2 and all(number(0, 1, hi_open=True).ok(b) for b in v), "two numbers in [0, 1), e.g. [0.9,0.98]")
TRACKING_URI = Rule(lambda v: isinstance(v, str) and v.strip() == v,
                    "a tracking URI (http://host:5000, file:/path), or '' (a file store in the run folder's mlruns/)")
FOLDER_NAME = Rule(lambda v: v is None or (isinstance(v, str) and not any(c in v for c in "/\\") and v not in (".", "..")),
                   "a folder name without / or \\, or null (strategy name and time)")


@dataclass
class ModelConfig:
    # A model folder, or a plug-in reference such as ``lab:<artifact>`` (mopdx_lab/configs/run.yaml).
    student: str = ""
    # domain -> folder, URL or reference; or name -> reference: a panel of teachers on every rollout (mopdx/teacher_config.py)
    teachers: dict[str, Any] = field(default_factory=dict)
    combine: dict[str, CombineConfig] = field(default_factory=dict)  # domain -> how its panel is combined (rule, weights)
    cross_tokenizer: bool = setting(False, BOOL)  # allow local teachers whose tokenizer differs (PG loss only)
    dtype: str = setting("float32", one_of(*DTYPES))
    initial_kl_warn: float = setting(0.1, number(0))  # warn when a teacher's initial per-token KL exceeds this
    teacher_backend: str = setting("hf", one_of("hf", "vllm"))  # hf | vllm: how local teacher folders are prefilled


@dataclass
class DataConfig:
    # A source or a list of them (mopdx/data_sources.py): a .jsonl / .json / .parquet file, a
    # datasets folder, a plug-in reference (``lab:train``), or {path, domain, fields, system, split}.
    train: Any = ""
    eval: Any = ""
    # Field map for every source: {prompt: question, answer: final_answer, domain: source, messages: ..., system: ...}
    fields: dict[str, str] = field(default_factory=dict)
    # domain -> verifier: math | numeric | choice | exact | regex | code | package.module:attr, or
    # {name: ..., <option>: ...} (mopdx/verifiers/table.py). Unlisted domains: a plug-in's, else exact.
    verifiers: dict[str, Any] = field(default_factory=dict)
    system_prompts: dict[str, str] = field(default_factory=dict)  # domain (or "*") -> system prompt, for rows without one
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the chat template, e.g. {enable_thinking: false}
    stop: list[str] = field(default_factory=list)  # completions end at the first of these (kept in the text)
    # Prompts longer than this many tokens (chat template included) are dropped with a count
    # (long_prompts=drop) or refuse the run (refuse), before any model loads.  0: the student's
    # context length (config.json max_position_embeddings) minus rollout.max_new_tokens.
    max_prompt_tokens: int = setting(0, number(0, integer=True, note="0 = the student's context length minus rollout.max_new_tokens"))
    long_prompts: str = setting("drop", one_of("drop", "refuse"))
    domain_ratios: dict[str, float] = field(default_factory=dict)  # empty: uniform over domains
    batch_size: int = setting(64, POSITIVE_INT)  # prompts per training step
    eval_per_domain: int = setting(200, POSITIVE_INT)


@dataclass
class RolloutConfig:
    # hf: transformers' generate on the trained module (the reference); hf_cb: transformers'
    # continuous batching on the same module (mopdx/backends/hf_cb.py); vllm: an in-process engine
    backend: str = setting("hf", one_of("hf", "hf_cb", "vllm"))
    n: int = setting(1, POSITIVE_INT)  # rollouts per prompt
    max_new_tokens: int = setting(16, POSITIVE_INT)
    temperature: float = setting(1.0, number(0, lo_open=True))
    top_p: float = setting(1.0, number(0, 1, lo_open=True, note="1 = off"))
    top_k: int = setting(0, number(0, integer=True, note="0 = off"))
    sync_every: int = setting(1, POSITIVE_INT)  # optimiser steps between weight syncs to the rollout engine
    # Teacher prefill overlapped with sampling: the batch is sampled in chunks of this
    # many prompts and each chunk's prefill starts as soon as it is sampled. 0: off.
    overlap_chunk: int = setting(0, number(0, integer=True, note="0 = off"))
    # generate: the engine's own random stream (a rollout depends on the rest of its batch);
    # keyed: each rollout a function of (seed, step, prompt's place in the global batch),
    # so chunks and processes (train.devices > 1, which requires it) cut the batch freely
    # (mopdx/backends/keyed.py).  The lab's published figures were made with generate.
    sampler: str = setting("generate", one_of("generate", "keyed"))


@dataclass
class ContinuousBatchingConfig:
    """The cache of transformers' continuous batching (rollout.backend=hf_cb); 0 = sized by mopdx
    from each call's workload on CPU, by transformers from free memory on CUDA."""

    page_size: int = setting(0, number(0, integer=True, note="0 = 16 on CPU, transformers' 256 on CUDA"))
    num_blocks: int = setting(0, number(0, integer=True, note="0 = auto"))
    max_batch_tokens: int = setting(0, number(0, integer=True, note="0 = 512 on CPU, auto on CUDA"))
    cuda_graphs: bool = setting(True, BOOL)  # capture CUDA graphs at each call's warm-up (CUDA only)


@dataclass
class VLLMConfig:
    """Settings of the vLLM engines (rollout.backend=vllm, model.teacher_backend=vllm)."""

    student_gpu_memory_utilization: float = setting(0.3, number(0, 1, lo_open=True))  # share of the card for the student engine
    teacher_gpu_memory_utilization: float = setting(0.15, number(0, 1, lo_open=True))  # per local vLLM teacher
    max_model_len: int = setting(0, number(0, integer=True, note="0 = from the model config"))  # 0: from the model config
    # false (vLLM's default): torch.compile, and CUDA graphs on GPU. On CPU it costs
    # ~20 s more at engine start and makes rollouts 1.2-1.7x faster (benchmarks/throughput.py)
    enforce_eager: bool = setting(False, BOOL)
    cpu_kvcache_gib: int = setting(1, POSITIVE_INT)  # KV cache per engine on CPU builds
    sleep_teachers: bool = setting(False, BOOL)  # offload teacher weights between uses (CUDA)


@dataclass
class RemoteConfig:
    """Served teachers (``model.teachers.<d>=http://host:port``, several replicas comma-separated):
    vLLM's OpenAI-compatible server, started by ``mopdx serve-teacher``."""

    timeout_s: float = setting(60.0, number(0, lo_open=True))
    retries: int = setting(4, POSITIVE_INT)
    backoff_s: float = setting(0.5, number(0))  # doubles after each failed try
    batch_size: int = setting(32, POSITIVE_INT)  # sequences per request
    in_flight: int = setting(4, POSITIVE_INT)  # requests at once (spread over the replicas)


@dataclass
class OptimConfig:
    lr: float = setting(1e-4, number(0, lo_open=True))  # PG reverse KL became unstable at >= 3e-4 on the lab (see README)
    weight_decay: float = setting(0.0, number(0))
    warmup_steps: int = setting(10, number(0, integer=True))
    schedule: str = setting("constant", one_of("constant", "cosine"))  # constant | cosine (decays to min_lr_ratio * lr at train.max_steps)
    min_lr_ratio: float = setting(0.1, number(0, 1))
    grad_clip: float = setting(1.0, number(0, note="0 = off"))
    betas: list[float] = setting(rule=BETAS, factory=lambda: [0.9, 0.98])


@dataclass
class TrainConfig:
    max_steps: int = setting(300, POSITIVE_INT)
    seed: int = setting(0, SEED)
    eval_every: int = setting(100, number(0, integer=True, note="0 = only at start and end"))  # 0 disables periodic eval (start and end still run)
    ckpt_every: int = setting(50, number(0, integer=True, note="0 = only the last checkpoint"))
    log_every: int = setting(5, POSITIVE_INT)
    accelerator: str = setting("auto", one_of(*ACCELERATORS))
    # Processes (Lightning's own launcher, torchrun or SLURM): devices per node x num_nodes.
    # Each process samples its share of the global batch (data.batch_size), scores it with
    # its own teachers, and Lightning all-reduces the gradients (train.parallel: ddp, or fsdp for
    # students that do not fit one device; auto = single process).  Needs keyed sampling.
    devices: int = setting(1, POSITIVE_INT)
    num_nodes: int = setting(1, POSITIVE_INT)
    parallel: str = setting("auto", one_of("auto", "ddp", "fsdp"))  # Lightning's distributed strategy: auto | ddp | fsdp (was train.strategy)
    precision: str = setting("32-true", one_of(*PRECISIONS))
    threads: int = setting(0, number(0, integer=True, note="0 = leave as is"))  # torch CPU threads; 0 = leave as is
    keep_checkpoints: bool = setting(False, BOOL)  # keep every ckpt_every checkpoint (for analyses over training), not only the last
    # Lightning loggers (mopdx/run/loggers.py), any of csv (logs/), tensorboard (tb/), wandb
    # (pip install wandb), mlflow (pip install mlflow); [] logs nothing.  Training, resume,
    # compare and sweeps read eval.jsonl / summary.json, not these; benchmarks/opcod_diagnostics.py
    # and opcod_initial_kl.py (runs without summary.json's initial_loss) read logs/metrics.csv.
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    wandb_project: str = setting("mopdx", nonempty("a W&B project name"))
    wandb_offline: bool = setting(True, BOOL)  # offline: written to <run>/wandb/, `wandb sync` uploads it later
    mlflow_tracking_uri: str = setting("", TRACKING_URI)  # "": a file store in <run>/mlruns/
    mlflow_experiment: str = setting("mopdx", nonempty("an MLflow experiment name"))


@dataclass
class EvalConfig:
    """How models are evaluated (student, teachers and baselines alike)."""

    max_new_tokens: int = setting(16, POSITIVE_INT)
    batch_size: int = setting(256, POSITIVE_INT)  # sequences per generate call (prompts x samples)
    # Sampled evaluation (the papers'): avg@k, the mean verifier accuracy of ``samples``
    # completions per prompt at ``temperature`` (no top-p / top-k). greedy=true scores one
    # greedy completion per prompt instead. Either way every model scored -- student,
    # teachers, baselines -- is decoded alike.
    greedy: bool = setting(False, BOOL)
    samples: int = setting(8, POSITIVE_INT)
    temperature: float = setting(1.0, number(0, lo_open=True))
    seed: int = setting(1234, SEED)  # sampled evaluation's seed (the same prompts get the same draws every eval)
    sampler: str = setting("generate", one_of("generate", "keyed"))  # generate | keyed: as rollout.sampler; keyed makes figures independent of batch_size and sharding
    # Named domain groups reported together, e.g. {general: [add, reverse], domain: [sort]}:
    # per group, mean accuracy, its change from step 0 (preservation) and the normalised
    # score (recovery toward the teachers). Empty: per-domain figures only.
    groups: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class BaselineConfig:
    """Settings of the non-distillation baselines (mopdx/baselines.py)."""

    merge_scale: float = setting(0.5, number())  # task arithmetic: student + scale * sum_d (teacher_d - student)
    offpolicy_temperature: float = setting(1.0, number(0, lo_open=True))  # teachers' sampling temperature for off-policy SFT
    offpolicy_verified_only: bool = setting(False, BOOL)  # off-policy SFT keeps only the teacher samples its verifier accepts
    rl_group: int = setting(8, number(2, integer=True, note="GRPO needs at least 2 samples per prompt"))  # GRPO group size of the Mix-RL / Cascade RL baselines (compare)


@dataclass
class RunConfig:
    out_dir: str = setting("runs", nonempty("a non-empty folder path"))
    name: str | None = setting(None, FOLDER_NAME)


@dataclass
class Config:
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    hf_cb: ContinuousBatchingConfig = field(default_factory=ContinuousBatchingConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    codistill: CoDistillConfig = field(default_factory=CoDistillConfig)  # the two-peer loop's settings (OPCoD)
    env: EnvConfig = field(default_factory=EnvConfig)  # multi-turn episodes per domain (mopdx/envs/)
    run: RunConfig = field(default_factory=RunConfig)


_YAML_CACHE: dict[tuple[str, int, int], DictConfig] = {}


def _load_yaml(path: Path) -> DictConfig:
    """Parse a config file.  The repository's own ``configs/`` (read by every load) are
    parsed once per process while unchanged; user files are always read afresh."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if configs_dir().resolve() not in path.resolve().parents:
        return _parse_yaml(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _YAML_CACHE:
        _YAML_CACHE[key] = _parse_yaml(path)
    return copy.deepcopy(_YAML_CACHE[key])


def _parse_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml syntax errors come in many types
        raise ConfigError(f"cannot parse {path}{_yaml_where(exc)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return cfg


def _yaml_where(exc: Exception) -> str:
    """``, line L, column C: problem (context at line K)`` from a yaml error's marks, so the
    one error line says where to look; other errors give their first line."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or not problem:
        return f": {_first_line(exc)}"
    where = f", line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and cmark is not None and cmark.line != mark.line:
        where += f" ({context} at line {cmark.line + 1})"
    elif context:
        where += f" ({context})"
    return where


# Keys that moved: the old key is refused with one line naming the new one.  train.strategy was
# Lightning's distributed setting, a third meaning of "strategy" beside schedules and loops.
RENAMED = {"train.strategy": "train.parallel",  # Lightning's distributed setting
           # the co-distillation loop's settings left the strategy node for their own
           **{f"strategy.{f.name}": f"codistill.{f.name}" for f in fields(CoDistillConfig)}}


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.max_steps=100)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def _explain(exc: OmegaConfBaseException, source: str, schema: DictConfig) -> ConfigError:
    key = getattr(exc, "full_key", None)
    msg = _first_line(exc)
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        if str(key) in RENAMED:
            return ConfigError(f"'{key}' (from {source}) is now '{RENAMED[key]}': rename the key, the values are the same")
        close = _closest_key(str(key), _dotted_keys(schema))
        hint = f"did you mean '{close}'? " if close else ""
        return ConfigError(f"unknown config key '{key}' (from {source}); {hint}every key and its value: `python -m mopdx config show`")
    return ConfigError(f"invalid value for '{key}' (from {source}): {msg}")


def _closest_key(key: str, known: list[str]) -> str | None:
    """A likely intended key: a sibling spelled alike (``optim.lrr`` -> ``optim.lr``), else
    the same name under another node (``train.lr`` -> ``optim.lr``)."""
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        return siblings[close[0]]
    elsewhere = [k for k in known if k.rpartition(".")[2] == leaf]
    if len(elsewhere) > 1:  # optim.lr and lab.rft.lr: the one at the typo's depth
        elsewhere = [k for k in elsewhere if k.count(".") == key.count(".")]
    return elsewhere[0] if len(elsewhere) == 1 else None


def _dotted_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every key of ``node`` in dot notation (``optim.lr``), nodes and leaves alike."""
    keys = []
    for k in node:
        keys.append(f"{prefix}{k}")
        child = node._get_node(k)
        if isinstance(child, DictConfig):
            keys += _dotted_keys(child, f"{prefix}{k}.")
    return keys


def load_config(
    strategy: str | None = None,
    config_files: list[str | Path] | None = None,
    overrides: list[str] | None = None,
    strategy_schema: type[StrategyConfig] | None = None,
) -> DictConfig:
    """Merge and validate a run configuration (see module docstring for order).

    ``strategy`` (the CLI flag) wins over ``strategy.name`` found in files or
    overrides.  ``strategy_schema`` is the strategy's ``Config`` dataclass;
    when omitted it is looked up in the strategy registry.
    """
    files = [_load_yaml(Path(p)) for p in (config_files or [])]
    dots = _parse_overrides(list(overrides or []))
    base_path = configs_dir() / "base.yaml"
    base = _load_yaml(base_path) if base_path.is_file() else OmegaConf.create({})

    name = strategy
    if name is None:
        for layer in [dots, *reversed(files), base]:
            found = OmegaConf.select(layer, "strategy.name")
            if found is not None:
                name = str(found)
                break
    if name is not None and not name.strip():
        raise ConfigError(f"strategy.name={name!r} is invalid; allowed: a registered strategy name or module:Class")
    name = name or StrategyConfig.name
    try:
        strategy_cls = get_strategy_class(name)
    except ConfigError as exc:
        if strategy is not None:  # the --strategy flag: its message says so
            raise
        raise ConfigError(f"strategy.name={name}: {exc}") from None
    strategy_schema = strategy_schema or strategy_cls.Config

    schema = _schema(strategy_schema)
    schema.strategy.name = name

    layers: list[tuple[str, DictConfig]] = [("configs/base.yaml", base)]
    strat_path = configs_dir() / "strategy" / f"{name}.yaml"
    if strat_path.is_file():
        layers.append((str(strat_path), _load_yaml(strat_path)))
    if plugins.defaults_apply([*files, dots]):  # no data of the user's own: an installed plug-in's run (the lab's)
        layers += [(str(p), _load_yaml(p)) for p in plugins.default_configs(name)]
    layers += [(str(p), f) for p, f in zip(config_files or [], files)]
    layers.append(("command-line override", dots))
    try:  # one merge copies the schema once
        merged = OmegaConf.merge(schema, *(layer for _, layer in layers))
    except OmegaConfBaseException:  # again layer by layer, to name the source that fails
        merged = schema
        for source, layer in layers:
            try:
                merged = OmegaConf.merge(merged, layer)
            except OmegaConfBaseException as exc:
                raise _explain(exc, source, merged) from None
    merged.strategy.name = name
    plugins.expand_teachers(merged)
    _join_replicas(merged)
    validate(merged, strategy_cls.loop)
    check_codistill_values(merged)  # every run's schema has the node: its values are checked on every run
    check_env(merged)
    strategy_cls.check_config(merged)
    return merged


def _join_replicas(cfg: DictConfig) -> None:
    """``model.teachers.<d>: [url, url]`` (a teacher's replicas, as a YAML list) -> ``"url,url"``,
    the one string form the rest of the code reads."""
    for d in list(cfg.model.teachers):
        value = cfg.model.teachers[d]
        if OmegaConf.is_list(value) and len(value) and all(map(plugins.is_remote, value)):
            cfg.model.teachers[d] = ",".join(str(v) for v in value)


_SCHEMAS: dict[tuple[type, tuple[tuple[str, type], ...]], DictConfig] = {}


def _schema(strategy_schema: type[StrategyConfig]) -> DictConfig:
    """A fresh copy of the run schema with ``strategy_schema`` as its ``strategy`` node.

    Built once per strategy node type and process, then copied: ``OmegaConf.structured``
    takes ~5x longer than a copy, and sweeps and tests load configs hundreds of times.
    """
    nodes = tuple(plugins.config_nodes().items())  # e.g. the lab's ``lab`` node
    key = (strategy_schema, nodes)
    if key not in _SCHEMAS:
        schema = OmegaConf.structured(Config)
        OmegaConf.set_struct(schema, False)
        schema.strategy = OmegaConf.structured(strategy_schema)
        for name, node in nodes:
            schema[name] = OmegaConf.structured(node)
        OmegaConf.set_struct(schema, True)
        _open_dict_fields(schema)
        _SCHEMAS[key] = schema
    return copy.deepcopy(_SCHEMAS[key])


def _open_dict_fields(node: DictConfig) -> None:
    """Let ``dict[str, X]`` fields (teachers, domain ratios) take new keys; dataclass nodes stay strict."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if child._metadata.object_type in (None, dict):
                OmegaConf.set_struct(child, False)
            else:
                _open_dict_fields(child)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
