"""Test doubles for multi-turn episodes, shared by the framework's and the lab's tests."""

from __future__ import annotations

import torch

from mopdx.backends.base import Rollouts
from mopdx.text import left_pad, right_pad


class Scripted:
    """A student that writes ``turns[k]`` (then EOS) at its k-th turn, with log-prob -1 per token."""

    reads_trainer_weights = True

    def __init__(self, tokenizer, turns: list[str]) -> None:
        self.tok, self.turns, self.calls = tokenizer, turns, 0

    def generate(self, prompt_ids, domains, sampling) -> Rollouts:
        ids = self.tok.encode(self.turns[self.calls], add_special_tokens=False) + [self.tok.eos_token_id]
        self.calls += 1
        p, pm = left_pad(prompt_ids, self.tok.pad_token_id)
        c, cm = right_pad([ids] * len(prompt_ids), self.tok.pad_token_id)
        return Rollouts(torch.cat([p, c], 1), torch.cat([pm, cm], 1), p.shape[1], cm.float(), -cm.float(), list(domains),
                        torch.arange(len(prompt_ids)))


def lab_chat_tokenizer():
    """The lab's BPE (with its chat template) on a small inc corpus, plus the words the fake environments say."""
    from mopdx_lab.domains import get_domain, make_split
    from mopdx_lab.tokenizer import build_tokenizer

    corpus = [f"{e.prompt} {e.answer} got ask next" for e in make_split(get_domain("inc"), 200, seed=0)]
    return build_tokenizer(corpus, vocab_size=300)
