"""Lab pieces: domains and verifiers, tokenizer, model factory."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from mopdx.errors import ConfigError
from mopdx.lab.domains import DOMAINS, get_domain, make_split
from mopdx.text import encode_completion, encode_prompt


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_domain_answers_verify_and_wrong_ones_do_not(name: str) -> None:
    dom = get_domain(name)
    rng = random.Random(0)
    for _ in range(50):
        ex = dom.generate(rng)
        assert dom.verify(ex.answer, ex.answer)
        assert dom.verify(ex.answer, "  " + ex.answer + " ")
        assert not dom.verify(ex.answer, ex.answer + " x")


def test_domain_semantics() -> None:
    ex = get_domain("add").generate(random.Random(0))
    a, b = ex.prompt.split(": ")[1].split(" + ")
    assert int(ex.answer) == int(a) + int(b)
    ex = get_domain("reverse").generate(random.Random(1))
    assert ex.answer.split() == ex.prompt.split(": ")[1].split()[::-1]
    ex = get_domain("sort").generate(random.Random(2))
    assert list(ex.answer) == sorted(ex.prompt.split(": ")[1])
    trace = get_domain("trace")
    assert trace.trace("52819", count=3) == "63920 74031 85142"  # every digit + 1 (mod 10), block after block
    ex = trace.generate(random.Random(0))
    blocks = ex.answer.split()
    assert len(blocks) == 8 and all(len(b) == 5 for b in blocks) and blocks[0] == trace.trace(ex.prompt.split(": ")[1], count=1)
    assert trace.worked_steps(ex) == " ".join(blocks[:2])
    with pytest.raises(ConfigError, match="known domains"):
        get_domain("poetry")


def test_splits_are_seeded_and_disjoint() -> None:
    dom = get_domain("reverse")
    held = make_split(dom, 50, seed=10)
    assert held == make_split(dom, 50, seed=10)
    train = make_split(dom, 500, seed=0, exclude={e.prompt for e in held})
    assert not {e.prompt for e in held} & {e.prompt for e in train}
    assert len({e.prompt for e in train}) == len(train)


def test_tokenizer_roundtrip_and_chat_template(tiny_tokenizer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tiny_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = encode_prompt(tok, "reverse: a b c")
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\nreverse: a b c<|im_end|>\n<|im_start|>assistant\n")
    comp = encode_completion(tok, "c b a")
    assert comp[-1] == tok.eos_token_id
    assert tok.decode(comp, skip_special_tokens=True) == "c b a"
    # one token per payload symbol
    assert len(tok.encode(" a b c", add_special_tokens=False)) == 3
    assert tok.convert_ids_to_tokens(tok.encode("123", add_special_tokens=False)) == ["1", "2", "3"]


def test_tiny_model_shapes_and_save(tiny_model_factory, tiny_tokenizer, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_model_factory()
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tiny_tokenizer)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    x = torch.tensor([[1, 2, 3]])
    assert torch.allclose(model(x).logits, again(x).logits, atol=1e-6)


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_easy_part_is_a_proper_subset(name: str) -> None:
    """Stage 1 sees only the easy part, so every domain keeps a student -> teacher gap."""
    dom = get_domain(name)
    examples = make_split(dom, 400, seed=3)
    easy = [e for e in examples if dom.is_easy(e)]
    assert 0.1 * len(examples) < len(easy) < 0.9 * len(examples)
