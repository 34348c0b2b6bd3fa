"""Turning prompts into token ids the same way everywhere.

Training, rollouts, teacher prefill and evaluation must agree on the exact
prompt tokens, so they all go through these helpers (chat template with the
generation prompt, completions terminated by EOS, left padding).

The run's ``PromptFormat`` (``data.chat_template_kwargs``, e.g.
``{enable_thinking: false}`` for Qwen3, and ``data.stop``) is installed once
per process by the run assembly (``configure_format``), as the verifier table
is: every loop that encodes a prompt or ends a completion then agrees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase


class Chat(Protocol):
    def messages(self) -> list[dict[str, str]]: ...


@dataclass
class PromptFormat:
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the tokenizer's chat template
    stop: tuple[str, ...] = ()  # a completion ends where one of these first appears (mopdx/stops.py)


FORMAT = PromptFormat()


def configure_format(template_kwargs: Mapping[str, Any] | None = None, stop: Sequence[str] = ()) -> PromptFormat:
    """Install this process's prompt format (replaces an earlier run's)."""
    FORMAT.template_kwargs = dict(template_kwargs or {})
    FORMAT.stop = tuple(str(s) for s in stop)
    return FORMAT


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | Chat) -> list[int]:
    """Chat-formatted prompt ids ending with the assistant header.

    ``prompt``: a user turn, or an ``Example`` (its system prompt and earlier turns
    come first).  Without a chat template the turns' texts are joined by blank lines."""
    messages = prompt.messages() if not isinstance(prompt, str) else [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False,
                                                  **FORMAT.template_kwargs))
    return tokenizer.encode("\n\n".join(m["content"] for m in messages), add_special_tokens=True)


def encode_completion(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Completion ids followed by EOS, as a model should generate them."""
    return tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged id lists left-padded; returns ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def right_pad(
    seqs: Sequence[Sequence[float]], pad: float, width: int | None = None, dtype: torch.dtype = torch.long
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged rows right-padded to ``width`` (default: the longest row);
    returns ``(values, mask)``. Completions, and per-token values over them, are
    right-padded so that token ``j`` of every row sits in column ``j``."""
    width = max(len(s) for s in seqs) if width is None else width
    values = torch.full((len(seqs), width), pad, dtype=dtype)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            values[i, : len(s)] = torch.tensor(list(s), dtype=dtype)
            mask[i, : len(s)] = 1
    return values, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token (left padding safe)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
