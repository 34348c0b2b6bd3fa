"""Paired differences between two arms of an OPCoD comparison, per peer and domain.

    python benchmarks/opcod_paired.py runs/opcod_v2_tutor_table opcod "opcod[strategy.feedback=false,strategy.use_solution=true]"

``compare`` gives each arm its own 2x2 table (change from step 0, mean and 95% CI over seeds); the
question "does OPCoD beat feedback-off?" is the difference of the two arms' final accuracy *paired by
seed* (the same seed draws the same first batch and evaluation), so this prints that, per cell, with
its 95% CI (Student's t over seeds), and writes it to ``<folder>/paired_<a>_minus_<b>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mopdx.experiments.compare import mean_ci
from mopdx.experiments.methods import finished_runs, run_dirname
from mopdx.tables import records_table


def final_by_seed(folder: Path, arm: str) -> dict[int, dict[str, float]]:
    """``{seed: summary["final"]}`` of the arm's finished runs in a comparison folder."""
    return {seed: json.loads((run / "summary.json").read_text())["final"] for seed, run in finished_runs(folder, arm).items()}


def paired(folder: Path, a: str, b: str) -> list[dict[str, object]]:
    """Per cell: mean and 95% CI over the seeds both arms finished of (a - b)."""
    fa, fb = final_by_seed(folder, a), final_by_seed(folder, b)
    seeds = sorted(set(fa) & set(fb))
    if not seeds:
        raise SystemExit(f"no seed finished in both arms under {folder}")
    rows = []
    for cell in sorted(fa[seeds[0]]):
        diffs = [fa[s][cell] - fb[s][cell] for s in seeds]
        mean, ci = mean_ci(diffs)
        rows.append({"peer/domain": cell, "a": mean_ci([fa[s][cell] for s in seeds])[0], "b": mean_ci([fb[s][cell] for s in seeds])[0],
                     "a - b": mean, "95% CI": ci, "seeds": len(seeds)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("a")
    p.add_argument("b")
    args = p.parse_args()
    rows = paired(args.folder, args.a, args.b)
    print(f"a = {args.a}\nb = {args.b}\n" + records_table(rows))
    out = args.folder / f"paired_{run_dirname(args.a)}_minus_{run_dirname(args.b)}.json"
    out.write_text(json.dumps({"a": args.a, "b": args.b, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
