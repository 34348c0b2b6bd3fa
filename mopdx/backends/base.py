"""Backend protocols and the tensors that flow between them.

The training step only talks to a ``RolloutBackend`` (student sampling) and
to ``TeacherScorer`` objects (teacher prefill), so the transformers, vLLM
and remote implementations are interchangeable.  Shapes: ``B`` rollouts,
``P`` padded prompt length (prompts are left-padded), ``C`` padded
completion length (completions are right-padded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

import torch


@dataclass
class Rollouts:
    """Student samples: ``input_ids = [left-padded prompt | completion]``."""

    input_ids: torch.Tensor  # [B, P + C]
    attention_mask: torch.Tensor  # [B, P + C]
    prompt_len: int  # P
    completion_mask: torch.Tensor  # [B, C] float, 1 up to and including EOS
    rollout_logps: torch.Tensor  # [B, C] log-probs under the sampling policy
    domains: list[str]
    prompt_index: torch.Tensor  # [B] which prompt of the batch each rollout answers
    # multi-turn episodes (mopdx/envs/episodes.py): completion_ids hold the environment's tokens too,
    # completion_mask only the student's; each episode's reward (NaN: none, graded by its verifier)
    episode_rewards: torch.Tensor | None = None  # [B]

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def subset(self, index: torch.Tensor | list[int]) -> Rollouts:
        """The rollouts at ``index`` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        tensors = {
            f.name: getattr(self, f.name).index_select(0, idx.to(getattr(self, f.name).device))
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **tensors, domains=[self.domains[i] for i in idx.tolist()])

    def unpadded(self) -> tuple[list[list[int]], list[int]]:
        """Each rollout's prompt + completion ids without padding, and where its completion starts
        (what engines and servers that take token lists need)."""
        mask = self.attention_mask.bool().cpu()
        seqs = [row[m].tolist() for row, m in zip(self.input_ids.cpu(), mask)]
        starts = mask[:, : self.prompt_len].sum(-1).tolist()
        return seqs, starts

    def to(self, device: torch.device | str) -> Rollouts:
        tensors = {f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **tensors)


@dataclass
class TeacherOutput:
    """Teacher prefill of a rollout batch, aligned with ``completion_ids``.

    ``logps`` is the teacher log-prob of each sampled token (all the PG loss
    needs); ``topk_*`` hold the teacher's own top-k tokens for the top-k loss;
    ``full_logps`` is the whole distribution, which only local teachers
    provide (forward KL / JSD).
    """

    logps: torch.Tensor  # [B, C]
    topk_ids: torch.Tensor | None = None  # [B, C, k]
    topk_logps: torch.Tensor | None = None  # [B, C, k]
    full_logps: torch.Tensor | None = None  # [B, C, V]


@dataclass(frozen=True)
class ScoreRequest:
    """What the loss needs from a teacher: top-k size (0 = none) and/or full distributions."""

    topk: int = 0
    full: bool = False


@dataclass(frozen=True)
class Sampling:
    """How to decode: one value object instead of a keyword list repeated at every call site.

    ``greedy`` ignores the sampling knobs and returns one completion per prompt;
    ``top_k`` 0 and ``top_p`` 1 mean no truncation (the papers' setting)."""

    n: int = 1
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    seed: int | None = None
    # Keyed sampling (mopdx/backends/keyed.py): each completion a function of (seed, its
    # prompt's key, sample index), whatever else is in the batch.  ``keys``: one per
    # prompt of the call (default: its position in the call).
    keyed: bool = False
    keys: tuple[int, ...] | None = None

    @property
    def per_prompt(self) -> int:
        """Completions returned per prompt."""
        return 1 if self.greedy else self.n

    def with_seed(self, seed: int | None) -> Sampling:
        return replace(self, seed=seed)

    def with_keys(self, keys: Sequence[int]) -> Sampling:
        """The same decoding for prompts with these keys (their indices in a larger batch)."""
        return replace(self, keys=tuple(int(k) for k in keys))

    def prompt_keys(self, n_prompts: int) -> tuple[int, ...]:
        """The keys of a call's prompts: ``keys``, or positions when none were given."""
        if self.keys is None:
            return tuple(range(n_prompts))
        if len(self.keys) != n_prompts:
            raise ValueError(f"{len(self.keys)} sampling keys for {n_prompts} prompts")
        return self.keys


@runtime_checkable
class RolloutBackend(Protocol):
    """Samples completions from the current student weights."""

    def generate(self, prompt_ids: list[list[int]], domains: list[str], sampling: Sampling) -> Rollouts: ...

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the trainer's latest student weights into the sampling engine."""
        ...


@runtime_checkable
class TeacherScorer(Protocol):
    """A frozen teacher that prefills rollouts and returns per-token log-probs."""

    def score(self, rollouts: Rollouts, request: ScoreRequest) -> TeacherOutput: ...


def rollouts_from_lists(prompt_ids: list[list[int]], completions: list[list[int]], logps: list[list[float]], index: list[int],
                        domains: list[str], pad_id: int) -> Rollouts:
    """A batch from an engine's token lists: left-padded prompts (``index``: each completion's
    prompt), right-padded completions (mask 1 up to and including EOS: engines stop there) and
    their sampling log-probs -- what every engine that returns lists (vLLM, continuous batching) hands back."""
    from mopdx.text import left_pad, right_pad

    p_ids, p_mask = left_pad(prompt_ids, pad_id)
    c_ids, c_mask = right_pad(completions, pad_id, width=max(1, max(len(c) for c in completions)))
    lp, _ = right_pad(logps, 0.0, width=c_ids.shape[1], dtype=torch.float32)
    idx = torch.tensor(index, dtype=torch.long)
    return Rollouts(
        input_ids=torch.cat([p_ids[idx], c_ids], dim=1),
        attention_mask=torch.cat([p_mask[idx], c_mask.long()], dim=1),
        prompt_len=p_ids.shape[1],
        completion_mask=c_mask.float(),
        rollout_logps=lp,
        domains=[domains[i] for i in index],
        prompt_index=idx,
    )
