"""benchmarks/forced_prefix.py: the reference's first blocks are written into the answer, the rest is sampled."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mopdx_lab.domains import get_domain, make_split

_spec = importlib.util.spec_from_file_location("forced_prefix", Path(__file__).parents[2] / "benchmarks" / "forced_prefix.py")
forced_prefix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forced_prefix)


def test_forced_blocks_start_every_answer(tiny_tokenizer, tiny_model_factory) -> None:
    examples = make_split(get_domain("rot"), 3, seed=1)
    tok, model = tiny_tokenizer, tiny_model_factory()
    assert forced_prefix.prefix_ids(tok, examples[0].answer, 0) == []
    for blocks in (1, 3):
        want = " ".join(examples[0].answer.split(" ")[:blocks])
        assert tok.decode(forced_prefix.prefix_ids(tok, examples[0].answer, blocks)).startswith(want)
        texts = forced_prefix.forced_texts(model, tok, examples, blocks, samples=2, max_new_tokens=4, seed=0)
        assert len(texts) == 6
        assert all(text.startswith(" ".join(e.answer.split(" ")[:blocks])) for e, text in texts)
    # unforced, a random model does not write a 49-token trace in 4 tokens
    assert forced_prefix.forced_accuracy(model, tok, examples, 0, samples=2, max_new_tokens=4, seed=0) == 0.0
