"""Verifier rewards of rollouts: the RL advantage source (GRPO) and a training-accuracy metric.

Why a module of its own: the reward is the one place where a rollout's text
meets its prompt's reference answer, through the domain's verifier (the
config's ``data.verifiers``, a plug-in's, else exact match) -- the same
verifier evaluation uses, so a reward of 1 means exactly what an accuracy of
1 means.  A verifier that raises fails only its sample (``mopdx.verifiers.grading``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from mopdx.backends.base import Rollouts
from mopdx.data import Example
from mopdx.errors import DataError
from mopdx.verifiers import grade_mixed


def verifier_rewards(tokenizer: PreTrainedTokenizerBase, rollouts: Rollouts, examples: Sequence[Example]) -> torch.Tensor:
    """``[B]`` float: 1.0 where rollout ``i`` answers ``examples[rollouts.prompt_index[i]]`` correctly."""
    texts = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
    chosen = [examples[p] for p in rollouts.prompt_index.tolist()]
    grades = grade_mixed([e.domain for e in chosen], [e.answer for e in chosen], texts)
    return torch.tensor([float(c) for c in grades.correct], device=rollouts.completion_mask.device)


def check_answers(examples: Sequence[Example], what: str = "loss.reward_weight > 0") -> None:
    """Verifier rewards need a reference answer for every prompt: say which prompt lacks one, before any model loads."""
    missing = [e for e in examples if not e.answer]
    if missing:
        raise DataError(
            f"{what} needs an 'answer' for every training prompt; {len(missing)} of {len(examples)} have none "
            f"(first: {missing[0].prompt[:60]!r}, domain {missing[0].domain!r}): add answers to data.train or set loss.reward_weight=0"
        )
