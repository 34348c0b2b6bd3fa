"""Each arm's initial per-token divergence between a peer and its teacher: where a co-distillation
table sits against the papers' regime.

    python benchmarks/opcod_initial_kl.py runs/opcod_v2_tutor_table opcod "opcod[strategy.use_solution=true]"

A lab result is evidence about a method only in the papers' regime, whose teachers start a few
hundredths of a nat per token from the student.  In OPCoD the teacher is the peer itself reading a
privileged context, so how far it starts depends on the scenario *and* the arm (feedback-off reads
only the own solution, OPCoD the peer's hint as well).  Each peer's loss at step 0 is exactly that
figure (the per-token divergence on the peer's own rollouts, over both domains, before any
update); runs record it in ``summary.json`` (``initial_loss``).  Runs from before that field
existed have only the logger's rows, written every ``train.log_every`` steps, so their first row
is already ``log_every - 1`` updates in: for those this reads that row and says which step it is
(the ``step`` column), and the figure is not a step-0 one.  Per arm, mean and 95% CI over seeds;
writes ``<folder>/initial_divergence.json``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from mopdx.experiments.compare import mean_ci
from mopdx.experiments.methods import finished_runs
from mopdx.tables import records_table


def first_losses(run: Path) -> tuple[dict[str, float], int]:
    """``({peer: loss}, step)``: the step-0 losses the run recorded in ``summary.json``, or for an
    older run the first row its logger wrote (``logs/metrics.csv``) and that row's step."""
    recorded = json.loads((run / "summary.json").read_text()).get("initial_loss") if (run / "summary.json").is_file() else None
    if recorded:
        return {peer: float(v) for peer, v in recorded.items()}, 0
    metrics = pd.read_csv(run / "logs" / "metrics.csv")
    cols = [c for c in metrics.columns if re.fullmatch(r"[^/]+/loss", c)]
    if not cols:
        raise SystemExit(f"{run}: no per-peer loss in logs/metrics.csv (not a co-distillation run?)")
    first = metrics.dropna(subset=cols).sort_values("step").iloc[0]
    return {c.split("/")[0]: float(first[c]) for c in cols}, int(first["step"])


def initial_divergence(folder: Path, arm: str) -> list[dict[str, object]]:
    """Per peer: the arm's step-0 divergence, mean and 95% CI over its finished seeds."""
    runs = list(finished_runs(folder, arm).values())
    if not runs:
        raise SystemExit(f"no finished run of {arm!r} under {folder}")
    read = [first_losses(r) for r in runs]
    per_run, steps = [losses for losses, _ in read], sorted({step for _, step in read})
    saved = OmegaConf.load(runs[0] / "config.yaml")
    # codistill.divergence; runs made before the codistill node kept it under strategy
    divergence = (saved.get("codistill") or {}).get("divergence") or (saved.get("strategy") or {}).get("divergence", "?")
    rows = []
    for peer in sorted(per_run[0]):
        mean, ci = mean_ci([p[peer] for p in per_run])
        rows.append({"arm": arm, "peer": peer, "divergence": divergence, "step": "/".join(map(str, steps)),
                     "per token (nats)": mean, "95% CI": ci, "seeds": len(runs)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("arms", nargs="+")
    args = p.parse_args()
    rows = [row for arm in args.arms for row in initial_divergence(args.folder, arm)]
    print(records_table(rows))
    out = args.folder / "initial_divergence.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
