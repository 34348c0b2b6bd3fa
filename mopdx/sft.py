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
        p, c = encode_prompt(tokenizer, ex.prompt), encode_completion(tokenizer, ex.answer)
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


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    spec: SFTSpec,
    desc: str = "sft",
) -> list[float]:
    """Finetune ``model`` in place on ``examples``; returns the loss curve."""
    rng = random.Random(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(spec.steps), desc=desc, leave=False, dynamic_ncols=True)  # TQDM_DISABLE=1 (--quiet) hides it
    for _ in bar:
        ids, mask, labels = _collate(tokenizer, rng.sample(examples, min(spec.batch_size, len(examples))))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if spec.stop_loss is not None and len(losses) >= spec.stop_window and sum(losses[-spec.stop_window :]) / spec.stop_window < spec.stop_loss:
            break
    model.eval()
    return losses
