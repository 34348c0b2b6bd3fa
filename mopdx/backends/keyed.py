"""Keyed sampling: each completion a function of (seed, prompt key, sample index) alone.

Why: ``model.generate`` draws every row of a batch from one random stream, so
the completion a prompt gets depends on which other prompts share its batch.
Split the same global batch over two processes (DDP), or into overlap chunks,
or change ``eval.batch_size``, and every rollout changes, so a 2-process step
cannot be compared with a 1-process step.  Keyed sampling uses the Gumbel-max
trick with counter-based noise: at completion position ``t`` the token is
``argmax(log p + g)``, with ``g`` a Gumbel variate hashed from ``(seed, key,
sample, t, token)``.  That is an exact sample from ``p`` (the temperature /
top-k / top-p distribution, through transformers' own warpers), and it reads no
state, so the union of rollouts is the same however the batch is cut.

The hash is splitmix64's finaliser on int64 tensors (wrapping arithmetic, the
same on CPU and CUDA); 24 bits of it make each uniform.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(x: int) -> int:
    x &= _M64
    return x - (1 << 64) if x >= 1 << 63 else x


def mix64(x: int) -> int:
    """splitmix64's finaliser on a Python int (the keys' hash)."""
    x &= _M64
    x = ((x ^ (x >> 30)) * _C1) & _M64
    x = ((x ^ (x >> 27)) * _C2) & _M64
    return x ^ (x >> 31)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shr(x, 30)) * _signed(_C1)
    x = (x ^ _shr(x, 27)) * _signed(_C2)
    return x ^ _shr(x, 31)


def row_keys(seed: int, keys: Sequence[int], per_prompt: int) -> list[int]:
    """One 64-bit key per returned completion, in generate's order (prompt-major)."""
    return [_signed(mix64(mix64(mix64(seed) ^ (k & _M64)) + j * _GOLDEN)) for k in keys for j in range(per_prompt)]


def gumbel_noise(rows: torch.Tensor, position: int, vocab: int) -> torch.Tensor:
    """``[len(rows), vocab]`` Gumbel variates, a pure function of (row key, position, token)."""
    base = _mix(rows + _signed(position * _GOLDEN))[:, None]
    tokens = torch.arange(vocab, device=rows.device, dtype=torch.int64)[None] * _signed(_C1)
    u = (_shr(_mix(base ^ tokens), 40).float() + 0.5) * 2.0**-24  # (0, 1)
    return -torch.log(-torch.log(u))


class KeyedGumbel(LogitsProcessor):
    """Warps the logits as sampling would, keeps them (the sampling policy's log-probs are
    read from them) and adds keyed Gumbel noise, so that greedy decoding samples."""

    def __init__(self, rows: torch.Tensor, start: int, temperature: float, top_k: int, top_p: float) -> None:
        self.rows, self.start = rows, start
        warpers: list[LogitsProcessor] = []
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)
        self.scores: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = self.warpers(input_ids, scores.float())
        self.scores.append(scores)
        return scores + gumbel_noise(self.rows, input_ids.shape[1] - self.start, scores.shape[-1])  # type: ignore[return-value]
