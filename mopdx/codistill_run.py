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

from mopdx.callbacks import PeriodicEval
from mopdx.codistill import CoDistillModule
from mopdx.config import to_yaml
from mopdx.data import PromptPool, StepDataModule, load_prompts
from mopdx.errors import ConfigError
from mopdx.evaluate import verifier_for
from mopdx.lab.build import resolve_ref
from mopdx.models import check_model_folder, check_model_vocab, check_same_vocab, load_model, load_tokenizer
from mopdx.privileged import Templates
from mopdx.strategy import Strategy

log = logging.getLogger("mopdx")


def _check(cfg: DictConfig, domains: list[str]) -> None:
    s = cfg.strategy
    if len(s.peers) != 2:
        raise ConfigError(f"strategy.peers must name exactly two peer models; got {list(s.peers)}")
    if s.divergence not in ("reverse_kl", "jsd"):
        raise ConfigError(f"strategy.divergence={s.divergence!r} is not one of reverse_kl, jsd")
    if s.teacher not in ("current", "ema"):
        raise ConfigError(f"strategy.teacher={s.teacher!r} is not one of current, ema")
    if not 0 <= s.gate_min_pass <= 1:
        raise ConfigError("strategy.gate_min_pass must be in [0, 1]")
    try:
        Templates(s.teacher_template, s.solution_template, s.feedback_template, s.feedback_prompt_template).check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    missing = [d for d in domains if verifier_for(d) is None]
    if missing:
        raise ConfigError(f"OPCoD grades rollouts with a verifier; domain(s) {missing} have none (lab domains: add, reverse, sort)")


def fit_codistill(
    cfg: DictConfig, strategy_cls: type[Strategy], ckpt_path: str | None, resume: Path | None, progress: bool, callbacks: list[Any] | None = None
) -> dict[str, Any]:
    """Train both peers as ``cfg`` says; returns the summary written to ``summary.json``."""
    from mopdx.fit import eval_settings, make_trainer, new_run_dir, take_per_domain

    train_examples = load_prompts(resolve_ref(cfg.data.train, cfg.lab, progress=progress))
    domains = sorted({e.domain for e in train_examples})
    _check(cfg, domains)
    paths = {n: check_model_folder(resolve_ref(ref, cfg.lab, progress=progress), f"peer {n!r}") for n, ref in cfg.strategy.peers.items()}
    evals = [e for e in load_prompts(resolve_ref(cfg.data.eval, cfg.lab, progress=progress)) if e.domain in domains]
    evals = take_per_domain(evals, cfg.data.eval_per_domain)
    names = list(paths)
    tokenizer = load_tokenizer(paths[names[0]])
    check_same_vocab(tokenizer, load_tokenizer(paths[names[1]]), f"peer {names[1]}")

    run_dir = resume if resume is not None else new_run_dir(cfg)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    peers = {}
    for n, p in paths.items():
        peers[n] = load_model(p, cfg.model.dtype, what=f"peer {n!r}")
        check_model_vocab(peers[n], tokenizer, f"peer {n!r}")
    strategy = strategy_cls(cfg, domains)
    module = CoDistillModule(cfg, peers, tokenizer, strategy, PromptPool(train_examples, seed=cfg.train.seed), {d: verifier_for(d) for d in domains})  # type: ignore[misc]
    evaluators = [PeriodicEval(evals, eval_settings(cfg), cfg.train.eval_every, run_dir, {}, peer=n) for n in names]
    trainer = make_trainer(cfg, run_dir, [*evaluators, *(callbacks or [])], resume is not None, progress, clip=False)
    trainer.fit(module, datamodule=StepDataModule(), ckpt_path=ckpt_path)
    module.save_peers(run_dir / "final")
    before = {f"{n}/{d}": v for n, ev in zip(names, evaluators) for d, v in (ev.student0 or {}).items()}
    after = {f"{n}/{d}": v for n, ev in zip(names, evaluators) for d, v in ev.history[-1]["acc"].items()}
    return summarise_peers(run_dir, names, domains, dict(cfg.strategy.strong_domain), before, after, trainer.global_step)


def two_by_two(names: list[str], domains: list[str], strong: dict[str, str], before: dict[str, float], after: dict[str, float]) -> str:
    """The peer x domain table: before, after, change; the strong domain marked."""
    lines = ["| peer | domain | role | before | after | change |", "|---|---|---|---|---|---|"]
    for n in names:
        for d in domains:
            k = f"{n}/{d}"
            role = "strong" if strong.get(n) == d else "weak"
            b, a = before.get(k, math.nan), after.get(k, math.nan)
            lines.append(f"| {n} | {d} | {role} | {b:.3f} | {a:.3f} | {a - b:+.3f} |")
    return "\n".join(lines)


def summarise_peers(
    run_dir: Path, names: list[str], domains: list[str], strong: dict[str, str], before: dict[str, float], after: dict[str, float], steps: int
) -> dict[str, Any]:
    table = two_by_two(names, domains, strong, before, after)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "steps": steps, "student0": before, "teacher": {}, "final": after,
        "normalised": {"mean": math.nan}, "peers": names, "strong_domain": strong,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "report.md").write_text(f"# {run_dir.name}: peer x domain accuracy\n\n{table}\n")
    plot_two_by_two(names, domains, strong, before, after, run_dir / "opcod_2x2.png")
    summary["table"] = table
    return summary


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
