"""Teachers beyond one per domain on the lab: each panel rule against one teacher, and a teacher with another tokenizer.

Two ``compare`` scenarios, 5 seeds each, on a 40-step budget (README: comparisons of methods
are 5 seeds, mean and 95% CI):

* ``panels`` (configs/experiment/scenarios/panels.yaml): every domain taught by a panel of its
  sharp teacher (``lab:teacher/<d>``) and a broad one (``lab:panel/broad_<d>``, mopdx_lab/panel.py),
  under each combination rule, against single-teacher MOPD from the sharp teacher alone;
* ``xtok`` (configs/experiment/scenarios/xtok.yaml): cross-tokenizer MOPD from teachers on a
  second BPE made to behave as the lab's (``lab:xtok/teacher_<d>``, mopdx_lab/xtok.py) against
  same-tokenizer MOPD from the teachers they were made from.

Per arm the table gives the mean normalised score at the end of the budget (mean, 95% CI over
seeds, range; every arm against the first arm's teachers), its difference from the first arm
paired by seed (mean, 95% CI), the initial per-token KL the first step logged (``kl/<d>``, student -> the
teacher it is distilled towards, mean over seeds) and, for panels, the share of tokens each
teacher won over the run.  The scenarios' manifests (each teacher's accuracy, the student's
initial KL to each, the second-tokenizer teachers' KL from their sources) are copied into the
JSON.  Each comparison folder resumes: a rerun reads the finished runs.

Usage::

    python benchmarks/teacher_studies.py --seeds 0 1 2 3 4 --out benchmarks/results/teachers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from mopdx.config import load_config
from mopdx.experiments.compare import mean_ci, run_comparison
from mopdx.experiments.methods import finished_runs, scenario, scenario_configs
from mopdx.scores import normalised_scores
from mopdx.tables import records_table

SCENARIOS = ("panels", "xtok")


def first_row(run_dir: Path) -> dict[str, float]:
    """The first logged training step's metrics (``step``: which; with ``train.log_every=1`` step 0, what
    the run read before any update: the initial KL)."""
    frame = pd.read_csv(run_dir / "logs" / "metrics.csv")
    if "kl" not in frame or frame["kl"].isna().all():
        return {}  # a run that asks no teacher (GRPO) logs no KL
    row = frame[frame["kl"].notna()].iloc[0]
    return {k: float(v) for k, v in row.items() if pd.notna(v)}


def shares(run_dir: Path) -> dict[str, float]:
    """Each panel teacher's mean share of tokens over the run (``teacher/<d>/<name>/share``)."""
    frame = pd.read_csv(run_dir / "logs" / "metrics.csv")
    return {c.removeprefix("teacher/").removesuffix("/share"): round(float(frame[c].mean()), 3) for c in frame.columns if c.endswith("/share")}


def study(name: str, seeds: list[int], out: Path, extra: list[str]) -> dict[str, Any]:
    spec = scenario(name)
    folder = out / name
    result = run_comparison(spec["methods"], seeds, scenario_configs(name), extra, out_dir=folder)
    rows = []
    papers = {r["method"]: r for r in result["paper_rows"]}
    base = spec["methods"][0]  # the single-teacher / same-tokenizer arm: the reference of the paired differences
    summaries = {m: {seed: json.loads((r / "summary.json").read_text()) for seed, r in finished_runs(folder, m).items()} for m in spec["methods"]}
    ref = next(iter(summaries[base].values()))["teacher"]
    mean_score = {m: {seed: normalised_scores(s["final"], s["student0"], ref)["mean"] for seed, s in by_seed.items()} for m, by_seed in summaries.items()}
    for method in spec["methods"]:
        paper = papers[method]
        runs = finished_runs(folder, method)
        diff, diff_ci = mean_ci([mean_score[method][k] - mean_score[base][k] for k in mean_score[base]])
        firsts = [first_row(r) for r in runs.values()]
        kl = {k.removeprefix("kl/"): round(sum(f[k] for f in firsts) / len(firsts), 4) for k in firsts[0] if k.startswith("kl/")}
        kl["step"] = int(firsts[0]["step"])  # the step those KLs were logged at
        share = [shares(r) for r in runs.values()]
        row = {"method": method, "mean_norm": round(paper["mean_norm"], 3), "ci95": round(paper["mean_norm_ci95"], 3),
               "min": round(paper["mean_norm_min"], 3), "max": round(paper["mean_norm_max"], 3), "seeds": paper["seeds"],
               "paired diff": round(diff, 3), "paired ci95": round(diff_ci, 3),
               **{f"kl@{kl['step']} {d}": v for d, v in kl.items() if d != "step"}}
        if share and share[0]:
            row.update({f"share {k}": round(sum(s[k] for s in share) / len(share), 3) for k in share[0]})
        rows.append(row)
    return {"rows": rows, "comparison": str(folder / "comparison.json")}


def manifests() -> dict[str, Any]:
    """The scenarios' own measurements (built on first use by the runs above)."""
    from mopdx_lab.build import lab_dir
    from mopdx_lab.panel import panel_dir
    from mopdx_lab.xtok import xtok_dir

    lab = load_config("mopd", [], []).lab
    root = lab_dir(lab)
    folders = {"panel": panel_dir(lab, root), "xtok": xtok_dir(lab, root)}
    return {"lab": root.name, **{k: json.loads((d / "manifest.json").read_text()) for k, d in folders.items() if (d / "manifest.json").is_file()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--out", type=Path, default=Path("runs/teacher_studies"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/teachers"))
    p.add_argument("overrides", nargs="*", help="key=value for every run")
    args = p.parse_args()
    path = args.results / "teacher_studies.json"
    out: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}  # a study run alone keeps the other's result
    out.update(seeds=args.seeds, overrides=args.overrides)
    for name in args.scenarios:
        out[name] = study(name, args.seeds, args.out, args.overrides)
        print(f"\n{name} ({len(args.seeds)} seeds; normalised score at the end of the budget, mean, 95% CI, range)\n")
        print(records_table(out[name]["rows"]))
    out["manifests"] = manifests()
    args.results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
