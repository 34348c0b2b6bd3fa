"""Lab pieces: domains and verifiers, tokenizer, model factory."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from mopdx.errors import ConfigError
from mopdx_lab.domains import DOMAINS, get_domain, make_split
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
    assert get_domain("inc").trace("5289", count=3) == "6390 7401 8512"  # every digit + 1 (mod 10), block after block
    assert get_domain("dec").trace("5280", count=2) == "4179 3068"
    assert get_domain("rot").trace("5281", count=4) == "2815 8152 1528 5281"
    assert get_domain("decp").trace("5280", count=2) == "4179|3068"  # dec's rule, a format of its own
    assert get_domain("rotp").trace("5281", count=2) == "2815|8152"  # rot's rule, a format of its own
    assert get_domain("incrot").trace("5289", count=3) == "6390 3906 9063"  # inc's rule for the first block, rot's after it
    assert get_domain("uprot").trace("5289", count=3) == "6390 3906 9063"  # incrot's rule under the tag "up"
    assert get_domain("uprot").claims("up: 5289") and not get_domain("uprot").claims("incrot: 5289")
    for name in ("inc", "dec", "rot", "decp", "rotp", "roth", "incrot", "uprot"):
        dom = get_domain(name)
        ex = dom.generate(random.Random(0))
        start, blocks = ex.prompt.split(": ")[1], ex.answer.split(dom.sep)
        assert ex.prompt.startswith(f"{dom.tag or name}: ") and len(blocks) == 10 and all(len(b) == 4 for b in blocks)
        assert blocks[0] == dom.first_step(start) and all(blocks[i + 1] == dom.step(blocks[i]) for i in range(9))
        assert dom.worked_steps(ex) == dom.sep.join(blocks[:2]) and not dom.leaks(dom.worked_steps(ex), ex.answer)
    ex = get_domain("decp").generate(random.Random(0))
    assert not get_domain("decp").verify(ex.answer, ex.answer.replace("|", " "))  # the format is part of the answer
    with pytest.raises(ConfigError, match="known domains"):
        get_domain("poetry")


def test_roth_shares_rots_tag_and_claims_only_its_own_inputs() -> None:
    roth, rot = get_domain("roth"), get_domain("rot")
    exs = make_split(roth, 50, seed=0)
    assert all(e.prompt.startswith("rot: ") and set(e.prompt[5:]) <= set("56789") and "|" in e.answer for e in exs)
    assert roth.claims("rot: 5799") and not roth.claims("rot: 5709") and not roth.claims("rotp: 5799")
    assert rot.claims("rot: 5709") and not get_domain("rotp").claims("rot: 5709")
    assert not get_domain("sort").claims("sort: 5281")  # tags of their own: never a contradiction
    # the start digits come from the same random stream as before: the lab's data did not change
    assert [e.prompt for e in make_split(get_domain("inc"), 2, seed=0)] == ["inc: 6426", "inc: 3921"]


def test_a_slip_in_a_step_trace_compounds_and_stage1_noise_corrupts_the_asked_fraction() -> None:
    from mopdx_lab.stage1 import noisy_answers

    for name in ("inc", "dec", "rot", "decp", "incrot"):
        dom = get_domain(name)
        rng = random.Random(5)
        for ex in make_split(dom, 30, seed=1):
            bad = dom.corrupt(ex, rng)
            assert bad.prompt == ex.prompt and not dom.verify(ex.answer, bad.answer)
            blocks, good = bad.answer.split(dom.sep), ex.answer.split(dom.sep)
            first = next(i for i in range(10) if blocks[i] != good[i])
            assert sum(a != b for a, b in zip(blocks[first], good[first])) == 1  # one wrong digit ...
            assert all(blocks[i + 1] == dom.step(blocks[i]) for i in range(first, 9))  # ... that later blocks follow
    train = make_split(get_domain("inc"), 2000, seed=0)
    assert noisy_answers(train, 0.0, seed=0) == train
    noisy = noisy_answers(train, 0.3, seed=0)
    assert noisy == noisy_answers(train, 0.3, seed=0)
    assert 0.25 < sum(a != b for a, b in zip(noisy, train)) / len(train) < 0.35


def test_step_trace_answers_are_long_for_the_lab_tokenizer() -> None:
    """Lab v2's point: >= 40 answer tokens, so an early error compounds (issue 15)."""
    from mopdx_lab.tokenizer import build_tokenizer

    corpus = [f"{e.prompt} {e.answer}" for d in ("inc", "dec", "rot") for e in make_split(get_domain(d), 200, seed=0)]
    tok = build_tokenizer(corpus, 300)
    ex = get_domain("inc").generate(random.Random(3))
    assert len(encode_completion(tok, ex.answer)) >= 49


def test_splits_are_seeded_and_disjoint() -> None:
    dom = get_domain("reverse")
    held = make_split(dom, 50, seed=10)
    assert held == make_split(dom, 50, seed=10)
    train = make_split(dom, 500, seed=0, exclude={e.prompt for e in held})
    assert not {e.prompt for e in held} & {e.prompt for e in train}
    assert len({e.prompt for e in train}) == len(train)


def test_a_split_larger_than_the_domain_stops_at_its_distinct_prompts() -> None:
    """``inc`` has 10^4 prompts: asking for 20000 gives (nearly) all of them, without 10^6 draws."""
    train = make_split(get_domain("inc"), 20_000, seed=0)
    assert 9_900 <= len(train) == len({e.prompt for e in train}) <= 10_000


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


def test_a_scenario_domain_comes_from_the_lab_or_is_drawn_with_the_labs_rules() -> None:
    from mopdx_lab.domains import domain_splits

    lab_train, lab_eval = make_split(get_domain("rot"), 50, seed=0), make_split(get_domain("rot"), 10, seed=1000)
    assert domain_splits("rot", ["inc", "rot"], lab_train, lab_eval, 999, 999, seed=0) == (lab_train, lab_eval)
    train, held_out = domain_splits("incrot", ["inc", "rot"], lab_train, lab_eval, 300, 40, seed=0)
    assert len(train) == 300 and len(held_out) == 40 and {e.domain for e in train + held_out} == {"incrot"}
    assert not {e.prompt for e in train} & {e.prompt for e in held_out}  # no eval prompt is trained on
    assert (train, held_out) == domain_splits("incrot", ["inc", "rot"], [], [], 300, 40, seed=0)
