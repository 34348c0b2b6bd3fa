"""``fit`` for co-distillation strategies (OPCoD): two peers, their evals, the 2x2 report.

Same run folder layout as a distillation run (config.yaml, checkpoints/last.ckpt
with both peers, logs/, tb/), plus ``eval_<peer>.jsonl`` per peer,
``final/<peer>/`` (each peer as its own Hugging Face folder), and the 2x2
report: peer x domain accuracy before and after (``report.md``,
``summary.json``, ``opcod_2x2.png``).  ``summary.json`` keeps the generic
keys (``student0``, ``final``) with ``<peer>/<domain>`` entries, so
``python -m mopdx compare`` averages OPCoD runs over seeds like any other.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mopdx.backends.factory import check_engine_combination, make_rollout_backend
from mopdx.backends.turns import SyncedEngine
from mopdx.codistill.module import CoDistillModule
from mopdx.data import PromptPool
from mopdx.verifiers import verifier_for
from mopdx.errors import ConfigError
from mopdx.run import ranks
from mopdx.run.assembly import RunInputs, prepare, write_summary
from mopdx.run.callbacks import PeriodicEval
from mopdx.run.trainer import StepDataModule, make_trainer
from mopdx.strategy import Strategy
from mopdx.tables import records_table

log = logging.getLogger("mopdx")


def peer_refs(cfg: DictConfig, domains: list[str]) -> dict[str, str]:
    """The two peers (``codistill.peers``); they need verifiers, not teachers."""
    missing = [d for d in domains if verifier_for(d) is None]
    if missing:
        raise ConfigError(f"co-distillation grades rollouts with a verifier; domain(s) {missing} have none: name one in data.verifiers.<domain> (math, numeric, choice, exact, regex, code or package.module:attr)")
    return {f"peer {n!r}": ref for n, ref in cfg.codistill.peers.items()}


def fit_codistill(
    cfg: DictConfig, strategy_cls: type[Strategy], ckpt_path: str | None, resume: Path | None, progress: bool, callbacks: list[Any] | None = None
) -> dict[str, Any]:
    """Train both peers as ``cfg`` says; returns the summary written to ``summary.json``."""
    if ranks.world_size(cfg) > 1:
        raise ConfigError(f"strategy {cfg.strategy.name!r} trains two peers in one process: set train.devices=1 and train.num_nodes=1")
    inputs = codistill_inputs(cfg, progress)
    domains, names = inputs.domains, list(cfg.codistill.peers)
    strategy = strategy_cls(cfg, domains)
    with inputs.run_folder(resume) as run_dir:  # locked while training; removed if the run fails before any work
        module = codistill_module(cfg, inputs, strategy)
        evaluators = [PeriodicEval(inputs.evals, cfg.eval, cfg.train.eval_every, run_dir, {}, peer=n) for n in names]
        trainer = make_trainer(cfg, run_dir, [*evaluators, *(callbacks or [])], resume is not None, progress, clip=False)
        trainer.fit(module, datamodule=StepDataModule(), ckpt_path=ckpt_path)
        module.save_peers(run_dir / "final")
        steps = trainer.global_step
        before = {f"{n}/{d}": v for n, ev in zip(names, evaluators) for d, v in (ev.student0 or {}).items()}
        after = {f"{n}/{d}": v for n, ev in zip(names, evaluators) for d, v in ev.final(steps)["acc"].items()}  # refuses an older eval
        return summarise_peers(run_dir, names, domains, dict(cfg.codistill.strong_domain), before, after, steps, module.budget(steps),
                               module.initial_loss)


def codistill_inputs(cfg: DictConfig, progress: bool) -> RunInputs:
    """What a co-distillation run reads: the peers as models to load (no teachers), and the
    domains to evaluate taken from the training prompts (``benchmarks/opcod_step0_kl.py`` uses it too)."""
    return prepare(cfg, progress, peer_refs, need_teachers=False, eval_domains_from_train=True)


def codistill_module(cfg: DictConfig, inputs: RunInputs, strategy: Strategy) -> CoDistillModule:
    """The two-peer loop as ``fit`` trains it: both peers loaded, the seeded prompt pool, the
    domains' verifiers (``benchmarks/opcod_step0_kl.py`` rebuilds runs' step 0 with it)."""
    paths = [inputs.models[f"peer {n!r}"] for n in cfg.codistill.peers]
    if cfg.rollout.backend == "vllm":
        check_one_engine_fits_both(cfg, paths)
    peers = {n: inputs.load(f"peer {n!r}") for n in cfg.codistill.peers}
    verifiers = {d: verifier_for(d) for d in inputs.domains}
    engine = peer_engine(cfg, paths[0], inputs.tokenizer) if cfg.rollout.backend == "vllm" else None
    return CoDistillModule(cfg, peers, inputs.tokenizer, strategy, PromptPool(inputs.train, seed=cfg.train.seed), verifiers,  # type: ignore[arg-type]
                           engine=engine)


# what must agree for one engine to hold either peer's weights
ENGINE_SHAPE = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings")


def check_one_engine_fits_both(cfg: DictConfig, paths: list[str]) -> None:
    """Before any weights load: the two peers share one vLLM engine, so they need one architecture
    (the engine is built from the first peer's folder and loaded with either's weights)."""
    check_engine_combination(cfg, {})
    shapes = []
    for path in paths:
        config = json.loads((Path(path) / "config.json").read_text())
        shapes.append({k: config.get(k) for k in ENGINE_SHAPE})
    diff = sorted(k for k in ENGINE_SHAPE if shapes[0][k] != shapes[1][k])
    if diff:
        names = list(cfg.codistill.peers)
        raise ConfigError(
            f"rollout.backend=vllm lends one engine to both peers, but peers {names[0]!r} and {names[1]!r} differ in "
            f"{', '.join(f'{k} ({shapes[0][k]} vs {shapes[1][k]})' for k in diff)}: use peers of one architecture or rollout.backend=hf"
        )


def peer_engine(cfg: DictConfig, path: str, tokenizer: Any) -> SyncedEngine:
    """The in-process vLLM engine both peers sample through, built from ``path``'s folder."""
    return make_rollout_backend(cfg, path, None, tokenizer)  # type: ignore[return-value]


def two_by_two(names: list[str], domains: list[str], strong: dict[str, str], before: dict[str, float], after: dict[str, float]) -> str:
    """The peer x domain table: before, after, change; the strong domain marked."""
    rows = []
    for n in names:
        for d in domains:
            b, a = before.get(f"{n}/{d}", math.nan), after.get(f"{n}/{d}", math.nan)
            rows.append({"peer": n, "domain": d, "role": "strong" if strong.get(n) == d else "weak", "before": b, "after": a, "change": a - b})
    return records_table(rows)


def summarise_peers(
    run_dir: Path, names: list[str], domains: list[str], strong: dict[str, str], before: dict[str, float], after: dict[str, float], steps: int,
    budget: dict[str, int] | None = None, initial_loss: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``initial_loss``: each peer's step-0 loss (its divergence from its teacher before any update)."""
    table = two_by_two(names, domains, strong, before, after)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "steps": steps, "eval_step": steps, "student0": before, "teacher": {}, "final": after,
        "normalised": {"mean": math.nan}, "peers": names, "strong_domain": strong, "budget": budget or {"steps": steps},
        "initial_loss": initial_loss or {},
    }
    plot_two_by_two(names, domains, strong, before, after, run_dir / "opcod_2x2.png")
    return write_summary(run_dir, summary, f"{run_dir.name}: peer x domain accuracy", table)


def plot_two_by_two(names: list[str], domains: list[str], strong: dict[str, str], before: dict[str, float], after: dict[str, float], path: Path) -> None:
    """Grouped bars: one panel per peer, before/after per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], names):
        xs = range(len(domains))
        ax.bar([x - 0.2 for x in xs], [before.get(f"{n}/{d}", math.nan) for d in domains], 0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [after.get(f"{n}/{d}", math.nan) for d in domains], 0.4, label="after")
        ax.set_xticks(list(xs), [f"{d}\n({'strong' if strong.get(n) == d else 'weak'})" for d in domains])
        ax.set_title(f"peer {n}")
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
