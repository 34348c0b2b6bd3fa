"""Typed configuration: dataclass schemas merged with OmegaConf.

Merge order (later wins): dataclass defaults -> ``configs/base.yaml`` ->
``configs/strategy/<name>.yaml`` -> each ``--config`` file -> ``key=value``
overrides.  The schema is in struct mode, so a misspelled key or a wrong
type fails here, naming the key, before any model is loaded.  Each strategy
contributes the schema of the ``strategy`` node through its ``Config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mopdx.errors import ConfigError
from mopdx.lab.model_factory import TinyModelSpec

LAB_DOMAINS = ["add", "reverse", "sort"]


@dataclass
class StrategyConfig:
    """Base of every strategy's config node; strategies subclass it."""

    name: str = "mopd"


@dataclass
class ModelConfig:
    # A model folder, or ``lab:<artifact>`` (built on demand by the lab).
    student: str = "lab:stage1"
    teachers: dict[str, str] = field(default_factory=lambda: {d: f"lab:teacher/{d}" for d in LAB_DOMAINS})
    dtype: str = "float32"
    initial_kl_warn: float = 0.1  # warn when a teacher's initial per-token KL exceeds this
    teacher_backend: str = "hf"  # hf | vllm: how local teacher folders are prefilled


@dataclass
class DataConfig:
    # JSONL with {"prompt", "domain", "answer"?}; ``lab:`` uses the lab's splits.
    train: str = "lab:train"
    eval: str = "lab:eval"
    domain_ratios: dict[str, float] = field(default_factory=dict)  # empty: uniform over domains
    batch_size: int = 64  # prompts per training step
    eval_per_domain: int = 200


@dataclass
class RolloutConfig:
    backend: str = "hf"
    n: int = 1  # rollouts per prompt
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    sync_every: int = 1  # optimiser steps between weight syncs to the rollout engine
    # Teacher prefill overlapped with sampling: the batch is sampled in chunks of this
    # many prompts and each chunk's prefill starts as soon as it is sampled. 0: off.
    overlap_chunk: int = 0


@dataclass
class VLLMConfig:
    """Settings of the vLLM engines (rollout.backend=vllm, model.teacher_backend=vllm)."""

    student_gpu_memory_utilization: float = 0.3  # share of the card for the student engine
    teacher_gpu_memory_utilization: float = 0.15  # per local vLLM teacher
    max_model_len: int = 0  # 0: from the model config
    # false (vLLM's default): torch.compile, and CUDA graphs on GPU. On CPU it costs
    # ~20 s more at engine start and makes rollouts 1.2-1.7x faster (benchmarks/throughput.py)
    enforce_eager: bool = False
    cpu_kvcache_gib: int = 1  # KV cache per engine on CPU builds
    sleep_teachers: bool = False  # offload teacher weights between uses (CUDA)


@dataclass
class RemoteConfig:
    """Remote teachers (``model.teachers.<d>=http://host:port``, served by ``mopdx serve-teacher``)."""

    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 0.5  # doubles after each failed try


@dataclass
class LossConfig:
    kind: str = "pg"  # pg | topk | full_reverse_kl | forward_kl | jsd
    adv_clip: float = 5.0
    adv_baseline: str = "none"  # none | mean (variance reduction; same expected gradient)
    topk: int = 64
    topk_tail: bool = False  # add a term for the student mass outside the teacher's top-k
    jsd_beta: float = 0.5
    is_clip: float | None = None  # truncated importance ratio cap; None = off (on-policy)
    teacher_temperature: float = 1.0


@dataclass
class OptimConfig:
    lr: float = 1e-4  # PG reverse KL became unstable at >= 3e-4 on the lab (see README)
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "constant"  # constant | cosine (decays to min_lr_ratio * lr at train.max_steps)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])


@dataclass
class TrainConfig:
    max_steps: int = 300
    seed: int = 0
    eval_every: int = 100  # 0 disables periodic eval (start and end still run)
    ckpt_every: int = 50
    log_every: int = 5
    accelerator: str = "auto"
    precision: str = "32-true"
    threads: int = 0  # torch CPU threads; 0 = leave as is
    keep_checkpoints: bool = False  # keep every ckpt_every checkpoint (for analyses over training), not only the last


@dataclass
class EvalConfig:
    max_new_tokens: int = 16
    batch_size: int = 256
    greedy: bool = True
    sampled: bool = False
    # Named domain groups reported together, e.g. {general: [add, reverse], domain: [sort]}:
    # per group, mean accuracy, its change from step 0 (preservation) and the normalised
    # score (recovery toward the teachers). Empty: per-domain figures only.
    groups: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class CaMOPDLabConfig:
    """The CaMOPD scenario (mopdx/lab/scenarios.py): general model, then a specialist that forgets."""

    recovery_domains: list[str] = field(default_factory=lambda: ["add", "reverse"])
    review_domain: str = "sort"
    general_steps: int = 600
    general_lr: float = 2e-3
    specialise_steps: int = 300
    specialise_lr: float = 2e-3


@dataclass
class OPCoDLabConfig:
    """The OPCoD scenario (mopdx/lab/opcod.py): two peers, each specialised on one domain."""

    domains: list[str] = field(default_factory=lambda: ["reverse", "sort"])
    base_steps: int = 600
    base_lr: float = 2e-3
    specialise_steps: int = 100
    specialise_lr: float = 1e-3
    # The peers learn to read contexts and write feedback in these formats; the OPCoD
    # strategy config points at them (configs/strategy/opcod.yaml). Short markers, not
    # DESIGN.md's English sentence: the lab tokenizer spells unknown words byte by byte,
    # which would make every teacher sequence ~4x longer on a CPU.
    teacher_template: str = "{prompt}{solution}{feedback}"
    solution_template: str = "\n= {solution}"
    feedback_template: str = "\n# {feedback}"
    feedback_prompt_template: str = "hint {prompt}"


@dataclass
class LabConfig:
    root: str = "artifacts/lab"
    domains: list[str] = field(default_factory=lambda: list(LAB_DOMAINS))
    seed: int = 0
    vocab_size: int = 512
    n_train: int = 20000  # per domain (capped by how many distinct prompts exist)
    n_eval: int = 200  # held-out, per domain
    model: TinyModelSpec = field(default_factory=TinyModelSpec)
    stage1_steps: int = 600
    stage1_easy_only: bool = True  # the generalist sees only each domain's easy part (Domain.is_easy)
    stage1_lr: float = 3e-3
    stage2_steps: int = 300
    stage2_lr: float = 2e-3
    batch_size: int = 64
    camopd: CaMOPDLabConfig = field(default_factory=CaMOPDLabConfig)
    opcod: OPCoDLabConfig = field(default_factory=OPCoDLabConfig)


@dataclass
class BaselineConfig:
    """Settings of the non-distillation baselines (mopdx/baselines.py)."""

    merge_scale: float = 0.5  # task arithmetic: student + scale * sum_d (teacher_d - student)
    offpolicy_temperature: float = 1.0  # teachers' sampling temperature for off-policy SFT


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: str | None = None


@dataclass
class Config:
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lab: LabConfig = field(default_factory=LabConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    run: RunConfig = field(default_factory=RunConfig)


def configs_dir() -> Path:
    """The repository's ``configs/`` folder (next to the package in a checkout)."""
    here = Path(__file__).resolve().parent.parent / "configs"
    return here if here.is_dir() else Path.cwd() / "configs"


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml syntax errors come in many types
        raise ConfigError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return cfg


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


def _explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None)
    msg = _first_line(exc)
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return ConfigError(f"unknown config key '{key}' (from {source}); check the spelling or `python -m mopdx fit --help`")
    return ConfigError(f"invalid value for '{key}' (from {source}): {msg}")


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
    name = name or StrategyConfig.name
    if strategy_schema is None:
        from mopdx.strategy import get_strategy_class

        strategy_schema = get_strategy_class(name).Config

    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, False)
    schema.strategy = OmegaConf.structured(strategy_schema)
    OmegaConf.set_struct(schema, True)
    _open_dict_fields(schema)
    schema.strategy.name = name

    layers: list[tuple[str, DictConfig]] = [("configs/base.yaml", base)]
    strat_path = configs_dir() / "strategy" / f"{name}.yaml"
    if strat_path.is_file():
        layers.append((str(strat_path), _load_yaml(strat_path)))
    layers += [(str(p), f) for p, f in zip(config_files or [], files)]
    layers.append(("command-line override", dots))
    merged = schema
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            raise _explain(exc, source) from None
    merged.strategy.name = name
    validate(merged)
    return merged


def _open_dict_fields(node: DictConfig) -> None:
    """Let ``dict[str, X]`` fields (teachers, domain ratios) take new keys; dataclass nodes stay strict."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if child._metadata.object_type in (None, dict):
                OmegaConf.set_struct(child, False)
            else:
                _open_dict_fields(child)


def validate(cfg: DictConfig) -> None:
    """Value checks that types alone cannot express."""
    from mopdx.losses import LOSS_KINDS

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(cfg.loss.kind in LOSS_KINDS, f"loss.kind={cfg.loss.kind!r} is not one of {', '.join(LOSS_KINDS)}")
    need(cfg.loss.adv_clip > 0, "loss.adv_clip must be > 0")
    need(cfg.loss.adv_baseline in ("none", "mean"), "loss.adv_baseline must be 'none' or 'mean'")
    need(cfg.loss.topk >= 1, "loss.topk must be >= 1")
    need(cfg.loss.teacher_temperature > 0, "loss.teacher_temperature must be > 0")
    need(cfg.loss.is_clip is None or cfg.loss.is_clip > 0, "loss.is_clip must be > 0 or null")
    need(cfg.data.batch_size >= 1, "data.batch_size must be >= 1")
    need(cfg.rollout.n >= 1, "rollout.n must be >= 1")
    need(cfg.rollout.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1")
    need(cfg.rollout.temperature > 0, "rollout.temperature must be > 0")
    need(cfg.rollout.backend in ("hf", "vllm"), f"rollout.backend={cfg.rollout.backend!r} is not one of hf, vllm")
    need(cfg.model.teacher_backend in ("hf", "vllm"), f"model.teacher_backend={cfg.model.teacher_backend!r} is not one of hf, vllm")
    need(cfg.rollout.sync_every >= 1, "rollout.sync_every must be >= 1")
    need(cfg.rollout.overlap_chunk >= 0, "rollout.overlap_chunk must be >= 0 (0 turns overlap off)")
    need(cfg.remote.retries >= 1 and cfg.remote.timeout_s > 0, "remote.retries must be >= 1 and remote.timeout_s > 0")
    need(cfg.train.max_steps >= 1, "train.max_steps must be >= 1")
    need(cfg.optim.lr > 0, "optim.lr must be > 0")
    need(cfg.optim.schedule in ("constant", "cosine"), "optim.schedule must be 'constant' or 'cosine'")
    need(len(cfg.model.teachers) > 0, "model.teachers is empty: map each domain to a teacher folder")
    for d, r in cfg.data.domain_ratios.items():
        need(r >= 0, f"data.domain_ratios.{d} must be >= 0")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def as_plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
