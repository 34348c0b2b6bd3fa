"""The ``loss`` config node: each option's type, default and allowed values, once.

Torch-free, so that the schema (``mopdx.config``) can include it and a bad value
fails before torch loads; ``mopdx.losses.LossSpec`` -- what the loss maths reads --
takes its fields' defaults from here, and the reductions their allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass

from mopdx.rules import BOOL, POSITIVE_INT, PROBABILITY_OPEN, number, one_of, setting

AVERAGES = ("sequence", "token")  # how per-token losses become one number (mopdx.losses.reduce_tokens)
ADV_BASELINES = ("none", "mean")
REWARD_SIGNS = ("both", "negative", "positive")


@dataclass
class LossConfig:
    kind: str = "pg"  # a row of mopdx.losses.LOSSES (pg | topk | full_reverse_kl | forward_kl | jsd), checked against that table
    adv_clip: float = setting(5.0, number(0, lo_open=True))
    adv_baseline: str = setting("none", one_of(*ADV_BASELINES))  # none | mean (variance reduction; same expected gradient)
    topk: int = setting(64, POSITIVE_INT)
    topk_tail: bool = setting(False, BOOL)  # add a term for the student mass outside the teacher's top-k
    jsd_beta: float = setting(0.5, PROBABILITY_OPEN)
    is_clip: float | None = setting(None, number(0, lo_open=True, null="off"))  # truncated importance ratio cap; None = off (on-policy)
    teacher_temperature: float = setting(1.0, number(0, lo_open=True))
    # How per-token losses become one number: "sequence" averages each rollout over its own
    # tokens, then over rollouts (DESIGN.md's 1/|y|; short answers weigh as much as long
    # ones); "token" averages over all completion tokens of the batch (TRL, verl), so long
    # rollouts weigh more.
    average: str = setting("sequence", one_of(*AVERAGES))
    # The PG form's advantage is teacher_weight * clip(lt - ls) + reward_weight * A_GRPO:
    # (1, 0) is MOPD, (0, 1) RL with verifier rewards (GRPO over the rollout.n samples of
    # each prompt; no teacher is loaded), both > 0 the combination.
    teacher_weight: float = setting(1.0, number(0))
    reward_weight: float = setting(0.0, number(0))
    reward_std: bool = setting(True, BOOL)  # GRPO: divide by the group's reward std (false: Dr. GRPO)
    # Which part of the GRPO advantage to keep: both, negative (push down wrong samples
    # only, "negative sample reinforcement") or positive (reinforce right samples only).
    reward_sign: str = setting("both", one_of(*REWARD_SIGNS))
    # Completion tokens per chunk when the student's logits are made and reduced
    # (mopdx/student_loss.py): the loss's peak memory is one chunk's logits, not the
    # batch's [B, C, V]; same values and gradients.  0 = the naive full log-softmax.
    chunk_tokens: int = setting(1024, number(0, integer=True))
