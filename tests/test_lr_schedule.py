"""Learning-rate multiplier: warmup, then constant or cosine to a floor."""

from __future__ import annotations

import pytest

from mopdx.module import lr_factor


def test_warmup_is_linear() -> None:
    assert lr_factor(0, 10, 100, "constant", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, "constant", 0.1) == pytest.approx(1.0)


def test_constant_after_warmup() -> None:
    assert lr_factor(80, 10, 100, "constant", 0.1) == 1.0


def test_cosine_reaches_floor_and_stays() -> None:
    assert lr_factor(10, 10, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(150, 10, 100, "cosine", 0.1) == pytest.approx(0.1)


def test_refresh_lr_applies_the_new_schedule_after_a_resume() -> None:
    """A checkpoint holds the lr of its own schedule; extending max_steps must not reuse it."""
    from functools import partial
    from types import SimpleNamespace

    import torch

    from mopdx.module import lr_factor, refresh_lr

    p = torch.nn.Parameter(torch.zeros(1))
    short = torch.optim.SGD([p], lr=1.0)
    s1 = torch.optim.lr_scheduler.LambdaLR(short, partial(lr_factor, warmup=0, total=2, schedule="cosine", floor=0.0))
    s1.step()
    s1.step()  # the end of a 2-step run: lr at the floor
    state = short.state_dict()
    longer = torch.optim.SGD([p], lr=1.0)
    s2 = torch.optim.lr_scheduler.LambdaLR(longer, partial(lr_factor, warmup=0, total=8, schedule="cosine", floor=0.0))
    longer.load_state_dict(state)
    s2.last_epoch = 2
    assert longer.param_groups[0]["lr"] == 0.0
    refresh_lr(SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=s2)]))  # type: ignore[arg-type]
    assert longer.param_groups[0]["lr"] == lr_factor(2, warmup=0, total=8, schedule="cosine", floor=0.0) > 0.8
