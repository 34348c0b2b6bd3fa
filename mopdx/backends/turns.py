"""One sampling engine lent in turn to several trained models (co-distillation's two peers).

Why: an in-process vLLM engine holds one set of weights, and a process can hold
only one such engine at a time (engines share vLLM's global state).  A loop that
trains two models (OPCoD's peers) still samples through vLLM by lending the one
engine to each model in turn: a model's weights are loaded into the engine when
the engine last held another model's weights, or when the model has changed
since (an optimiser step).  No stale weights are ever sampled; the cost is one
weight load per switch (two or three per co-distillation step: each peer's
rollouts, and the feedback the other peer writes).
"""

from __future__ import annotations

from typing import Protocol

import torch

from mopdx.backends.base import Rollouts, Sampling


class SyncedEngine(Protocol):
    """A rollout backend that samples from weights loaded into it (``VLLMRolloutBackend``)."""

    def generate(self, prompt_ids: list[list[int]], domains: list[str], sampling: Sampling) -> Rollouts: ...

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None: ...


class TakeTurns:
    """The engine and whose weights it holds now (``None``: nobody's current ones)."""

    def __init__(self, engine: SyncedEngine) -> None:
        self.engine = engine
        self.holder: Turn | None = None
        self.loads = 0  # weight loads so far (a test and the logs read it)

    def lend_to(self, model: torch.nn.Module) -> Turn:
        """A rollout backend that samples ``model``'s current weights through the shared engine."""
        return Turn(self, model)

    def models_changed(self) -> None:
        """After an optimiser step (or a checkpoint load): the engine's weights are nobody's now."""
        self.holder = None


class Turn:
    """One model's view of the shared engine: a ``RolloutBackend`` like any other."""

    def __init__(self, shared: TakeTurns, model: torch.nn.Module) -> None:
        self.shared, self.model = shared, model

    def generate(self, prompt_ids: list[list[int]], domains: list[str], sampling: Sampling) -> Rollouts:
        if self.shared.holder is not self:
            self.shared.engine.sync_weights(self.model.state_dict())
            self.shared.holder = self
            self.shared.loads += 1
        return self.shared.engine.generate(prompt_ids, domains, sampling)
