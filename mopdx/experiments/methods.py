"""What a method name in ``compare`` means, and how one run of it is made.

A method is a strategy name (``mopd``, ``camopd``, ``module:Class``), an RL
baseline (``mix_rl``, ``cascade_rl``), ``baseline:<name>`` (``mopdx.experiments.baselines``)
or ``single_teacher:<domain>``; any of them may carry config overrides of its
own in brackets, ``camopd[strategy.rho=0.25,strategy.n_g=7]``, so that the
controls and ablations a reviewer asks for are arms of one comparison (same
seeds, same budget, one table) rather than separate commands.  Scenarios are
named method lists with the config files every arm runs on, one YAML each
under ``configs/experiment/scenarios/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from mopdx.config import configs_dir, load_config
from mopdx.errors import ConfigError
from mopdx.paths import scenario_names, scenarios_dir


def scenario(name: str) -> dict[str, list[str]]:
    """Scenario ``name`` (``configs/experiment/scenarios/<name>.yaml``): the config files every arm
    runs on (``configs``, relative to ``configs/``) and the arms (``methods``)."""
    path = scenarios_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown scenario {name!r}; known: {', '.join(scenario_names())} (files in {scenarios_dir()})")
    data = yaml.safe_load(path.read_text()) or {}
    methods, configs = data.get("methods"), data.get("configs", [])
    if not isinstance(methods, list) or not methods or not isinstance(configs, list) or set(data) - {"configs", "methods"}:
        raise ConfigError(f"{path}: a scenario is a mapping with 'methods' (a non-empty list) and optionally 'configs' (a list)")
    return {"configs": [str(c) for c in configs], "methods": [str(m) for m in methods]}


RL_METHODS = ("mix_rl", "cascade_rl")
_VARIANT = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<overrides>[^\[\]]*)\]$")


def split_variant(method: str) -> tuple[str, list[str]]:
    """``camopd[strategy.rho=0.25,strategy.n_g=7]`` -> (``camopd``, [the overrides]); a plain name -> (name, [])."""
    if "[" not in method and "]" not in method:
        return method, []
    m = _VARIANT.match(method)
    items = [o.strip() for o in m.group("overrides").split(",")] if m else []
    if not m or not items or not all("=" in o and o.split("=", 1)[0] for o in items):
        raise ConfigError(f"method {method!r}: write a variant as name[key=value,key=value], e.g. camopd[strategy.rho=0.25]")
    return m.group("base"), items


def run_dirname(method: str) -> str:
    """The run-folder stem of ``method`` (``:`` and brackets are not safe in every shell or file system)."""
    base, extra = split_variant(method)
    name = base.replace(":", "_")
    return name + "".join(f"_{o}" for o in extra).replace("/", "_")


def run_name(method: str, seed: int) -> str:
    """The folder of one seed of ``method`` inside a comparison folder."""
    return f"{run_dirname(method)}-seed{seed}"


def finished_runs(folder: Path, method: str) -> dict[int, Path]:
    """``{seed: run folder}`` of the method's runs in a comparison folder that wrote their summary,
    for the scripts that read a comparison after the fact (the naming lives here, beside ``run_name``)."""
    out = {}
    for path in folder.glob(f"{run_dirname(method)}-seed*/summary.json"):
        if m := re.fullmatch(r".*-seed(\d+)", path.parent.name):
            out[int(m.group(1))] = path.parent
    return dict(sorted(out.items()))


def scenario_configs(name: str) -> list[str]:
    """The config files (under ``configs/``) every arm of scenario ``name`` runs on."""
    return [str(configs_dir() / f) for f in scenario(name)["configs"]]


def scenario_methods(name: str, config_files: list[str], overrides: list[str]) -> list[str]:
    """A scenario's methods for this config: ``single_teacher:*`` becomes the single-teacher run of
    the last teacher domain (sorted), so the scenario fits whatever domains the lab is built with."""
    methods = scenario(name)["methods"]
    if "single_teacher:*" in methods:
        last = sorted(load_config("mopd", config_files, overrides).model.teachers)[-1]
        methods = [f"single_teacher:{last}" if m == "single_teacher:*" else m for m in methods]
    return methods


def base_strategy(method: str) -> str:
    """The strategy whose config a (bracket-free) method runs on: the baselines and single-teacher
    distillation are MOPD configs, Cascade RL a cascade one, any other method its own strategy."""
    if method.startswith(("baseline:", "single_teacher:")) or method == "mix_rl":
        return "mopd"
    return "cascade" if method == "cascade_rl" else method


def check_methods(methods: list[str], config_files: list[str], overrides: list[str]) -> None:
    """Load every arm's config before the first run starts: a typo in the tenth arm must not
    surface an hour into the comparison."""
    for method in methods:
        base, extra = split_variant(method)
        load_config(base_strategy(base), config_files, [*overrides, *extra])


def rl_overrides(config_files: list[str], overrides: list[str]) -> list[str]:
    """Overrides that turn a MOPD config into the same-budget RL baseline: the PG form with the
    GRPO advantage only (no teacher), groups of ``baseline.rl_group`` samples, and as many
    prompts per step as keeps ``data.batch_size x rollout.n`` sequences per step."""
    base = load_config("mopd", config_files, overrides)
    group = int(base.baseline.rl_group)
    sequences = int(base.data.batch_size) * int(base.rollout.n)
    if sequences % group:
        raise ConfigError(f"baseline.rl_group={group} must divide data.batch_size x rollout.n = {sequences} (the sequences per step every method gets)")
    return [*overrides, "loss.kind=pg", "loss.teacher_weight=0", "loss.reward_weight=1", f"rollout.n={group}", f"data.batch_size={sequences // group}"]


def interrupted_run(run_dir: Path) -> Path | None:
    """``run_dir`` when a killed comparison left it with a checkpoint but no summary, else None.

    Rerunning the comparison then continues that run in its own folder; starting it afresh
    would open ``<name>-2`` beside it while the table went on reading the unfinished one."""
    ckpts = run_dir / "checkpoints"
    if (run_dir / "config.yaml").is_file() and ckpts.is_dir() and any(ckpts.glob("*.ckpt")):
        return run_dir
    return None


def run_method(method: str, config_files: list[str], overrides: list[str], progress: bool, resume: Path | None = None) -> dict[str, Any]:
    """One run of ``method`` (module docstring); ``resume``: continue that run folder from its
    newest checkpoint (methods trained by ``fit``)."""
    from mopdx.run.fit import fit

    method, extra = split_variant(method)
    overrides = [*overrides, *extra]
    if method.startswith("baseline:"):
        from mopdx.experiments.baselines import run_baseline

        cfg = load_config("mopd", config_files, overrides)
        return run_baseline(method.split(":", 1)[1], cfg, Path(cfg.run.out_dir) / str(cfg.run.name), progress)
    if method in RL_METHODS:
        rl = rl_overrides(config_files, overrides)
        return fit(load_config(base_strategy(method), config_files, rl), resume=resume, progress=progress)
    if method.startswith("single_teacher:"):
        domain = method.split(":", 1)[1]
        base = load_config("mopd", config_files, overrides)
        if domain not in base.model.teachers:
            raise ConfigError(f"{method}: no teacher for domain {domain!r}; teachers: {sorted(base.model.teachers)}")
        if OmegaConf.is_dict(base.model.teachers[domain]):
            raise ConfigError(f"{method}: domain {domain!r} has a panel of teachers; single_teacher takes one folder")
        remap = [f"model.teachers.{d}={base.model.teachers[domain]}" for d in base.model.teachers]
        return fit(load_config("mopd", config_files, [*overrides, *remap]), resume=resume, progress=progress)
    return fit(load_config(method, config_files, overrides), resume=resume, progress=progress)
