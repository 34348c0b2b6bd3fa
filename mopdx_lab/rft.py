"""Rejection-sampling fine-tuning (RFT): a same-origin specialist from the model's own correct samples.

Why this exists beside GRPO (``lab.stage2_method=rl``): on a 2-core CPU, GRPO
at a learning rate that stays stable moves a tiny model's sampled accuracy
by a few points in the minutes a lab build has (measured: 60 steps at 3e-4
left every domain within 0.05 of Stage 1; 80 steps at 1e-3 collapsed
``reverse`` from 0.46 to 0.22).  RFT -- sample ``group`` completions per
prompt at T = 1, keep the ones the verifier accepts, fine-tune on them, and
repeat for ``rounds`` (expert iteration) -- is the positive half of the same
verifier-reward signal.  It only reinforces answers the model already
produces, so it sharpens rather than teaches, and the teacher stays close to
the model it started from: the regime check (``mopdx_lab.regime``) measures
how close (the default lab, one round: ``inc`` 0.496 -> 0.987 at 0.054
nats/token, ``rot`` 0.391 -> 0.979 at 0.117).  On short answers it is not
close: two rounds on lab v1's ``sort`` gave +10 points at 0.51 nats/token,
since each of a few tokens carries the whole decision.  Every sample is scored; nothing is read from the references
except through the verifier.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mopdx.backends.base import Sampling
from mopdx.backends.hf import HFRolloutBackend
from mopdx.data import Example
from mopdx.distill.rewards import verifier_rewards
from mopdx.sft import SFTLoop, SFTSpec, train_sft
from mopdx.text import encode_prompt


@dataclass
class RFTSpec:
    rounds: int = 1
    prompts: int = 256  # prompts sampled per round
    group: int = 8  # completions per prompt
    steps: int = 60  # SFT steps per round
    lr: float = 1e-3
    batch_size: int = 64
    max_new_tokens: int = 16
    seed: int = 0


def correct_samples(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], group: int,
    max_new_tokens: int, seed: int, chunk: int = 256,
) -> tuple[list[Example], float]:
    """``group`` T = 1 samples of each prompt; the verified ones as SFT examples (the model's own text
    as the answer), and the fraction accepted."""
    backend = HFRolloutBackend(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
    kept: list[Example] = []
    total = 0
    per_chunk = max(1, chunk // group)
    for start in range(0, len(examples), per_chunk):
        batch = list(examples[start : start + per_chunk])
        rollouts = backend.generate([encode_prompt(tokenizer, e) for e in batch], [e.domain for e in batch],
                                    Sampling(n=group, max_new_tokens=max_new_tokens, seed=seed + start))
        texts = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
        rewards = verifier_rewards(tokenizer, rollouts, batch).tolist()
        for text, p, r in zip(texts, rollouts.prompt_index.tolist(), rewards):
            total += 1
            if r == 1.0:
                kept.append(Example(batch[p].domain, batch[p].prompt, text))
    return kept, len(kept) / max(1, total)


def rft(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], spec: RFTSpec, desc: str = "rft",
        after_round: Callable[[int], bool] | None = None, within_round: Callable[[int], bool] | None = None,
        check_every: int = 0) -> list[float]:
    """Expert iteration in place on ``model``; returns the acceptance rate of each round's samples.
    ``after_round(r)`` (r = rounds done) is asked after each round whether to stop: ``spec.rounds`` is
    then a ceiling (the closed-loop build, ``mopdx_lab.stage2``).  ``within_round(step)`` is asked every
    ``check_every`` SFT steps of a round whether the round has done its work (its steps then a ceiling)."""
    rng = random.Random(spec.seed)
    accepted = []
    for r in tqdm(range(spec.rounds), desc=desc, leave=False, dynamic_ncols=True):
        prompts = rng.sample(list(examples), min(spec.prompts, len(examples)))
        kept, rate = correct_samples(model, tokenizer, prompts, spec.group, spec.max_new_tokens, seed=spec.seed * 1000 + r)
        accepted.append(rate)
        if not kept:  # nothing verified: another round of the same model would sample the same
            break
        sft = SFTSpec(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, warmup=5, seed=spec.seed + r)
        if within_round is None or check_every <= 0:
            train_sft(model, tokenizer, kept, sft, desc=f"{desc} round {r + 1}")
        else:
            loop = SFTLoop(model, tokenizer, sft)
            bar = tqdm(range(spec.steps), desc=f"{desc} round {r + 1}", leave=False, dynamic_ncols=True)
            for step in bar:
                bar.set_postfix(loss=f"{loop.step(kept):.3f}")
                if (step + 1) % check_every == 0 and within_round(step + 1):
                    break
        if after_round is not None and after_round(r + 1):
            break
    return accepted
