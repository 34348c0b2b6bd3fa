"""Turning prompts into token ids the same way everywhere.

Training, rollouts, teacher prefill and evaluation must agree on the exact
prompt tokens, so they all go through these helpers (chat template with the
generation prompt, completions terminated by EOS, left padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Chat-formatted prompt ids ending with the assistant header."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    return tokenizer.encode(prompt, add_special_tokens=True)


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
