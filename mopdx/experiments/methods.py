"""What a method name in ``compare`` means, and how one run of it is made.

A method is a strategy name (``mopd``, ``camopd``, ``module:Class``), an RL
baseline (``mix_rl``, ``cascade_rl``), ``baseline:<name>`` (``mopdx.experiments.baselines``)
or ``single_teacher:<domain>``; any of them may carry config overrides of its
own in brackets, ``camopd[strategy.rho=0.25,strategy.n_g=7]``, so that the
controls and ablations a reviewer asks for are arms of one comparison (same
seeds, same budget, one table) rather than separate commands.  Scenarios are
named method lists with the config files every arm runs on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mopdx.config import configs_dir, load_config
from mopdx.errors import ConfigError

# The first OPCoD lab v2 build whose pre-flight check passes (README, "The first build that passes").
OPCOD_READY = "experiment/opcod_v2_ready.yaml"
SCENARIOS: dict[str, dict[str, Any]] = {
    # The MOPD paper's comparison on the lab: MOPD and every baseline at equal budgets.
    "mopd": {"configs": [], "methods": [
        "mopd", "mix_rl", "cascade_rl", "baseline:offpolicy_sft", "baseline:mixed_sft", "baseline:merge_avg",
        "baseline:merge_task:0.3", "baseline:merge_task:0.6", "baseline:merge_task:1.0", "single_teacher:*",
    ]},
    # CaMOPD against MOPD on its lab scenario, with the controls (issue 16): random and
    # length-matched selection at the same rho, alternation only, selection only, rho and n_g.
    "camopd": {"configs": ["experiment/camopd_lab.yaml"], "methods": [
        "mopd", "camopd", "camopd[strategy.selector=random]", "camopd[strategy.selector=length_matched]",
        "camopd[strategy.select=false]", "camopd[strategy.alternate=false]",
        "camopd[strategy.rho=0.25]", "camopd[strategy.rho=0.75]", "camopd[strategy.n_g=1]", "camopd[strategy.n_g=7]",
    ]},
    # OPCoD and the controls its reviewers ask for (issue 17), each a 2x2 peer x domain table:
    # feedback off (self-distillation with the own solution: OPSD / SDPO), the peer's own
    # feedback, the other's shuffled across prompts, gating off, anchoring off (the leak rate
    # shows an answer-copying shortcut), one-way MOPD from the other peer, and domain-routed MOPD
    # (each domain taught by the initial peer strong at it: the specialists as MOPD's teachers).
    # On the lab v2 build whose pre-flight passes, where the teacher reads the own correct rollout
    # (`strategy.use_solution: true` in that config), so every arm keeps it and changes one thing.
    "opcod": {"configs": [OPCOD_READY], "methods": [
        "opcod", "opcod[strategy.feedback=false]", "opcod[strategy.feedback_source=self]",
        "opcod[strategy.feedback_source=shuffled]", "opcod[strategy.gating=false]", "opcod[strategy.anchoring=false]",
        "opcod[strategy.teacher=peer]", "opcod[strategy.teacher=routed]",
    ]},
    # OPCoD's teacher weights: the current ones, EMA at three decays, a copy refreshed every k steps.
    "opcod_teachers": {"configs": [OPCOD_READY], "methods": [
        "opcod[strategy.teacher=current]", "opcod[strategy.teacher=ema,strategy.ema_decay=0.9]", "opcod[strategy.teacher=ema,strategy.ema_decay=0.99]",
        "opcod[strategy.teacher=ema,strategy.ema_decay=0.999]", "opcod[strategy.teacher=refreshed,strategy.refresh_every=10]",
        "opcod[strategy.teacher=refreshed,strategy.refresh_every=25]",
    ]},
}
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
    return [str(configs_dir() / f) for f in SCENARIOS[name]["configs"]]


def scenario_methods(name: str, config_files: list[str], overrides: list[str]) -> list[str]:
    """A scenario's methods for this config: ``single_teacher:*`` becomes the single-teacher run of
    the last teacher domain (sorted), so the scenario fits whatever domains the lab is built with."""
    methods = list(SCENARIOS[name]["methods"])
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
        remap = [f"model.teachers.{d}={base.model.teachers[domain]}" for d in base.model.teachers]
        return fit(load_config("mopd", config_files, [*overrides, *remap]), resume=resume, progress=progress)
    return fit(load_config(method, config_files, overrides), resume=resume, progress=progress)
