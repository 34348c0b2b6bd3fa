"""Supervised finetuning on reference answers: the SFT baselines and the lab's model builds.

A plain PyTorch loop rather than Lightning: it is a model *builder*, runs for
a few hundred steps, and must be fast and deterministic.  The loss covers
completion tokens only (prompt tokens are masked), as in chat SFT.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mopdx.data import Example
from mopdx.text import encode_completion, encode_prompt


@dataclass
class SFTSpec:
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.0
    seed: int = 0
    # stop once the mean loss of the last ``stop_window`` steps is below this (None: run every step);
    # ``steps`` is then a ceiling, and the lr schedule is laid out over it
    stop_loss: float | None = None
    stop_window: int = 20


def _collate(tokenizer: PreTrainedTokenizerBase, batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, labels)`` with prompt labels masked."""
    rows = []
    for ex in batch:
        p, c = encode_prompt(tokenizer, ex), encode_completion(tokenizer, ex.answer)
        rows.append((p + c, [-100] * len(p) + c))
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (seq, lab) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, : len(seq)] = torch.tensor(lab)
        mask[i, : len(seq)] = 1
    return ids, mask, labels


class SFTLoop:
    """One SFT optimiser and schedule, stepped by the caller.

    Why a stepper and not only ``train_sft``: the lab's closed-loop build
    (``mopdx_lab.stage1``) trains until a *measured* target is met, so it
    must stop between steps, measure, and go on with the same optimiser
    state and lr schedule -- and change the data it draws from between
    chunks.  The schedule is laid out over ``spec.steps``, the ceiling."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: SFTSpec) -> None:
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.rng = random.Random(spec.seed)
        self.opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_at)
        self.losses: list[float] = []

    def _lr_at(self, step: int) -> float:
        spec = self.spec
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        progress = min(1.0, (step - spec.warmup) / max(1, spec.steps - spec.warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def step(self, examples: list[Example]) -> float:
        """One optimiser step on a batch drawn from ``examples``; returns its loss."""
        self.model.train()
        ids, mask, labels = _collate(self.tokenizer, self.rng.sample(examples, min(self.spec.batch_size, len(examples))))
        loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.losses.append(loss.item())
        self.model.eval()
        return self.losses[-1]

    def loss_below(self, threshold: float | None) -> bool:
        """True when the mean loss of the last ``spec.stop_window`` steps is below ``threshold``."""
        w = self.spec.stop_window
        return threshold is not None and len(self.losses) >= w and sum(self.losses[-w:]) / w < threshold


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    spec: SFTSpec,
    desc: str = "sft",
) -> list[float]:
    """Finetune ``model`` in place on ``examples`` for ``spec.steps`` (or until ``spec.stop_loss``); returns the loss curve."""
    loop = SFTLoop(model, tokenizer, spec)
    bar = tqdm(range(spec.steps), desc=desc, leave=False, dynamic_ncols=True)  # TQDM_DISABLE=1 (--quiet) hides it
    for _ in bar:
        bar.set_postfix(loss=f"{loop.step(examples):.3f}")
        if loop.loss_below(spec.stop_loss):
            break
    return loop.losses
