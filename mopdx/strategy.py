"""The strategy plug-in contract and registry.

A strategy decides two things the MOPD step leaves open: *which prompts* a
step trains on (the schedule: domains and their proportions) and *which
scored rollouts* enter the loss (sample selection, after teacher prefill and
before the backward pass).  Everything else -- sampling, routing, prefill,
the loss -- is shared.  Strategies live outside the framework and are found
through the ``mopdx.strategies`` entry-point group or a ``module:Class`` spec.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import DictConfig

from mopdx.errors import ConfigError

if TYPE_CHECKING:  # config loading reads strategies' Config nodes; torch loads only when a step runs
    import torch

    from mopdx.backends.base import Rollouts, TeacherOutput

ENTRY_POINT_GROUP = "mopdx.strategies"


@dataclass
class StrategyConfig:
    """Base of every strategy's config node (``strategy`` in the run config); strategies subclass it."""

    name: str = "mopd"


@dataclass
class StepPlan:
    """The prompt pool of one step: domain -> share of the batch, and a phase label for logs."""

    domain_ratios: dict[str, float]
    phase: str = "mix"


class Strategy:
    """Base class: uniform mixing, keep every sample.  Override what differs.

    ``cfg`` is the whole run config (read-only); ``self.cfg.strategy`` is
    this strategy's own node, typed by ``Config``.
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    # Which training loop runs the strategy: "distill" (a student and frozen teachers,
    # mopdx.distill.module) or "codistill" (trainable peers teaching each other,
    # mopdx.codistill.module; its hooks are in mopdx.codistill.contract).
    loop: ClassVar[str] = "distill"

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Raise ``ConfigError`` for invalid values of ``cfg.strategy``.

        Called by ``load_config`` right after the merge, before any data, model or lab
        artifact is touched, so a typo in a strategy parameter costs seconds, not a build.
        Checks that need the training data (domains present) belong in ``__init__``.
        """

    def __init__(self, cfg: DictConfig, domains: list[str]) -> None:
        self.cfg = cfg
        self.domains = list(domains)

    def schedule_blocks(self) -> int:
        """Consecutive blocks of ``train.max_steps`` that each get their own lr warmup and
        schedule (``mopdx.optim``); 1 = one schedule for the whole run."""
        return 1

    def plan(self, step: int) -> StepPlan:
        """Which domains this step samples prompts from, and in what shares."""
        ratios = dict(self.cfg.data.domain_ratios) or {d: 1.0 for d in self.domains}
        return StepPlan(domain_ratios=ratios)

    def select(self, step: int, plan: StepPlan, rollouts: Rollouts, teacher: TeacherOutput) -> torch.Tensor:
        """Indices of the rollouts that enter the loss (default: all of them)."""
        import torch

        return torch.arange(len(rollouts))

    def metrics(self) -> dict[str, float]:
        """Extra scalars to log after a step (e.g. selection statistics)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Anything beyond the global step needed to continue the same schedule."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def available_strategies() -> dict[str, str]:
    """Registered strategy names -> ``module:Class`` targets."""
    return dict(_registered())


@cache
def _registered() -> tuple[tuple[str, str], ...]:
    # Scanning the installed distributions costs ~25 ms; every load_config asks.
    return tuple((ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP))


def get_strategy_class(name: str) -> type[Strategy]:
    """Resolve ``name`` (registered name or ``module:Class``) to a Strategy subclass."""
    registered = available_strategies()
    target = registered.get(name, name if ":" in name else None)
    if target is None:
        known = ", ".join(sorted(registered)) or "(none: is mopdx installed with `pip install -e .`?)"
        raise ConfigError(f"unknown strategy {name!r}; known strategies: {known} (or give module:Class)")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load strategy {name!r} from {target!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"strategy {name!r} ({target}) is not a subclass of mopdx.strategy.Strategy")
    return cls
