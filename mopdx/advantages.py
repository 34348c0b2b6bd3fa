"""Advantages of the policy-gradient loss: GRPO's verifier-reward advantage and its sum with the teacher's.

Why their own module: MOPD's per-token teacher advantage (``losses.pg_coefficients``)
and RL's per-sequence reward advantage are two sources of one PG loss; keeping the
reward side here, as pure tensor functions, lets the loss table combine them and
tests check them by hand without touching models or verifiers
(``mopdx.distill.rewards`` turns completions into rewards).
"""

from __future__ import annotations

import torch


def grpo_advantages(rewards: torch.Tensor, groups: torch.Tensor, std_normalise: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's sequence advantage ``[B]``: each reward minus its group's mean, over the group's std.

    A group is the ``rollout.n`` samples of one prompt (``groups`` holds the prompt
    index of each rollout).  A group whose rewards are all equal -- all right or all
    wrong -- carries no signal and gets advantage 0, so it neither pushes nor pulls.
    ``std_normalise=False`` keeps the mean-centred reward (Dr. GRPO), which does not
    up-weight groups that are nearly unanimous.  The std is the population std
    (divide by n), as in TRL and verl.
    """
    rewards = rewards.to(torch.float32)
    _, inverse = torch.unique(groups, return_inverse=True)
    count = torch.zeros(int(inverse.max()) + 1, device=rewards.device).index_add_(0, inverse, torch.ones_like(rewards))
    mean = torch.zeros_like(count).index_add_(0, inverse, rewards) / count
    centred = rewards - mean[inverse]
    if not std_normalise:
        return centred
    var = torch.zeros_like(count).index_add_(0, inverse, centred**2) / count
    std = var.sqrt()[inverse]
    return torch.where(std > eps, centred / (std + eps), torch.zeros_like(centred))


REWARD_SIGNS = ("both", "negative", "positive")


def keep_sign(adv: torch.Tensor, sign: str) -> torch.Tensor:
    """``adv`` (``sign="both"``), or only its negative or positive part.

    Why: the two halves of a verifier-reward advantage do different things.  The
    negative part pushes down the wrong samples of a group (where their errors are);
    the positive part reinforces the right ones (sharpening every token of them).
    Keeping one half tells which of the two a result comes from.
    """
    if sign == "both":
        return adv
    if sign == "negative":
        return adv.clamp(max=0.0)
    if sign == "positive":
        return adv.clamp(min=0.0)
    raise ValueError(f"unknown reward sign {sign!r}; use one of {', '.join(REWARD_SIGNS)}")


def combined_advantage(
    teacher_adv: torch.Tensor | None, reward_adv: torch.Tensor | None, mask: torch.Tensor, teacher_weight: float = 1.0, reward_weight: float = 0.0
) -> torch.Tensor:
    """``teacher_weight * A_teacher + reward_weight * A_reward``, ``[B, C]``.

    ``A_teacher`` is the per-token MOPD advantage (``pg_coefficients``), ``A_reward``
    the per-sequence GRPO advantage broadcast over the sequence's tokens: one
    policy-gradient loss then does MOPD (1, 0), RL with verifier rewards (0, 1) or
    both at once.  A term with weight 0 is not computed, so RL needs no teacher.
    """
    adv = torch.zeros_like(mask, dtype=torch.float32)
    if teacher_weight and teacher_adv is not None:
        adv = adv + teacher_weight * teacher_adv
    if reward_weight:
        if reward_adv is None:
            raise ValueError("loss.reward_weight > 0 needs the rollouts' verifier rewards")
        adv = adv + reward_weight * reward_adv.to(adv.dtype).unsqueeze(-1) * mask.to(adv.dtype)
    return adv
