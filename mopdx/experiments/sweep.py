"""``sweep``: Optuna studies over any dotted config keys.

A sweep spec (YAML, see ``sweeps/``) names the strategy, base configs and
overrides, one or more objectives (metric paths into the run's last eval
record: ``score.mean``, ``acc.reverse``, ``groups.general.recovered``,
``groups.domain.delta``), the search space, the number of trials, the
sampler, the pruner and the storage.  Every trial is an ordinary ``fit``
with ``key=value`` overrides (stored as the trial's user attributes) in its
own run folder, which is kept.

Storage: a SQLite file in the sweep folder by default, so rerunning the same
command continues the study; any SQLAlchemy URL (``postgresql://...``) or
``journal:<file>`` lets several workers on several machines run the same
command against one study.  A trial that raises (bad settings, NaN loss) is
recorded as failed with its reason and the study goes on; a trial whose
worker was killed is marked failed by the heartbeat and does not use up the
budget, so a resumed study reruns it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
import yaml

from mopdx.config import load_config
from mopdx.errors import ConfigError, TrainingError

log = logging.getLogger("mopdx")

SAMPLERS = ("tpe", "random", "nsga2", "cmaes")
PRUNERS = ("none", "median", "successive_halving")
INTERRUPTED = "interrupted"  # fail reason of a trial whose worker died (stale heartbeat)


@dataclass
class Param:
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "float":
            return trial.suggest_float(name, float(self.low), float(self.high), log=self.log, step=self.step)  # type: ignore[arg-type]
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))  # type: ignore[arg-type]
        return trial.suggest_categorical(name, self.choices)  # type: ignore[arg-type]


@dataclass
class SweepSpec:
    name: str
    strategy: str
    objectives: list[dict[str, str]]
    space: dict[str, Param]
    n_trials: int = 10
    configs: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    storage: str | None = None
    out_dir: str | None = None
    heartbeat_s: int = 10

    @property
    def folder(self) -> Path:
        return Path(self.out_dir or f"runs/sweeps/{self.name}")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.folder / 'study.db'}"

    @property
    def directions(self) -> list[str]:
        return [o["direction"] for o in self.objectives]


def load_spec(path: str | Path, storage: str | None = None) -> SweepSpec:
    """Read and check a sweep spec; every mistake is a one-line ``ConfigError``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no sweep spec at {p}; see sweeps/*.yaml for examples")
    raw = yaml.safe_load(p.read_text()) or {}
    known = set(SweepSpec.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {unknown}; known: {sorted(known)}")
    for key in ("name", "strategy", "objectives", "space"):
        if key not in raw:
            raise ConfigError(f"{p}: missing {key!r}")
    space = {}
    for key, spec in raw["space"].items():
        try:
            param = Param(**spec)
        except TypeError as exc:
            raise ConfigError(f"{p}: space.{key}: {exc}") from None
        if param.type not in ("float", "int", "categorical"):
            raise ConfigError(f"{p}: space.{key}.type must be float, int or categorical")
        if param.type == "categorical" and not param.choices:
            raise ConfigError(f"{p}: space.{key} is categorical: give choices")
        if param.type != "categorical" and (param.low is None or param.high is None or param.low > param.high):
            raise ConfigError(f"{p}: space.{key} needs low <= high")
        space[key] = param
    objectives = raw["objectives"]
    for o in objectives:
        if set(o) != {"metric", "direction"} or o["direction"] not in ("maximize", "minimize"):
            raise ConfigError(f"{p}: each objective is {{metric: <path>, direction: maximize|minimize}}; got {o}")
    spec = SweepSpec(**{**raw, "space": space, "objectives": objectives})
    if storage:
        spec.storage = storage
    if spec.sampler.get("name") not in SAMPLERS:
        raise ConfigError(f"{p}: sampler.name must be one of {SAMPLERS}")
    if spec.pruner.get("name") not in PRUNERS:
        raise ConfigError(f"{p}: pruner.name must be one of {PRUNERS}")
    # the space's keys and the overrides must be valid config keys: fail before any trial
    load_config(spec.strategy, spec.configs, [*spec.overrides, *(f"{k}={_example(v)}" for k, v in space.items())])
    return spec


def _example(p: Param) -> Any:
    return p.choices[0] if p.type == "categorical" else (int(p.low) if p.type == "int" else p.low)  # type: ignore[index, arg-type]


def metric_value(record: dict[str, Any], path: str) -> float:
    """``groups.general.recovered`` -> ``record["groups"]["general"]["recovered"]``."""
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"metric {path!r} is not in the eval record (keys here: {sorted(node) if isinstance(node, dict) else node})")
        node = node[part]
    return float(node)


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    s = dict(spec.sampler)
    name, seed = s.pop("name"), s.pop("seed", None)
    cls = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler, "nsga2": optuna.samplers.NSGAIISampler, "cmaes": optuna.samplers.CmaEsSampler}[name]
    return cls(seed=seed, **s)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    s = dict(spec.pruner)
    name = s.pop("name")
    if name == "none" or len(spec.objectives) > 1:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(**s)
    return optuna.pruners.SuccessiveHalvingPruner(**s)


def make_storage(spec: SweepSpec) -> Any:
    url = spec.storage_url
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental" in Optuna
        return optuna.storages.RDBStorage(url, heartbeat_interval=spec.heartbeat_s, grace_period=3 * spec.heartbeat_s)


def open_study(spec: SweepSpec, tries: int = 5) -> optuna.Study:
    """Create or load the study. Workers that start together on a fresh database race to
    create Optuna's tables (PostgreSQL: "duplicate key ... pg_type"); the loser retries."""
    import time

    for attempt in range(1, tries + 1):
        try:
            return optuna.create_study(
                study_name=spec.name, storage=make_storage(spec), sampler=make_sampler(spec), pruner=make_pruner(spec),
                directions=spec.directions, load_if_exists=True,
            )
        except Exception as exc:  # sqlalchemy errors of the schema race; anything else repeats and is raised
            if attempt == tries:
                raise ConfigError(f"cannot open study {spec.name!r} in {spec.storage_url}: {str(exc).splitlines()[0]}") from None
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


class PruneOnEval(pl.Callback):
    """Reports the objective after every periodic eval and stops the trial when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric, self.seen = trial, metric, 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        from mopdx.run.callbacks import PeriodicEval

        evaluator = next(c for c in trainer.callbacks if isinstance(c, PeriodicEval))  # type: ignore[attr-defined]
        for record in evaluator.history[self.seen:]:
            value = metric_value(record, self.metric)
            if not math.isnan(value):
                self.trial.report(value, record["step"])
        self.seen = len(evaluator.history)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {trainer.global_step}")


def _overrides(trial: optuna.Trial, spec: SweepSpec) -> list[str]:
    return [f"{k}={p.suggest(trial, k)}" for k, p in spec.space.items()]


def run_trial(trial: optuna.Trial, spec: SweepSpec, progress: bool = False) -> float | list[float]:
    """One ``fit`` with the trial's overrides; the objective(s) from its last eval."""
    from mopdx.experiments.compare import load_history
    from mopdx.run.fit import fit

    overrides = _overrides(trial, spec)
    name = f"trial-{trial.number:04d}"
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("run_dir", str(spec.folder / "runs" / name))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    try:
        cfg = load_config(spec.strategy, spec.configs, [*spec.overrides, *overrides, f"run.out_dir={spec.folder / 'runs'}", f"run.name={name}"])
        callbacks = [PruneOnEval(trial, spec.objectives[0]["metric"])] if len(spec.objectives) == 1 else []
        summary = fit(cfg, progress=progress, callbacks=callbacks)
        trial.set_user_attr("run_dir", summary["run_dir"])
        last = load_history(Path(summary["run_dir"]))[-1]  # also merges a co-distillation run's per-peer evals
        values = [metric_value(last, o["metric"]) for o in spec.objectives]
        if any(math.isnan(v) for v in values):
            raise TrainingError(f"objective is NaN ({dict(zip([o['metric'] for o in spec.objectives], values))})")
    except optuna.TrialPruned:
        raise
    except Exception as exc:  # recorded on the trial, then Optuna marks it failed and the study goes on
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        trial.set_user_attr("fail_reason", reason)
        log.warning("trial %d failed: %s", trial.number, reason)
        raise
    return values[0] if len(values) == 1 else values


def _used_budget(study: optuna.Study) -> int:
    """Trials that count against ``n_trials``: complete, pruned, and failed for a reason
    of their own -- not those whose worker was killed (no fail reason recorded)."""
    S = optuna.trial.TrialState
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state in (S.COMPLETE, S.PRUNED) or (t.state == S.FAIL and "fail_reason" in t.user_attrs))


def run_sweep(spec: SweepSpec, n_trials: int | None = None, progress: bool = False) -> optuna.Study:
    """Run (or continue) the study until ``n_trials`` trials have used the budget."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec.folder.mkdir(parents=True, exist_ok=True)
    (spec.folder / "spec.yaml").write_text(yaml.safe_dump({**spec.__dict__, "space": {k: v.__dict__ for k, v in spec.space.items()}}, sort_keys=False))
    study = open_study(spec)
    target = n_trials or spec.n_trials
    while True:
        if isinstance(study._storage, optuna.storages.RDBStorage):  # noqa: SLF001 -- heartbeats only exist there
            optuna.storages.fail_stale_trials(study)
        if _used_budget(study) >= target:
            break
        study.optimize(lambda t: run_trial(t, spec, progress), n_trials=1, catch=(Exception,))
    return study
