"""The transformers backend: sampling, masks, and prefill agree with each other."""

from __future__ import annotations

import torch

from mopdx.backends.base import Sampling, ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer, completion_mask_from_ids
from mopdx.text import encode_prompt

PROMPTS = ["add: 3 + 4", "reverse: a b c d e", "sort: c a b"]


def _backend(model, tok) -> HFRolloutBackend:
    return HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id)


def test_completion_mask_stops_after_first_eos() -> None:
    ids = torch.tensor([[5, 6, 9, 0, 0], [9, 1, 9, 1, 1], [1, 2, 3, 4, 5]])
    mask = completion_mask_from_ids(ids, eos_id=9)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_rollout_logps_match_a_prefill_of_the_same_model(tiny_model_factory, tiny_tokenizer) -> None:
    """On-policy check: the sampler's log-probs equal a teacher-forced forward (left padding included)."""
    model, tok = tiny_model_factory(seed=1), tiny_tokenizer
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    r = _backend(model, tok).generate(prompts, ["add", "reverse", "sort"], Sampling(n=2, max_new_tokens=6, seed=0))
    assert r.input_ids.shape[0] == 6 and r.domains == ["add", "add", "reverse", "reverse", "sort", "sort"]
    assert r.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    out = HFTeacherScorer(model).score(r, ScoreRequest(topk=5, full=True))
    m = r.completion_mask.bool()
    assert torch.allclose(out.logps[m], r.rollout_logps[m], atol=1e-4)
    assert out.topk_ids.shape == (*r.completion_mask.shape, 5)
    assert torch.allclose(out.full_logps.exp().sum(-1), torch.ones_like(out.logps), atol=1e-4)
    # top-1 of the prefill is the argmax of the full distribution
    assert torch.equal(out.topk_ids[..., 0], out.full_logps.argmax(-1))


def test_sampling_is_reproducible_by_seed_and_greedy_is_deterministic(tiny_model_factory, tiny_tokenizer) -> None:
    model, tok = tiny_model_factory(seed=2), tiny_tokenizer
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    be = _backend(model, tok)
    a = be.generate(prompts, ["x"] * 3, Sampling(max_new_tokens=6, seed=5))
    b = be.generate(prompts, ["x"] * 3, Sampling(max_new_tokens=6, seed=5))
    assert torch.equal(a.input_ids, b.input_ids)
    g1 = be.generate(prompts, ["x"] * 3, Sampling(max_new_tokens=6, greedy=True))
    g2 = be.generate(prompts, ["x"] * 3, Sampling(max_new_tokens=6, greedy=True, seed=99))
    assert torch.equal(g1.input_ids, g2.input_ids)


def test_teacher_temperature_flattens_distribution(tiny_model_factory, tiny_tokenizer) -> None:
    model, tok = tiny_model_factory(seed=3), tiny_tokenizer
    r = _backend(model, tok).generate([encode_prompt(tok, PROMPTS[0])], ["add"], Sampling(max_new_tokens=4, seed=0))
    cold = HFTeacherScorer(model, temperature=1.0).score(r, ScoreRequest(full=True)).full_logps
    hot = HFTeacherScorer(model, temperature=4.0).score(r, ScoreRequest(full=True)).full_logps
    entropy = lambda lp: -(lp.exp() * lp).sum(-1).mean()  # noqa: E731
    assert entropy(hot) > entropy(cold)


def test_teachers_are_frozen(tiny_model_factory) -> None:
    scorer = HFTeacherScorer(tiny_model_factory())
    assert not scorer.model.training
    assert all(not p.requires_grad for p in scorer.model.parameters())
