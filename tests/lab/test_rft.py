"""Rejection-sampling fine-tuning (the lab's default Stage 2): only verified samples are trained on."""

from __future__ import annotations

import torch

from mopdx.backends.base import Rollouts
from mopdx.data import Example
from mopdx_lab import rft as rft_module
from mopdx.text import encode_completion, left_pad

EXAMPLES = [Example("sort", "sort: 321", "123"), Example("sort", "sort: 97", "79")]


class ScriptedBackend:
    """Samples fixed texts: prompt ``i``'s ``j``-th completion is ``SCRIPT[i][j]``."""

    script = {0: ["123", "321", "123", "x"], 1: ["97", "97", "97", "97"]}

    def __init__(self, model, pad_id: int, eos_id: int) -> None:
        self.pad_id = pad_id
        self.tokenizer = model  # the tests pass the tokenizer as the "model"

    def generate(self, prompt_ids, domains, sampling) -> Rollouts:
        rows, index = [], []
        for i, _ in enumerate(prompt_ids):
            for text in self.script[i][: sampling.n]:
                rows.append(encode_completion(self.tokenizer, text))
                index.append(i)
        width = max(len(r) for r in rows)
        comp = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows])
        prompts, pmask = left_pad([prompt_ids[i] for i in index], self.pad_id)
        return Rollouts(torch.cat([prompts, comp], 1), torch.cat([pmask, mask.long()], 1), prompts.shape[1], mask,
                        torch.zeros_like(mask), [domains[i] for i in index], torch.tensor(index))


def test_correct_samples_keeps_only_verified_completions(tiny_tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(rft_module, "HFRolloutBackend", ScriptedBackend)
    kept, rate = rft_module.correct_samples(tiny_tokenizer, tiny_tokenizer, EXAMPLES, group=4, max_new_tokens=8, seed=0)
    assert [(e.prompt, e.answer) for e in kept] == [("sort: 321", "123")] * 2
    assert rate == 2 / 8  # "97" is the prompt, not its sorted answer "79"


def test_rft_trains_on_what_was_kept_and_stops_when_nothing_verifies(tiny_tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(rft_module, "HFRolloutBackend", ScriptedBackend)
    trained: list[list[str]] = []
    monkeypatch.setattr(rft_module, "train_sft", lambda model, tok, kept, spec, desc="": trained.append([e.answer for e in kept]))
    spec = rft_module.RFTSpec(rounds=3, prompts=2, group=4, steps=1)
    monkeypatch.setattr(ScriptedBackend, "script", {0: ["123", "x", "x", "x"], 1: ["123", "x", "x", "x"]})
    order = {e.prompt: e for e in EXAMPLES}
    accepted = rft_module.rft(tiny_tokenizer, tiny_tokenizer, [order["sort: 321"]] * 2, spec)
    assert accepted == [0.25] * 3 and trained == [["123", "123"]] * 3
    trained.clear()
    monkeypatch.setattr(ScriptedBackend, "script", {0: ["x"] * 4, 1: ["x"] * 4})
    assert rft_module.rft(tiny_tokenizer, tiny_tokenizer, EXAMPLES, spec) == [0.0] and trained == []


def test_sft_stops_once_its_recent_loss_is_below_stop_loss(tiny_tokenizer, tiny_model_factory) -> None:
    """Stage 1's clean phase: ``steps`` is a ceiling when ``stop_loss`` is set (mopdx_lab/build.py)."""
    from mopdx.sft import SFTSpec, train_sft

    examples = [Example("sort", f"sort: {i}{i + 1}", f"{i}{i + 1}") for i in range(8)]
    full = train_sft(tiny_model_factory(), tiny_tokenizer, examples, SFTSpec(steps=6, batch_size=4, stop_window=2))
    assert len(full) == 6
    early = train_sft(tiny_model_factory(), tiny_tokenizer, examples, SFTSpec(steps=6, batch_size=4, stop_loss=1e9, stop_window=2))
    assert len(early) == 2 and early == full[:2]  # same seed, same first steps
    never = train_sft(tiny_model_factory(), tiny_tokenizer, examples, SFTSpec(steps=6, batch_size=4, stop_loss=1e-9, stop_window=2))
    assert never == full
