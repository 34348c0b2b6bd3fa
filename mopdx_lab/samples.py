"""A model's own T = 1 samples as SFT examples: how the lab's scenarios change a model's form, not its skill.

Why every sample is kept, right or wrong: SFT on them is sequence-level distillation of the
model's own distribution, so a change of tokenizer (mopdx_lab/xtok.py) or of episode format
(mopdx_lab/blocks.py) is taught without the verifier sharpening the model on the way.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mopdx.backends.base import Sampling
from mopdx.backends.hf import HFRolloutBackend
from mopdx.data import Example
from mopdx.text import encode_prompt


def own_samples(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[Example], group: int, max_new_tokens: int, seed: int) -> list[Example]:
    """``group`` T = 1 samples of each prompt, every one kept (right or wrong), as SFT examples."""
    backend = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id)
    out: list[Example] = []
    per_chunk = max(1, 256 // group)
    for start in range(0, len(prompts), per_chunk):
        batch = prompts[start : start + per_chunk]
        r = backend.generate([encode_prompt(tok, e) for e in batch], [e.domain for e in batch],
                             Sampling(n=group, max_new_tokens=max_new_tokens, seed=seed + start))
        texts = tok.batch_decode(r.completion_ids, skip_special_tokens=True)
        out += [Example(batch[p].domain, batch[p].prompt, text) for text, p in zip(texts, r.prompt_index.tolist())]
    return out
