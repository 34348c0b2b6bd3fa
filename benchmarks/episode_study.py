"""Multi-turn MOPD on the lab's multi-turn task, against single-turn MOPD and GRPO on the episode reward.

The ``compare`` scenario ``blocks`` (configs/experiment/scenarios/blocks.yaml), 5 seeds, on a
40-step budget: every domain is a ``lab_blocks`` episode (the step trace one block per turn,
an oracle ending the episode at a wrong block), student and teachers the lab's taught that
format (``lab:blocks/...``, mopdx_lab/blocks.py).  Arms: multi-turn MOPD (the teachers prefill
the episodes), single-turn MOPD (``env.train=false``: the same prompts and teachers, whole
traces in one turn, no environment in training) and GRPO on the episode reward (``mix_rl``:
the same number of sequences per step, in groups).  Every arm is evaluated by episode.

Per arm: the mean normalised score after the budget (mean, 95% CI over seeds, range), its
difference from multi-turn MOPD paired by seed, the mean final episode reward per domain, the
KL to the teachers at step 0 (``train.log_every=1``; GRPO asks no teacher), the turns per
episode at the last step and the share of the final model's eval episodes that are well formed
(``BlockFormat``: one block per turn, right or wrong -- whether the arm kept the format).  The scenario's manifest is copied into the JSON.  The comparison
folder resumes: a rerun reads the finished runs.

Usage::

    python benchmarks/episode_study.py lab.allow_outside_regime=true --seeds 0 1 2 3 4

(``lab.allow_outside_regime=true``: the scenario is outside the papers' KL band on ``rot`` on
this build; docs/experiments/episodes.md.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd
from teacher_studies import first_row

from mopdx.config import load_config
from mopdx.experiments.compare import mean_ci, run_comparison
from mopdx.experiments.methods import finished_runs, scenario, scenario_configs
from mopdx.scores import normalised_scores
from mopdx.tables import records_table

NAME = "blocks"


def last_turns(run_dir: Path) -> float | None:
    frame = pd.read_csv(run_dir / "logs" / "metrics.csv")
    turns = frame["train/env/turns"].dropna() if "train/env/turns" in frame else pd.Series(dtype=float)
    return float(turns.iloc[-1]) if len(turns) else None


def formed(run_dir: Path, cfg_files: list[str], extra: list[str]) -> dict[str, float]:
    """The share of the final model's eval episodes that are well formed (``BlockFormat``: one block per turn,
    right or wrong), sampled as the runs evaluate: whether an arm kept the episode format."""
    from mopdx.backends.hf import HFRolloutBackend
    from mopdx.data import load_prompts, take_per_domain
    from mopdx.envs.registry import episode_spec
    from mopdx.models import load_model, load_tokenizer
    from mopdx.run.evaluation import accuracy_by_domain
    from mopdx_lab.envs import BlockFormat
    from mopdx_lab.refs import resolve_ref

    cfg = load_config("mopd", cfg_files, extra)
    prompts = take_per_domain(load_prompts(resolve_ref("lab:eval", cfg.lab, progress=False)), int(cfg.data.eval_per_domain))
    tok, model = load_tokenizer(run_dir / "final"), load_model(run_dir / "final")
    spec = episode_spec(cfg)
    backend = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id)
    return dict(accuracy_by_domain(backend, tok, prompts, cfg.eval, episodes=(lambda e: BlockFormat(), spec)))


def study(seeds: list[int], out: Path, extra: list[str]) -> dict[str, Any]:
    spec = scenario(NAME)
    folder = out / NAME
    result = run_comparison(spec["methods"], seeds, scenario_configs(NAME), extra, out_dir=folder)
    papers = {r["method"]: r for r in result["paper_rows"]}
    base = spec["methods"][0]
    summaries = {m: {seed: json.loads((r / "summary.json").read_text()) for seed, r in finished_runs(folder, m).items()} for m in spec["methods"]}
    first = next(iter(summaries[base].values()))
    norm = {m: {k: normalised_scores(s["final"], s["student0"], first["teacher"]) for k, s in by.items()} for m, by in summaries.items()}
    score = {m: {k: n["mean"] for k, n in by.items()} for m, by in norm.items()}
    rows = []
    for method in spec["methods"]:
        paper, runs = papers[method], finished_runs(folder, method)
        diff, diff_ci = mean_ci([score[method][k] - score[base][k] for k in score[base]])
        finals = [s["final"] for s in summaries[method].values()]
        firsts = [f for f in (first_row(r) for r in runs.values()) if f]
        turns = [t for t in (last_turns(r) for r in runs.values()) if t is not None]
        row: dict[str, Any] = {"method": method, "mean_norm": round(paper["mean_norm"], 3), "ci95": round(paper["mean_norm_ci95"], 3),
                               "min": round(paper["mean_norm_min"], 3), "max": round(paper["mean_norm_max"], 3), "seeds": paper["seeds"],
                               "paired diff": round(diff, 3), "paired ci95": round(diff_ci, 3),
                               **{f"reward {d}": round(sum(f[d] for f in finals) / len(finals), 3) for d in first["final"]}}
        for d in first["final"]:  # per domain: normalised, and paired with multi-turn MOPD
            mean, ci = mean_ci([norm[method][k][d] for k in norm[method]])
            pd_mean, pd_ci = mean_ci([norm[method][k][d] - norm[base][k][d] for k in norm[base]])
            row[f"norm {d}"] = f"{mean:.3f} ± {ci:.3f}"
            row[f"paired {d}"] = f"{pd_mean:+.3f} ± {pd_ci:.3f}"
        if firsts:
            row.update({f"kl@0 {k.removeprefix('kl/')}": round(sum(f[k] for f in firsts) / len(firsts), 4) for k in firsts[0] if k.startswith("kl/")})
        row["turns (last step)"] = round(sum(turns) / len(turns), 2) if turns else None
        forms = [formed(r, scenario_configs(NAME), extra) for r in runs.values()]
        row.update({f"formed {d}": round(sum(f[d] for f in forms) / len(forms), 3) for d in forms[0]})
        rows.append(row)
    return {"rows": rows, "student0": first["student0"], "teacher": first["teacher"], "comparison": str(folder / "comparison.json")}


def manifest() -> dict[str, Any]:
    from mopdx_lab.blocks import blocks_dir
    from mopdx_lab.build import lab_dir

    lab = load_config("mopd", scenario_configs(NAME), []).lab
    path = blocks_dir(lab, lab_dir(lab)) / "manifest.json"
    return {"lab": lab_dir(lab).name, **(json.loads(path.read_text()) if path.is_file() else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=Path("runs/episode_study"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/episodes"))
    p.add_argument("overrides", nargs="*", help="key=value for every run")
    args = p.parse_args()
    out = {"seeds": args.seeds, "overrides": args.overrides, NAME: study(args.seeds, args.out, args.overrides), "manifest": manifest()}
    print(f"\n{NAME} ({len(args.seeds)} seeds; normalised episode score at the end of the budget, mean, 95% CI, range)\n")
    print(records_table(out[NAME]["rows"]))
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "episode_study.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
