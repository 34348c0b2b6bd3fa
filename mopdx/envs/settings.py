"""The ``env`` config node: which domains are multi-turn episodes, and their budgets.

Torch-free on purpose: a config is checked before anything heavy is imported.  Refusals
(one line each, at config load): an unknown environment name, a domain ratio for an
environment domain the run's data cannot have, and what cannot run on episodes yet --
teachers with another tokenizer (their alignment re-tokenises one contiguous completion)
and the two-peer OPCoD loop (its privileged context is one prompt's solution).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from mopdx.errors import ConfigError
from mopdx.rules import BOOL, POSITIVE_INT, number, setting

# built-in environments: name -> "module:Class" (imported only when a run uses one)
BUILTIN = {
    "python_tool": "mopdx.envs.python_tool:PythonTool",
}
WILDCARD = "*"


@dataclass
class EnvConfig:
    # domain -> environment: a built-in name (python_tool), a plug-in's (the lab's oracle), or
    # module:Class; "*" = every domain. Domains not named are single-turn, as without this node.
    environments: dict[str, str] = field(default_factory=dict)
    max_turns: int = setting(4, POSITIVE_INT)  # assistant turns per episode
    max_tokens: int = setting(256, POSITIVE_INT)  # student + environment tokens after the first prompt
    timeout_s: float = setting(30.0, number(0, lo_open=True))  # per environment call; then the episode fails
    workers: int = setting(8, POSITIVE_INT)  # environment calls at once
    stop: list[str] = field(default_factory=list)  # strings that end a turn (e.g. a tool call's closing tag), beside data.stop
    # false: train on single-turn completions of the environment domains and evaluate them by episode
    # (the single-turn baseline of a multi-turn task)
    train: bool = setting(True, BOOL)


def known_environments() -> dict[str, str]:
    """Name -> ``module:Class`` of every environment a run can name (built-ins, then plug-ins')."""
    from mopdx import plugins

    out = dict(BUILTIN)
    for p in plugins.plugins():
        out.update(getattr(p, "environments", dict)())
    return out


def env_target(name: str) -> str:
    """The ``module:Class`` behind an environment name, or one line naming the known ones."""
    known = known_environments()
    target = known.get(name, name if ":" in name else None)
    if target is None:
        raise ConfigError(f"env.environments: unknown environment {name!r}; known: {', '.join(sorted(known))} (or give module:Class)")
    return target


def check_env(cfg: DictConfig) -> None:
    for i, stop in enumerate(cfg.env.stop):
        if not isinstance(stop, str) or not stop:
            raise ConfigError(f"env.stop[{i}]={stop!r}: a non-empty stop string")
    envs = cfg.env.environments
    if not envs:
        if not cfg.env.train:
            raise ConfigError("env.train=false without env.environments: it makes the environments' domains train single-turn and "
                              "evaluate by episode; name the environments (env.environments.<domain>=...) or drop env.train")
        return
    for d, name in envs.items():
        try:
            env_target(str(name))
        except ConfigError as exc:
            raise ConfigError(f"env.environments.{d}: {str(exc).split(': ', 1)[1]}") from None
    if cfg.model.cross_tokenizer:
        raise ConfigError("env.environments with model.cross_tokenizer=true: a teacher with another tokenizer is aligned on one contiguous "
                          "completion, not on an episode; give episode domains teachers with the student's tokenizer")
    if cfg.strategy.name == "opcod":
        raise ConfigError("env.environments with strategy opcod: its privileged context (a peer's own solution) is defined for "
                          "single-turn prompts; run multi-turn domains with mopd or camopd")
