"""One engine lent in turn (mopdx.backends.turns): a model's weights are loaded exactly when the
engine last held another model's, or the model changed since."""

from __future__ import annotations

import torch

from mopdx.backends.base import Sampling
from mopdx.backends.turns import TakeTurns


class FakeEngine:
    """Samples "the weights it holds": returns the first weight's value."""

    def __init__(self) -> None:
        self.held: dict[str, torch.Tensor] = {}

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.held = {k: v.clone() for k, v in state_dict.items()}

    def generate(self, prompt_ids, domains, sampling):  # type: ignore[no-untyped-def]
        return float(self.held["weight"].flatten()[0])


def test_each_model_samples_its_own_current_weights_with_a_load_only_when_needed() -> None:
    a, b = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(2.0)
    shared = TakeTurns(FakeEngine())
    ta, tb = shared.lend_to(a), shared.lend_to(b)
    s = Sampling()
    assert [ta.generate([], [], s), ta.generate([], [], s), tb.generate([], [], s), ta.generate([], [], s)] == [1.0, 1.0, 2.0, 1.0]
    assert shared.loads == 3
    with torch.no_grad():
        a.weight.fill_(3.0)
    assert ta.generate([], [], s) == 1.0  # nobody said the model changed: no load (the loop says it after every step)
    shared.models_changed()
    assert ta.generate([], [], s) == 3.0 and shared.loads == 4
