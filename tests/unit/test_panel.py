"""Several teachers on one sample (mopdx.backends.panel): each rule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mopdx.backends.base import Rollouts, ScoreRequest, TeacherOutput
from mopdx.backends.panel import TeacherPanel
from mopdx.distill.routing import route_and_score


class Fixed:
    """A teacher with fixed full log-probs ``[B, C, V]``: it answers any request from them."""

    def __init__(self, full: torch.Tensor) -> None:
        self.full = full

    def score(self, rollouts: Rollouts, request: ScoreRequest) -> TeacherOutput:
        ids = rollouts.completion_ids
        out = TeacherOutput(logps=self.full.gather(-1, ids.unsqueeze(-1)).squeeze(-1))
        if request.topk:
            out.topk_logps, out.topk_ids = self.full.topk(request.topk, dim=-1)
        if request.full:
            out.full_logps = self.full
        return out


def _rollouts(b: int = 3, c: int = 4, v: int = 6, seed: int = 0) -> Rollouts:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, v, (b, 2 + c), generator=g)
    return Rollouts(input_ids=ids, attention_mask=torch.ones_like(ids), prompt_len=2, completion_mask=torch.ones(b, c),
                    rollout_logps=torch.log_softmax(torch.randn(b, c, v, generator=g), -1).gather(-1, ids[:, 2:].unsqueeze(-1)).squeeze(-1),
                    domains=["d"] * b, prompt_index=torch.arange(b))


def _teacher(seed: int, b: int = 3, c: int = 4, v: int = 6) -> Fixed:
    return Fixed(torch.log_softmax(torch.randn(b, c, v, generator=torch.Generator().manual_seed(100 + seed)), -1))


@pytest.mark.parametrize("request_", [ScoreRequest(), ScoreRequest(topk=3), ScoreRequest(full=True)])
def test_a_panel_of_one_is_exactly_todays_path(request_: ScoreRequest) -> None:
    r, t = _rollouts(), _teacher(0)
    a = route_and_score(r, {"d": t}, request_)
    b = route_and_score(r, {"d": TeacherPanel(["only"], [t], "mixture")}, request_)
    for attr in ("logps", "topk_ids", "topk_logps", "full_logps"):
        x, y = getattr(a, attr), getattr(b, attr)
        assert (x is None and y is None) or torch.equal(x, y), attr


@pytest.mark.parametrize("rule", ["mixture", "advantage", "closest", "confident"])
def test_two_identical_teachers_are_one(rule: str) -> None:
    r, t = _rollouts(), _teacher(0)
    one = t.score(r, ScoreRequest(full=True))
    two = TeacherPanel(["a", "b"], [t, _teacher(0)], rule, weights=[0.3, 0.7]).score(r, ScoreRequest(full=rule != "advantage"))
    assert torch.allclose(one.logps, two.logps, atol=1e-6)
    if rule != "advantage":
        assert torch.allclose(one.full_logps, two.full_logps, atol=1e-6)


def test_the_mixture_is_the_weighted_mixture_distribution_and_its_top_k() -> None:
    r, ta, tb = _rollouts(), _teacher(0), _teacher(1)
    panel = TeacherPanel(["a", "b"], [ta, tb], "mixture", weights=[1, 3])
    out = panel.score(r, ScoreRequest(topk=2))
    mix = (0.25 * ta.full.exp() + 0.75 * tb.full.exp()).log()
    assert torch.allclose(out.logps, mix.gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1), atol=1e-6)
    assert torch.allclose(out.topk_logps, mix.topk(2, -1).values, atol=1e-6) and torch.equal(out.topk_ids, mix.topk(2, -1).indices)
    m = panel.metrics()
    assert m["a/share"] + m["b/share"] == pytest.approx(1.0) and set(m) == {"a/kl", "a/share", "b/kl", "b/share"}


def test_advantage_rule_is_the_weighted_sum_of_per_teacher_advantages() -> None:
    r, ta, tb = _rollouts(), _teacher(0), _teacher(1)
    out = TeacherPanel(["a", "b"], [ta, tb], "advantage", weights=[1, 1]).score(r, ScoreRequest())
    la, lb = ta.score(r, ScoreRequest()).logps, tb.score(r, ScoreRequest()).logps
    student = r.rollout_logps
    assert torch.allclose(out.logps - student, 0.5 * (la - student) + 0.5 * (lb - student), atol=1e-6)


def test_per_token_choice_picks_the_documented_teacher_and_ties_go_to_the_first() -> None:
    r, ta, tb = _rollouts(), _teacher(0), _teacher(1)
    la, lb = ta.score(r, ScoreRequest()).logps, tb.score(r, ScoreRequest()).logps
    closest = TeacherPanel(["a", "b"], [ta, tb], "closest").score(r, ScoreRequest(topk=2))
    pick_a = (la - r.rollout_logps).abs() <= (lb - r.rollout_logps).abs()
    assert torch.equal(closest.logps, torch.where(pick_a, la, lb))
    assert torch.equal(closest.topk_ids, torch.where(pick_a[..., None], ta.full.topk(2, -1).indices, tb.full.topk(2, -1).indices))
    confident = TeacherPanel(["a", "b"], [ta, tb], "confident")
    assert torch.equal(confident.score(r, ScoreRequest()).logps, torch.maximum(la, lb))
    assert confident.metrics()["a/share"] == pytest.approx(float((la >= lb).float().mean()))
    tie = TeacherPanel(["a", "b"], [ta, Fixed(ta.full.clone())], "confident")
    tie.score(r, ScoreRequest())
    assert tie.metrics()["a/share"] == 1.0


def test_scheduled_weights_move_linearly_over_the_run() -> None:
    panel = TeacherPanel(["a", "b"], [_teacher(0), _teacher(1)], "mixture", weights=[1, 0], weights_end=[0, 1], max_steps=10)
    assert panel.weights.tolist() == [1.0, 0.0]
    panel.at_step(5)
    assert panel.weights.tolist() == pytest.approx([0.5, 0.5])
    panel.at_step(20)
    assert panel.weights.tolist() == pytest.approx([0.0, 1.0])
    out = panel.score(_rollouts(), ScoreRequest())
    assert torch.allclose(out.logps, _teacher(1).score(_rollouts(), ScoreRequest()).logps, atol=1e-6) and not math.isnan(float(out.logps.sum()))


def test_served_teachers_of_a_panel_prefill_at_the_same_time() -> None:
    """Two served teachers that each wait 0.3 s on their server take ~0.3 s together, not 0.6 s."""
    import threading
    import time

    from mopdx.backends.base import ScoreRequest, TeacherOutput
    from mopdx.backends.panel import TeacherPanel

    class Slow:
        served = True

        def __init__(self, value: float) -> None:
            self.value, self.threads = value, set()

        def score(self, rollouts, request):
            self.threads.add(threading.get_ident())
            time.sleep(0.3)
            return TeacherOutput(logps=torch.full_like(rollouts.rollout_logps, self.value))

    a, b = Slow(-1.0), Slow(-2.0)
    panel = TeacherPanel(["a", "b"], [a, b], rule="confident")
    r = _rollouts()
    t0 = time.perf_counter()
    out = panel.score(r, ScoreRequest())
    assert time.perf_counter() - t0 < 0.55 and a.threads != b.threads
    assert torch.equal(out.logps[r.completion_mask.bool()], torch.full_like(out.logps, -1.0)[r.completion_mask.bool()])
