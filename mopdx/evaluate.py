"""Verifier-based evaluation of a model on domain-labelled prompts.

Accuracy is measured by generating a completion (greedy, or sampled at the
training temperature) and checking it with the domain's exact verifier.
Generation goes through a ``RolloutBackend`` so the same code evaluates with
transformers or vLLM.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mopdx.backends.base import RolloutBackend
from mopdx.lab.domains import DOMAINS, Domain, Example, get_domain
from mopdx.text import encode_prompt


@dataclass
class EvalSettings:
    max_new_tokens: int = 16
    batch_size: int = 256
    greedy: bool = True
    sampled: bool = False
    temperature: float = 1.0
    seed: int = 1234


def verifier_for(domain: str) -> Domain | None:
    """The lab verifier for ``domain``; ``None`` means plain exact match."""
    return get_domain(domain) if domain in DOMAINS else None


def accuracy_by_domain(
    backend: RolloutBackend,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: EvalSettings,
    greedy: bool = True,
    progress: bool = False,
) -> dict[str, float]:
    """Fraction of ``examples`` answered correctly, per domain."""
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    verifiers = {d: verifier_for(d) for d in {e.domain for e in examples}}
    chunks = range(0, len(examples), settings.batch_size)
    for start in tqdm(chunks, desc="eval", leave=False, disable=not progress):
        batch = examples[start : start + settings.batch_size]
        rollouts = backend.generate(
            [encode_prompt(tokenizer, e.prompt) for e in batch],
            [e.domain for e in batch],
            n=1,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            greedy=greedy,
            seed=settings.seed + start,
        )
        texts = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
        for ex, text in zip(batch, texts):
            v = verifiers[ex.domain]
            ok = v.verify(ex.answer, text) if v is not None else text.strip() == ex.answer.strip()
            correct[ex.domain] += int(ok)
            total[ex.domain] += 1
    return {d: correct[d] / total[d] for d in sorted(total)}
