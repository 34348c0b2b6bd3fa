"""RL with verifier rewards: the GRPO advantage, its combination with the teacher's, and pure-RL runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mopdx import advantages, losses
from mopdx.config import load_config
from mopdx.errors import ConfigError


def test_grpo_advantage_on_a_hand_computed_group() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    adv = advantages.grpo_advantages(rewards, groups)
    # group 0: mean 0.5, population std 0.5 -> +-1; group 1: all equal -> 0
    # group 2: mean 0.25, std sqrt(0.1875) = 0.4330 -> -0.577, -0.577, 1.732, -0.577
    expected = torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -0.57735, -0.57735, 1.73205, -0.57735])
    assert torch.allclose(adv, expected, atol=1e-4)
    dr = advantages.grpo_advantages(rewards, groups, std_normalise=False)  # Dr. GRPO: centred only
    assert torch.allclose(dr[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert torch.equal(dr[4:8], torch.zeros(4))


def test_all_equal_rewards_give_zero_advantage_and_zero_gradient() -> None:
    rewards, groups = torch.zeros(6), torch.tensor([3, 3, 3, 7, 7, 7])  # any group ids
    assert torch.equal(advantages.grpo_advantages(rewards, groups), torch.zeros(6))
    assert torch.equal(advantages.grpo_advantages(torch.ones(6), groups), torch.zeros(6))


def test_reward_sign_keeps_one_half_of_the_advantage() -> None:
    adv = torch.tensor([1.0, -1.0, 0.0, 1.732, -0.577])
    assert torch.equal(advantages.keep_sign(adv, "both"), adv)
    assert torch.equal(advantages.keep_sign(adv, "negative"), torch.tensor([0.0, -1.0, 0.0, 0.0, -0.577]))
    assert torch.equal(advantages.keep_sign(adv, "positive"), torch.tensor([1.0, 0.0, 0.0, 1.732, 0.0]))
    with pytest.raises(ValueError, match="unknown reward sign"):
        advantages.keep_sign(adv, "neg")
    # through the loss: the negative half on the hand-computed batch below (GRPO: +1, -1, 0, 0)
    student, batch = _batch(torch.tensor([1.0, 0.0, 1.0, 1.0]))
    spec = losses.LossSpec(kind="pg", teacher_weight=0.0, reward_weight=1.0, reward_sign="negative")
    const = losses.batch_constants(spec, batch.sampled(student).detach(), batch)
    assert torch.allclose(const.per_token["advantage"], torch.tensor([0.0, -1.0, 0.0, 0.0])[:, None] * batch.mask)


def _batch(rewards: torch.Tensor) -> tuple[torch.Tensor, losses.LossBatch]:
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, requires_grad=True)
    student = torch.log_softmax(logits, -1)
    ids = torch.randint(0, 5, (4, 3))
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
    teacher = torch.log_softmax(torch.randn(4, 3, 5), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    batch = losses.LossBatch(ids, mask, teacher, rewards=rewards, groups=torch.tensor([0, 0, 1, 1]))
    return student, batch


def test_combined_advantage_is_the_weighted_sum_of_teacher_and_reward_terms() -> None:
    student, batch = _batch(torch.tensor([1.0, 0.0, 1.0, 1.0]))
    sampled = batch.sampled(student).detach()
    teacher_adv = (batch.teacher_logps - sampled).clamp(-5, 5)
    grpo = torch.tensor([1.0, -1.0, 0.0, 0.0])
    for tw, rw in [(1.0, 0.0), (0.0, 1.0), (0.5, 2.0)]:
        spec = losses.LossSpec(kind="pg", teacher_weight=tw, reward_weight=rw)
        const = losses.batch_constants(spec, sampled, batch)
        expected = tw * teacher_adv + rw * grpo[:, None] * batch.mask
        assert torch.allclose(const.per_token["advantage"], expected, atol=1e-6), (tw, rw)
    # the loss is -(advantage * ls) averaged per sequence: its gradient follows the advantage's sign
    spec = losses.LossSpec(kind="pg", teacher_weight=0.0, reward_weight=1.0)
    loss, _ = losses.compute_loss(spec, student, batch)
    loss.backward()
    assert spec.uses_rewards and not spec.uses_teacher


def test_reward_term_needs_rewards() -> None:
    student, batch = _batch(None)  # type: ignore[arg-type]
    batch.groups = None
    with pytest.raises(ValueError, match="verifier rewards"):
        losses.compute_loss(losses.LossSpec(kind="pg", reward_weight=1.0), student, batch)


@pytest.mark.parametrize(("overrides", "key"), [
    (["loss.reward_weight=1"], "rollout.n"),  # GRPO needs groups
    (["loss.reward_weight=1", "rollout.n=4", "loss.kind=topk"], "loss.reward_weight"),
    (["loss.teacher_weight=0"], "loss.teacher_weight"),  # no signal at all
])
def test_advantage_sources_are_checked_at_load(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("mopd", [], overrides)


def test_pure_rl_needs_no_teacher() -> None:
    cfg = load_config("mopd", [], ["loss.teacher_weight=0", "loss.reward_weight=1", "rollout.n=4", "model.teachers={}"])
    assert losses.LossSpec.from_cfg(cfg.loss).uses_teacher is False


@pytest.mark.slow
def test_pure_rl_fit_loads_no_teacher_and_logs_rewards(tiny_lab, tiny_overrides, tmp_path: Path, monkeypatch) -> None:
    from mopdx.backends import factory
    from mopdx.run.fit import fit

    def no_teachers(*a, **k):
        raise AssertionError("a pure-RL run must not load its teachers for prefill")

    monkeypatch.setattr("mopdx.run.fit.make_teachers", no_teachers)
    assert factory.make_teachers is not no_teachers
    cfg = load_config("mopd", [], [*tiny_overrides, "loss.teacher_weight=0", "loss.reward_weight=1", "rollout.n=4",
                                   "data.batch_size=4", f"run.out_dir={tmp_path}", "run.name=rl"])
    summary = fit(cfg, progress=False)
    assert summary["budget"] == {"steps": 4, "sequences_per_step": 16, "sampled_tokens": summary["budget"]["sampled_tokens"]}
    assert summary["budget"]["sampled_tokens"] > 0
    assert set(summary["teacher"]) == set(summary["final"])  # teachers still scored, for the normalised score
    metrics = (tmp_path / "rl" / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/reward" in metrics and not any(m.startswith("kl/") for m in metrics)
    assert json.loads((tmp_path / "rl" / "summary.json").read_text())["steps"] == 4
