"""Each arm's step-0 per-token divergence between a peer and its teacher, computed without training.

    python benchmarks/opcod_step0_kl.py --config benchmarks/results/opcod_v2_preflight/uprot_tutorhint_config.yaml \\
        --arms "opcod[strategy.use_solution=true]" "opcod[codistill.teacher=peer]" --seeds 0 1 2 3 4 [--out DIR]

Where a co-distillation arm sits against the papers' regime (teachers a few hundredths of a nat per
token from the student) is its loss at step 0, before any update.  Runs record it since the
``initial_loss`` field of ``summary.json``; comparisons run before that have only the logger's
rows, the first of which is already ``train.log_every - 1`` updates in.  This builds each arm's
loop for each seed exactly as ``fit`` does (same config, seed, prompts and sampling) and runs its
step-0 training step once, without a trainer or an optimiser step, so the figure is the one the
run's own step 0 computed (a test checks it against a run's recorded ``initial_loss``).  The
teacher-accuracy and flip-rate generations, which do not enter the loss, are switched off.
Prints mean and 95% CI over seeds per arm and peer and writes ``step0_divergence.json``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pytorch_lightning as pl

from mopdx.config import load_config
from mopdx.experiments.compare import mean_ci
from mopdx.experiments.methods import split_variant
from mopdx.run.codistill import codistill_inputs, codistill_module
from mopdx.strategy import get_strategy_class
from mopdx.tables import records_table

QUIET = ["codistill.measure_teacher=false", "codistill.measure_flips=false"]


def step0_losses(arm: str, config_files: list[str], overrides: list[str], seed: int) -> dict[str, float]:
    """``{peer: loss}`` of ``arm``'s training step 0 with ``seed`` (``fit``'s assembly, no trainer)."""
    method, extra = split_variant(arm)
    cfg = load_config(method, config_files, [*overrides, *extra, *QUIET, f"train.seed={seed}"])
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    strategy_cls = get_strategy_class(cfg.strategy.name)
    if strategy_cls.loop != "codistill":
        raise SystemExit(f"{arm}: not a co-distillation arm (loop {strategy_cls.loop!r})")
    inputs = codistill_inputs(cfg, False)
    module = codistill_module(cfg, inputs, strategy_cls(cfg, inputs.domains))
    module.train()
    with warnings.catch_warnings():  # self.log without a trainer: nothing to log to, by design here
        warnings.simplefilter("ignore")
        module.training_step(None, 0)
    return dict(module.initial_loss)


def step0_table(arms: list[str], config_files: list[str], overrides: list[str], seeds: list[int]) -> list[dict[str, object]]:
    rows = []
    for arm in arms:
        per_seed = [step0_losses(arm, config_files, overrides, s) for s in seeds]
        for peer in sorted(per_seed[0]):
            mean, ci = mean_ci([p[peer] for p in per_seed])
            rows.append({"arm": arm, "peer": peer, "step-0 per token (nats)": mean, "95% CI": ci, "seeds": len(seeds),
                         "per seed": [round(p[peer], 4) for p in per_seed]})
        print(f"{arm}: " + ", ".join(f"{r['peer']} {r['step-0 per token (nats)']:.3f}" for r in rows[-len(per_seed[0]):]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", default=[], help="config file(s), as compare's --config")
    p.add_argument("--arms", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("overrides", nargs="*", help="key=value overrides for every arm (as compare's)")
    args = p.parse_args()
    rows = step0_table(args.arms, args.config, args.overrides, args.seeds)
    print(records_table([{k: v for k, v in r.items() if k != "per seed"} for r in rows]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step0_divergence.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out / 'step0_divergence.json'}")


if __name__ == "__main__":
    main()
