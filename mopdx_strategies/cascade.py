"""Cascade: one domain at a time, in sequence (a baseline): distillation, or RL (Cascade RL).

Run: ``python -m mopdx fit --strategy cascade``.  The step budget is split
into equal consecutive blocks, one per domain (``strategy.order``, default
the data's domains in order); each block trains only on its domain with its
teacher.  What the last block does to the earlier domains is the forgetting
that mixing (MOPD) avoids.  Each block has its own lr warmup and schedule
(``strategy.block_schedule``).  With ``loss.teacher_weight=0
loss.reward_weight=1`` each block is RL with verifier rewards on its domain:
the paper's Cascade RL baseline (``compare``'s ``cascade_rl``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from mopdx.config_checks import check_names
from mopdx.errors import ConfigError
from mopdx.rules import BOOL, setting
from mopdx.strategy import StepPlan, Strategy, StrategyConfig


@dataclass
class CascadeConfig(StrategyConfig):
    name: str = "cascade"
    order: list[str] = field(default_factory=list)  # empty: the data's domains, sorted
    block_schedule: bool = setting(True, BOOL)  # each block gets its own warmup + lr schedule


class CascadeStrategy(Strategy):
    """Domains in sequence, equal step blocks."""

    name = "cascade"
    Config = CascadeConfig

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        check_names("strategy.order", cfg.strategy.order, list(cfg.model.teachers),
                    source="domains with a model.teachers entry; [] = the data's domains, sorted", allow_empty=True)

    def __init__(self, cfg: DictConfig, domains: list[str]) -> None:
        super().__init__(cfg, domains)
        self.order = list(cfg.strategy.order) or sorted(domains)
        unknown = [d for d in self.order if d not in domains]
        if unknown:
            raise ConfigError(f"strategy.order names domain(s) {unknown} without training prompts; domains: {domains}")

    def schedule_blocks(self) -> int:
        """One lr schedule per domain block (``strategy.block_schedule``), as if each block were
        its own run -- what Cascade RL does; off, the blocks share one decaying schedule."""
        return len(self.order) if self.cfg.strategy.block_schedule else 1

    def plan(self, step: int) -> StepPlan:
        block = min(len(self.order) - 1, step * len(self.order) // max(1, int(self.cfg.train.max_steps)))
        domain = self.order[block]
        return StepPlan({domain: 1.0}, phase=f"cascade:{domain}")
