"""From the ``env`` node to one environment instance per episode."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from omegaconf import DictConfig

from mopdx.data import Example
from mopdx.envs.base import Environment, SingleTurn
from mopdx.envs.episodes import EpisodeSpec
from mopdx.envs.settings import WILDCARD, env_target
from mopdx.errors import ConfigError


def environment_class(name: str) -> type:
    module_name, _, attr = env_target(name).partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"environment {name!r}: cannot import {module_name}:{attr} ({exc})") from None


def environment_factory(cfg: DictConfig) -> Callable[[Example], Environment] | None:
    """A function giving each episode a fresh environment of its domain (``SingleTurn`` for a domain
    without one), or None when the run names no environment (the single-turn path, unchanged)."""
    envs = {str(d): environment_class(str(n)) for d, n in cfg.env.environments.items()}
    if not envs:
        return None
    default = envs.get(WILDCARD, SingleTurn)

    def make(example: Example) -> Environment:
        return envs.get(example.domain, default)()

    return make


def episode_spec(cfg: DictConfig) -> EpisodeSpec:
    e = cfg.env
    return EpisodeSpec(max_turns=int(e.max_turns), max_tokens=int(e.max_tokens), timeout_s=float(e.timeout_s), workers=int(e.workers),
                       stop=tuple(str(s) for s in e.stop))
