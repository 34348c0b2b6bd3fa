"""Stop strings: a completion ends where one of ``data.stop`` first appears.

Why after generation, in one function: engines stop on strings differently
(transformers needs the tokenizer inside ``generate``, vLLM trims the text but
not always the tokens), and training needs the *tokens* cut exactly where
evaluation's text is cut.  So every loop samples to ``max_new_tokens`` (or EOS)
and ``cut_at_stops`` masks each completion after the token that completes
its first stop string (the stop string is kept, as ``include_stop_str_in_output``
does); teachers then prefill exactly what the student keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from transformers import PreTrainedTokenizerBase

from mopdx.backends.base import Rollouts
from mopdx.text import FORMAT


def _first_stop(tokenizer: PreTrainedTokenizerBase, tokens: list[int], stops: Sequence[str]) -> int | None:
    """The shortest prefix length whose text contains a stop string (prefix containment is monotone: bisect)."""
    def hit(k: int) -> bool:
        text = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        return any(s in text for s in stops)

    if not tokens or not hit(len(tokens)):
        return None
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def cut_at_stops(rollouts: Rollouts, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str] | None = None) -> Rollouts:
    """``rollouts`` with every completion masked after its first stop string (``stops``: default the run's ``data.stop``)."""
    stops = tuple(FORMAT.stop if stops is None else stops)
    if not stops:
        return rollouts
    mask, attn, ids, logps = (t.clone() for t in (rollouts.completion_mask, rollouts.attention_mask, rollouts.input_ids, rollouts.rollout_logps))
    p = rollouts.prompt_len
    for i in range(len(rollouts)):
        n = int(mask[i].sum().item())
        cut = _first_stop(tokenizer, ids[i, p : p + n].tolist(), stops)
        if cut is None or cut >= n:
            continue
        mask[i, cut:] = 0
        attn[i, p + cut :] = 0
        ids[i, p + cut :] = tokenizer.pad_token_id
        logps[i, cut:] = 0
    return replace(rollouts, completion_mask=mask, attention_mask=attn, input_ids=ids, rollout_logps=logps)
