"""``sweep-report``: best trials, parameter importances and plots of a study.

Writes into ``<sweep folder>/report/``: ``best_trials.md`` (the best trial, or
the Pareto front of a multi-objective study, with each trial's overrides and
run folder), ``trials.csv``, ``importances.json`` and plots -- optimisation
history, parallel coordinates, importances, and the Pareto front for two
objectives -- as PNG (matplotlib) and, when plotly is installed, HTML.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna

from mopdx.experiments.sweep import SweepSpec, make_storage
from mopdx.tables import records_table

log = logging.getLogger("mopdx")


def _best(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    try:
        return [study.best_trial]
    except ValueError:
        return []


def best_table(study: optuna.Study, spec: SweepSpec) -> str:
    """The best trial (or the Pareto front): objective values, overrides and run folder."""
    names = [o["metric"] for o in spec.objectives]
    rows = [{"trial": t.number, **dict(zip(names, t.values or [])), "overrides": f"`{' '.join(t.user_attrs.get('overrides', []))}`",
             "run folder": t.user_attrs.get("run_dir", "")} for t in _best(study)]
    return records_table(rows, floatfmt=".4f") if rows else "(no completed trial yet)"


def _importances(study: optuna.Study) -> dict[str, Any]:
    S = optuna.trial.TrialState
    if len(study.get_trials(states=(S.COMPLETE,))) < 2:
        return {}
    out: dict[str, Any] = {}
    for i, name in enumerate(study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]):
        try:
            out[name] = optuna.importance.get_param_importances(study, target=lambda t, i=i: t.values[i])
        except (RuntimeError, ValueError) as exc:  # e.g. a single distinct value per parameter
            out[name] = {"error": str(exc)}
    return out


def _plots(study: optuna.Study, spec: SweepSpec, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vm

    made: list[str] = []
    multi = len(study.directions) > 1
    names = [o["metric"] for o in spec.objectives]
    jobs: list[tuple[str, Any]] = [("parallel_coordinates", lambda: vm.plot_parallel_coordinate(study, target=(lambda t: t.values[0]) if multi else None, target_name=names[0]))]
    if multi:
        jobs.insert(0, ("pareto_front", lambda: vm.plot_pareto_front(study, target_names=names)))
        for i, n in enumerate(names):
            jobs.append((f"history_{i}", lambda i=i, n=n: vm.plot_optimization_history(study, target=lambda t: t.values[i], target_name=n)))
    else:
        jobs.insert(0, ("history", lambda: vm.plot_optimization_history(study, target_name=names[0])))
        jobs.append(("importances", lambda: vm.plot_param_importances(study)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for name, make in jobs:
            try:
                ax = make()
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                fig.tight_layout()
                fig.savefig(out / f"{name}.png", dpi=110)
                plt.close(fig)
                made.append(f"{name}.png")
            except (ValueError, RuntimeError, IndexError) as exc:  # too few trials for this plot
                log.info("skipped %s plot: %s", name, exc)
        try:
            import plotly  # noqa: F401
            from optuna import visualization as vp

            html = {"history": lambda: vp.plot_optimization_history(study, target=(lambda t: t.values[0]) if multi else None, target_name=names[0]),
                    "parallel_coordinates": lambda: vp.plot_parallel_coordinate(study, target=(lambda t: t.values[0]) if multi else None, target_name=names[0])}
            if multi:
                html["pareto_front"] = lambda: vp.plot_pareto_front(study, target_names=names)
            for name, make in html.items():
                try:
                    make().write_html(out / f"{name}.html")
                    made.append(f"{name}.html")
                except (ValueError, RuntimeError) as exc:
                    log.info("skipped %s.html: %s", name, exc)
        except ImportError:
            pass
    return made


def sweep_report(spec: SweepSpec) -> dict[str, Any]:
    """Write the report of ``spec``'s study; returns what was written and the best table."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=spec.name, storage=make_storage(spec))
    out = spec.folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = best_table(study, spec)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    failed = [f"trial {t.number}: {t.user_attrs.get('fail_reason', 'worker interrupted')}" for t in study.trials if t.state.name == "FAIL"]
    title = "Pareto front" if len(study.directions) > 1 else "Best trial"
    text = f"# {spec.name}: {title}\n\n{table}\n\ntrials: {counts}\n"
    if failed:
        text += "\nfailed:\n" + "\n".join(f"- {f}" for f in failed) + "\n"
    (out / "best_trials.md").write_text(text)
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    importances = _importances(study)
    (out / "importances.json").write_text(json.dumps(importances, indent=2))
    plots = _plots(study, spec, out)
    return {"out": str(out), "table": text, "importances": importances, "plots": plots, "counts": counts}
