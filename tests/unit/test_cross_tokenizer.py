"""Teachers with another tokenizer (mopdx.backends.cross_tokenizer): the span alignment conserves the
teacher's log-prob of every span, and a teacher that scores text like the student gives ~0 advantage."""

from __future__ import annotations

import math

import pytest
import torch

from mopdx.backends.cross_tokenizer import CrossTokenizerScorer, chunk_of, map_back


def test_a_teacher_token_over_two_student_tokens_and_the_reverse_conserve_the_span() -> None:
    # text "abcdef": student tokens "ab" "c" "def", teacher tokens "abc" "de" "f"
    s_ends, t_ends = [2, 3, 6], [3, 5, 6]
    s_chunks, t_chunks = chunk_of(s_ends, t_ends)
    assert s_chunks == [0, 0, 1] and t_chunks == [0, 1, 1]  # chunks "abc" and "def"
    ls, lt = [-1.0, -2.0, -0.5], [-2.5, -0.25, -0.75]
    mapped = map_back(ls, s_chunks, lt, t_chunks)
    assert mapped[0] == ls[0]  # an earlier token of a chunk: its own log-prob (advantage 0)
    assert mapped[0] + mapped[1] == pytest.approx(lt[0])  # "abc": one teacher token over two student tokens
    assert mapped[2] == pytest.approx(lt[1] + lt[2])  # "def": two teacher tokens over one student token
    assert sum(mapped) == pytest.approx(sum(lt))


def test_identical_tokenisations_map_token_for_token() -> None:
    s_chunks, t_chunks = chunk_of([1, 3, 4], [1, 3, 4])
    assert map_back([-1.0, -2.0, -3.0], s_chunks, [-0.1, -0.2, -0.3], t_chunks) == [-0.1, -0.2, -0.3]


def test_no_common_boundary_but_the_end_makes_one_chunk() -> None:
    s_chunks, t_chunks = chunk_of([1, 3, 5], [2, 4, 5])
    assert set(s_chunks) == set(t_chunks) == {0}
    assert map_back([-1.0, -1.0, -1.0], s_chunks, [-2.0, -2.0, -2.0], t_chunks) == [-1.0, -1.0, -4.0]


@pytest.fixture(scope="module")
def two_tokenizers():
    from mopdx_lab.domains import get_domain, make_split
    from mopdx_lab.tokenizer import build_tokenizer

    corpus = [f"{e.prompt} {e.answer}" for d in ("add", "reverse", "sort") for e in make_split(get_domain(d), 200, seed=0)]
    return build_tokenizer(corpus, vocab_size=300), build_tokenizer(corpus, vocab_size=262)


def _char_logp(text: str) -> float:
    """A behaviour defined on text: each character has its own log-prob, whatever the tokens."""
    return sum(-0.1 - (ord(ch) % 7) / 10 for ch in text)


def test_a_teacher_that_scores_text_like_the_student_gives_about_zero_advantage(two_tokenizers) -> None:
    student_tok, teacher_tok = two_tokenizers
    scorer = CrossTokenizerScorer(torch.nn.Linear(1, 1), teacher_tok, student_tok)
    texts = ["reverse: c a f g", "sort: 5 2 8 1", "add: 12 + 7 = 19", "1 2 3 4 5 6 7 8 9"]
    for text in texts:
        s_ids = student_tok(text, add_special_tokens=False).input_ids
        prompt = student_tok("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids
        _, t_ids, s_ends, t_ends, eos = scorer.retokenise(prompt, [*s_ids, student_tok.eos_token_id])
        assert eos and t_ids[-1] == teacher_tok.eos_token_id and len(s_ends) == len(s_ids)
        ls = [_char_logp(student_tok.decode([i])) for i in s_ids]
        lt = [_char_logp(teacher_tok.decode([i])) for i in t_ids[:-1]]
        s_chunks, t_chunks = chunk_of(s_ends, t_ends)
        mapped = map_back(ls, s_chunks, lt, t_chunks)
        assert max(abs(a - b) for a, b in zip(mapped, ls)) < 1e-9  # ~0 advantage on every student token
        assert math.isclose(sum(mapped), _char_logp(text), abs_tol=1e-9)
    tokens_differ = [student_tok(t, add_special_tokens=False).input_ids != teacher_tok(t, add_special_tokens=False).input_ids for t in texts]
    assert any(tokens_differ)  # the two tokenizers do cut some of these texts differently


def test_the_scorer_refuses_what_another_tokenizer_cannot_give(two_tokenizers) -> None:
    from mopdx.backends.base import Rollouts, ScoreRequest
    from mopdx.errors import ConfigError

    s, t = two_tokenizers
    ids = torch.tensor([[1, 2, 3]])
    r = Rollouts(ids, torch.ones_like(ids), 1, torch.ones(1, 2), torch.zeros(1, 2), ["d"], torch.tensor([0]))
    with pytest.raises(ConfigError, match="loss.kind=pg"):
        CrossTokenizerScorer(torch.nn.Linear(1, 1), t, s).score(r, ScoreRequest(topk=4))


def test_through_the_cross_path_a_teacher_with_the_students_own_tokenizer_scores_as_it_does_directly(tiny_model_factory, tiny_tokenizer) -> None:
    """Decode, re-encode, prefill, map back: with one tokenizer on both sides every (canonically
    tokenised) completion maps token for token, so the scores are the direct prefill's."""
    from mopdx.backends.base import Rollouts, ScoreRequest
    from mopdx.backends.hf import HFTeacherScorer
    from mopdx.text import encode_prompt, left_pad, right_pad

    tok, teacher = tiny_tokenizer, tiny_model_factory(seed=1)
    prompts = [encode_prompt(tok, p) for p in ["add: 3 + 4", "reverse: a b c", "sort: 9 1 5"]]
    completions = [tok("7", add_special_tokens=False).input_ids + [tok.eos_token_id], tok("c b a", add_special_tokens=False).input_ids,
                   tok("1 5 9", add_special_tokens=False).input_ids + [tok.eos_token_id]]
    p_ids, p_mask = left_pad(prompts, tok.pad_token_id)
    c_ids, c_mask = right_pad(completions, tok.pad_token_id)
    r = Rollouts(torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1), p_ids.shape[1], c_mask.float(), torch.zeros(c_mask.shape),
                 ["d"] * 3, torch.arange(3))
    direct = HFTeacherScorer(teacher).score(r, ScoreRequest()).logps
    crossed = CrossTokenizerScorer(teacher, tok, tok).score(r, ScoreRequest()).logps
    m = r.completion_mask.bool()
    assert torch.allclose(direct[m], crossed[m], atol=1e-5) and bool((crossed[~m] == 0).all())
