"""``compare``: several strategies on the same scenario, seeds and budget.

Each (strategy, seed) pair is an ordinary ``fit`` run (its folder is kept
under the comparison folder), so any run can be inspected or resumed on its
own.  The comparison reads the runs' ``eval.jsonl`` histories and writes a
table (final accuracy and normalised score, mean and 95% confidence interval over
seeds, and each method's budget: optimiser steps, sequences per step, sampled tokens) and
a plot of accuracy over steps per domain.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mopdx.experiments.budget import budget_metrics, recovery_curve
from mopdx.experiments.methods import interrupted_run, run_method, run_name
from mopdx.run.callbacks import read_history
from mopdx.scores import group_metrics, normalised_scores
from mopdx.tables import records_table


def run_comparison(
    strategies: list[str],
    seeds: list[int],
    config_files: list[str],
    overrides: list[str],
    out_dir: Path | None = None,
    progress: bool = True,
    groups: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Fit every strategy with every seed, then summarise; returns the summary."""
    out = out_dir or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    for strategy in strategies:
        for seed in seeds:
            name = run_name(strategy, seed)
            summary_path = out / name / "summary.json"
            if summary_path.is_file():  # finished earlier: rerunning the command resumes the comparison
                summary = json.loads(summary_path.read_text())
            else:
                summary = run_method(strategy, config_files, [*overrides, f"train.seed={seed}", f"run.out_dir={out}", f"run.name={name}"], progress,
                                     resume=interrupted_run(out / name))
            history = load_history(out / name)
            runs.setdefault(strategy, []).append({"seed": seed, "summary": summary, "history": history})
    if not groups:  # the scenario's own groups (eval.groups), when its runs recorded them
        groups = next((r["summary"]["group_domains"] for rs in runs.values() for r in rs if r["summary"].get("group_domains")), None)
    result = summarise_comparison(runs, groups)
    paper, rows = paper_table(runs)
    result["paper_table"], result["paper_rows"] = paper, rows
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    (out / "comparison.md").write_text(result["table"] + "\n\n" + paper + "\n")
    _write_csv(rows, out / "comparison.csv")
    plot_scores(rows, out / "comparison_scores.png")
    plot_comparison(runs, out / "comparison.png")
    if groups and len(groups) == 2:
        plot_tradeoff(runs, groups, out / "comparison_tradeoff.png")
        plot_recovery(runs, groups, out / "comparison_recovery.png")
    result["out_dir"] = str(out)
    return result


def reference_teachers(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Each domain's specialist-teacher accuracy, the common reference of the normalised score.

    A ``single_teacher:<d>`` run routes every domain to one teacher, so its own summary
    normalises against that teacher (weak or undefined off its domain); every method is
    scored against the per-domain teachers instead, taken from the other runs.
    """
    for method, rs in runs.items():
        if not method.startswith("single_teacher:") and rs and rs[0]["summary"].get("teacher"):
            return dict(rs[0]["summary"]["teacher"])
    return {}


def scored(run: dict[str, Any], ref: dict[str, float]) -> dict[str, float]:
    """A run's normalised scores against the reference teachers (``reference_teachers``), which
    both tables use: a single-teacher run's own summary scores only its teacher's domain (its
    ``inc`` "teacher" is the ``rot`` one), and read 0.876 there against -0.068 here."""
    s = run["summary"]
    return normalised_scores(s["final"], s["student0"], ref or s["teacher"])


def paper_table(runs: dict[str, list[dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    """Per-domain accuracy and normalised score, their mean with its 95% CI over seeds, the range over
    seeds and the budget (MOPD paper style), every method normalised against the same per-domain teachers."""
    domains = sorted({d for rs in runs.values() for r in rs for d in r["summary"]["final"]})
    ref = reference_teachers(runs)
    rows, shown = [], []
    for method, rs in runs.items():
        acc = {d: mean_ci([r["summary"]["final"][d] for r in rs]) for d in domains}
        scores = [scored(r, ref) for r in rs]
        norm = {d: mean_ci([sc.get(d, math.nan) for sc in scores]) for d in domains}
        means = [sc["mean"] for sc in scores]
        mean = mean_ci(means)
        lo, hi = (float(np.nanmin(means)), float(np.nanmax(means))) if not np.isnan(means).all() else (math.nan, math.nan)
        budget = _budget(rs)
        rows.append({"method": method, **{f"{d}_acc": acc[d][0] for d in domains}, **{f"{d}_norm": norm[d][0] for d in domains},
                     "mean_norm": mean[0], "mean_norm_ci95": mean[1], "mean_norm_min": lo, "mean_norm_max": hi, "seeds": len(rs), **budget})
        shown.append({"method": method, **{f"{d} acc": acc[d][0] for d in domains}, **{f"{d} norm": norm[d][0] for d in domains},
                      # no teachers to normalise against (co-distillation's peers): n/a, not "nan ± nan"
                      "mean norm ± 95% CI": "n/a" if math.isnan(mean[0]) else f"**{mean[0]:.3f}** ± {mean[1]:.3f}",
                      "range over seeds": "n/a" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]",
                      "steps": budget["steps"], "seqs/step": _shown(budget["sequences_per_step"]),
                      "sampled tok": _shown(budget["sampled_tokens"])})
    return records_table(shown), rows


def _budget(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """A method's budget as its runs recorded it (mean sampled tokens over seeds). Runs written before
    a strategy counted its budget give NaN, not 0, so the table cannot claim a free method."""
    budgets = [r["summary"].get("budget") or {"steps": r["summary"].get("steps", 0)} for r in rs]
    return {"steps": budgets[0].get("steps", 0), "sequences_per_step": budgets[0].get("sequences_per_step", math.nan),
            "sampled_tokens": float(np.mean([b.get("sampled_tokens", math.nan) for b in budgets]))}


def _shown(count: float) -> str:
    """A count as the table shows it: thousands separators (tabulate would print 6.62e+05 as
    662000.000), ``n/a`` where the runs did not record it."""
    return "n/a" if math.isnan(count) else f"{round(count):,}"


def plot_scores(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean normalised score per method with its 95% confidence interval over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 3.4))
    xs = range(len(rows))
    means = [r["mean_norm"] for r in rows]
    err = [0.0 if math.isnan(r["mean_norm_ci95"]) else r["mean_norm_ci95"] for r in rows]
    ax.bar(xs, means, yerr=err, capsize=4, color=["tab:red" if r["method"] == "mopd" else "tab:gray" for r in rows])
    ax.set_xticks(list(xs), [r["method"].replace("baseline:", "") for r in rows], rotation=25, ha="right")
    ax.set_ylabel("mean normalised score")
    ax.axhline(0, color="black", lw=0.6)
    _save(fig, path)


def load_history(run_dir: Path) -> list[dict[str, Any]]:
    """A run's eval history, one record per step in step order (``read_history``: a file
    from a resumed or killed run may repeat steps or end in half a line); a co-distillation
    run's per-peer files are merged into one history keyed ``<peer>/<domain>`` (as in its
    ``summary.json``)."""
    single = run_dir / "eval.jsonl"
    if single.is_file():
        return read_history(single)
    merged: dict[int, dict[str, float]] = {}
    for path in sorted(run_dir.glob("eval_*.jsonl")):
        peer = path.stem[len("eval_"):]
        for rec in read_history(path):
            merged.setdefault(rec["step"], {}).update({f"{peer}/{d}": v for d, v in rec["acc"].items()})
    return [{"step": step, "acc": acc} for step, acc in sorted(merged.items())]


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    pd.DataFrame(rows).to_csv(path, index=False)


# Two-sided 95% quantiles of Student's t, by degrees of freedom (1-30; beyond that ~1.96).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student's t over seeds), ignoring NaN
    (an undefined normalised score); the half-width is NaN with fewer than two seeds."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    if arr.size < 2:
        return float(arr.mean()), math.nan
    t = T975[arr.size - 2] if arr.size - 1 <= len(T975) else 1.96
    return float(arr.mean()), float(t * arr.std(ddof=1) / math.sqrt(arr.size))


def summarise_comparison(runs: dict[str, list[dict[str, Any]]], groups: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Mean and 95% confidence interval over seeds of final accuracy and normalised score.

    With ``groups`` (e.g. general / domain), each group adds two columns: the change
    from step 0 in accuracy points (preservation) and the recovered fraction of the
    student-teacher gap (recovery), both from each run's own step-0 and teacher figures;
    the first group (the one being recovered) also gets the budget-limited figures of
    ``mopdx.experiments.budget``: the area under its recovery curve and the steps to 80%.
    """
    domains = sorted({d for rs in runs.values() for r in rs for d in r["summary"]["final"]})
    groups = groups or {}
    ref = reference_teachers(runs)
    stats: dict[str, Any] = {}
    by_seed: dict[str, dict[int, dict[tuple[str, str], float]]] = {}
    shown = []
    fmt = lambda ms: "n/a" if math.isnan(ms[0]) else f"{ms[0]:.3f} ± {ms[1]:.3f}"
    for strategy, rs in runs.items():
        accs = {d: mean_ci([r["summary"]["final"][d] for r in rs]) for d in domains}
        norm = mean_ci([scored(r, ref)["mean"] for r in rs])
        per_run = [group_metrics(r["summary"]["final"], r["summary"]["student0"], r["summary"]["teacher"], groups) for r in rs]
        grp = {g: {k: mean_ci([m[g][k] for m in per_run]) for k in ("acc", "delta", "recovered")} for g in groups}
        budget = [budget_metrics(r["history"], r["summary"], groups) for r in rs]
        for g in groups:
            grp[g].update({k: mean_ci([b[g][k] for b in budget]) for k in ("auc", "steps_to")})
            grp[g]["steps_to_reached"] = sum(not math.isnan(b[g]["steps_to"]) for b in budget)
        stats[strategy] = {"acc": accs, "normalised_mean": norm, "groups": grp, "seeds": [r["seed"] for r in rs]}
        by_seed[strategy] = {r["seed"]: {**{(g, k): m[g][k] for g in groups for k in ("delta", "recovered")},
                                         **{(g, k): b[g][k] for g in groups for k in ("auc", "steps_to")}} for r, m, b in zip(rs, per_run, budget)}
        row = {"strategy": strategy, **{f"{d} acc": fmt(v) for d, v in accs.items()}, "normalised mean": fmt(norm)}
        for i, g in enumerate(groups):
            row.update({f"{g} Δ from step 0": fmt(grp[g]["delta"]), f"{g} recovered": fmt(grp[g]["recovered"])})
            if i == 0:
                row.update({f"{g} recovery AUC": fmt(grp[g]["auc"]),
                            f"{g} steps to 80% (runs)": f"{fmt(grp[g]['steps_to'])} ({grp[g]['steps_to_reached']}/{len(rs)})"})
        shown.append(row)
    table = records_table(shown)
    for strategy, rs in runs.items():
        if rs and rs[0]["summary"].get("strong_domain"):
            stats[strategy]["peer_changes"], peer_table = peer_change_table(rs)
            table += f"\n\n{strategy}: peer x domain, change from step 0 (mean ± 95% CI over seeds)\n\n{peer_table}"
    paired: dict[str, Any] = {}
    if len(groups) == 2 and len(runs) > 1:
        paired, paired_md = paired_differences(by_seed, list(groups))
        table += f"\n\n{paired_md}"
    return {"domains": domains, "groups": groups, "strategies": stats, "paired": paired, "table": table}


def paired_differences(by_seed: dict[str, dict[int, dict[tuple[str, str], float]]], groups: list[str]) -> tuple[dict[str, Any], str]:
    """Each arm minus the first arm, paired by seed (mean ± 95% CI of the per-seed differences):
    the recovered group's AUC and final recovered fraction, the preserved group's change.

    Why paired: arms that share a seed share its data order and sampling stream, so the
    per-seed difference cancels what the seed does to both; its interval is the one that says
    whether one method beats the other.  Seeds missing from either arm are left out."""
    first, rest = next(iter(by_seed)), list(by_seed)[1:]
    keys = [(groups[0], "auc"), (groups[0], "recovered"), (groups[1], "delta")]
    out, rows = {}, []
    for arm in rest:
        seeds = sorted(set(by_seed[arm]) & set(by_seed[first]))
        diffs = {f"{g} {k}": mean_ci([by_seed[arm][s][(g, k)] - by_seed[first][s][(g, k)] for s in seeds]) for g, k in keys}
        out[arm] = {**{k: {"mean": v[0], "ci95": v[1]} for k, v in diffs.items()}, "seeds": seeds}
        rows.append({"strategy": arm, **{f"{k} minus {first}": "n/a" if math.isnan(v[0]) else f"{v[0]:+.3f} ± {v[1]:.3f}" for k, v in diffs.items()},
                     "seeds": len(seeds)})
    return out, f"paired by seed, minus {first} (mean ± 95% CI of the per-seed differences)\n\n{records_table(rows)}"


def peer_change_table(rs: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """OPCoD's 2x2 over seeds: each peer's before / after / change per domain, strong domain marked."""
    strong = rs[0]["summary"]["strong_domain"]
    keys = sorted(rs[0]["summary"]["final"])
    out: dict[str, Any] = {}
    shown = []
    for k in keys:
        peer, domain = k.split("/", 1)
        before = mean_ci([r["summary"]["student0"][k] for r in rs])
        after = mean_ci([r["summary"]["final"][k] for r in rs])
        change = mean_ci([r["summary"]["final"][k] - r["summary"]["student0"][k] for r in rs])
        out[k] = {"before": before, "after": after, "change": change}
        shown.append({"peer": peer, "domain": domain, "role": "strong" if strong.get(peer) == domain else "weak",
                      "before": f"{before[0]:.3f} ± {before[1]:.3f}", "after": f"{after[0]:.3f} ± {after[1]:.3f}", "change": f"{change[0]:+.3f} ± {change[1]:.3f}"})
    return out, records_table(shown)


def _accuracies_by_step(rs: list[dict[str, Any]]) -> dict[int, list[dict[str, float]]]:
    """Eval accuracies of all seeds of one strategy, grouped by step."""
    out: dict[int, list[dict[str, float]]] = {}
    for r in rs:
        for h in r["history"]:
            out.setdefault(h["step"], []).append(h["acc"])
    return dict(sorted(out.items()))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def plot_comparison(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Accuracy over steps, one panel per domain, one line (mean, min-max band) per strategy."""
    plt = _pyplot()
    by_step = {strategy: _accuracies_by_step(rs) for strategy, rs in runs.items()}
    domains = sorted({d for steps in by_step.values() for accs in steps.values() for a in accs for d in a})
    fig, axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.2), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        for strategy, steps in by_step.items():
            xs = list(steps)
            per_step = [[a[domain] for a in accs if domain in a] for accs in steps.values()]
            ax.plot(xs, [statistics.fmean(v) for v in per_step], marker="o", label=strategy)
            ax.fill_between(xs, [min(v) for v in per_step], [max(v) for v in per_step], alpha=0.2)
        ax.set_title(domain)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend()
    _save(fig, path)


def group_accuracy(acc: dict[str, float], domains: list[str]) -> float:
    vals = [acc[d] for d in domains if d in acc]
    return float(np.mean(vals)) if vals else math.nan


def plot_tradeoff(runs: dict[str, list[dict[str, Any]]], groups: dict[str, list[str]], path: Path) -> None:
    """One trajectory per strategy in (group-1 accuracy, group-2 accuracy), e.g. general vs domain."""
    (gx, dx), (gy, dy) = list(groups.items())
    fig, ax = _pyplot().subplots(figsize=(4.8, 4.2))
    for strategy, rs in runs.items():
        steps = _accuracies_by_step(rs)
        xs = [float(np.mean([group_accuracy(a, dx) for a in accs])) for accs in steps.values()]
        ys = [float(np.mean([group_accuracy(a, dy) for a in accs])) for accs in steps.values()]
        ax.plot(xs, ys, marker="o", label=strategy)
        ax.annotate(f"step {list(steps)[-1]}", (xs[-1], ys[-1]), fontsize=7)
    ax.set_xlabel(f"{gx} accuracy ({', '.join(dx)})")
    ax.set_ylabel(f"{gy} accuracy ({', '.join(dy)})")
    ax.legend()
    _save(fig, path)


def plot_recovery(runs: dict[str, list[dict[str, Any]]], groups: dict[str, list[str]], path: Path) -> None:
    """The first group's recovered fraction over steps, one line per strategy (mean and 95% CI band
    over seeds): the curve under which the recovery AUC is the area, on one axis for every arm."""
    name, domains = next(iter(groups.items()))
    fig, ax = _pyplot().subplots(figsize=(5.6, 3.8))
    for strategy, rs in runs.items():
        curves = [dict(recovery_curve(r["history"], r["summary"]["student0"], r["summary"]["teacher"], domains)) for r in rs]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        stats = [mean_ci([c[s] for c in curves]) for s in steps]
        mean = np.array([m for m, _ in stats])
        half = np.nan_to_num(np.array([h for _, h in stats]))
        ax.plot(steps, mean, marker="o", ms=3, label=strategy)
        ax.fill_between(steps, mean - half, mean + half, alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{name} recovered fraction ({', '.join(domains)})")
    ax.axhline(0.8, color="gray", lw=0.8, ls="--")
    ax.legend(fontsize=7)
    _save(fig, path)
