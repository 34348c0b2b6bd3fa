"""Learning-rate schedule (transformers' warmup schedules through mopdx.optim) and its refresh on resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from mopdx.optim import configure_optimizers, refresh_lr


def _lrs(schedule: str, steps: int, warmup: int = 10, total: int = 100, floor: float = 0.1, blocks: int = 1) -> list[float]:
    cfg = OmegaConf.create({"optim": {"lr": 1.0, "weight_decay": 0.0, "betas": [0.9, 0.98], "warmup_steps": warmup, "schedule": schedule,
                                      "min_lr_ratio": floor}, "train": {"max_steps": total}})
    out = configure_optimizers(cfg, [torch.nn.Parameter(torch.zeros(1))], blocks)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_is_linear_then_constant() -> None:
    lrs = _lrs("constant", 100)
    assert lrs[0] == pytest.approx(0.0) and lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(1.0) and lrs[80] == 1.0


def test_cosine_reaches_floor() -> None:
    lrs = _lrs("cosine", 101)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.55)
    assert lrs[100] == pytest.approx(0.1)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))


def test_refresh_lr_applies_the_new_schedule_after_a_resume() -> None:
    """A checkpoint holds the lr of its own schedule; extending max_steps must not reuse it."""
    def make(total: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        cfg = OmegaConf.create({"optim": {"lr": 1.0, "weight_decay": 0.0, "betas": [0.9, 0.98], "warmup_steps": 0, "schedule": "cosine",
                                          "min_lr_ratio": 0.0}, "train": {"max_steps": total}})
        out = configure_optimizers(cfg, [torch.nn.Parameter(torch.zeros(1))])
        return out["optimizer"], out["lr_scheduler"]["scheduler"]

    short, s1 = make(2)
    s1.step()
    s1.step()  # the end of a 2-step run: lr at the floor
    longer, s2 = make(8)
    longer.load_state_dict(short.state_dict())
    s2.last_epoch = 2
    assert longer.param_groups[0]["lr"] == pytest.approx(0.0)
    refresh_lr(SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=s2)]))  # type: ignore[arg-type]
    assert longer.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 2 / 8)).item()))


def test_each_block_gets_its_own_warmup_and_schedule() -> None:
    """Cascade RL: three blocks of 100 steps, each as if it were a run of its own."""
    whole = _lrs("cosine", 100, total=100)
    blocks = _lrs("cosine", 300, total=300, blocks=3)
    assert blocks[:100] == pytest.approx(whole)
    assert blocks[100:200] == pytest.approx(whole) and blocks[200:] == pytest.approx(whole)
    assert blocks[100] == 0.0 and blocks[99] == pytest.approx(whole[99])  # warmup again at the block start


def test_cascade_asks_for_one_schedule_per_domain() -> None:
    from mopdx.config import load_config
    from mopdx_strategies.cascade import CascadeStrategy

    cfg = load_config("cascade", [], ["train.max_steps=6"])
    assert CascadeStrategy(cfg, ["down", "sort", "up"]).schedule_blocks() == 3
    cfg = load_config("cascade", [], ["train.max_steps=6", "strategy.block_schedule=false"])
    assert CascadeStrategy(cfg, ["down", "sort", "up"]).schedule_blocks() == 1
