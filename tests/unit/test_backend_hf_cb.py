"""transformers' continuous batching as a rollout backend (rollout.backend=hf_cb), against ``generate``.

Parity on CPU: identical tokens under greedy decoding, samples drawn from the same
distribution (their mean log-prob under the model agrees within its standard error), the
sampling policy's log-probs returned, the trained module's current weights sampled, and EOS
and stop strings ending a sample."""

from __future__ import annotations

import math

import pytest
import torch

from mopdx.backends.base import Sampling, ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.backends.hf_cb import CBSettings, HFContinuousBatchingBackend, cache_sizes
from mopdx.stops import cut_at_stops
from mopdx.text import encode_prompt

PROMPTS = ["add: 3 + 4", "reverse: a b c d e", "sort: c a b", "add: 12 + 7"]


def _pair(model, tok, eos: int | None = None) -> tuple[HFRolloutBackend, HFContinuousBatchingBackend]:
    eos = tok.eos_token_id if eos is None else eos
    return HFRolloutBackend(model, tok.pad_token_id, eos), HFContinuousBatchingBackend(model, tok.pad_token_id, eos)


def _completions(r) -> list[list[int]]:
    return [c[m.bool()].tolist() for c, m in zip(r.completion_ids, r.completion_mask)]


def _prompts(tok) -> list[list[int]]:
    return [encode_prompt(tok, p) for p in PROMPTS]


def test_greedy_decoding_gives_generates_tokens_and_the_trained_weights_are_seen(tiny_model_factory, tiny_tokenizer) -> None:
    model, tok = tiny_model_factory(seed=3), tiny_tokenizer
    hf, cb = _pair(model, tok)
    greedy = Sampling(max_new_tokens=10, greedy=True)
    attention = model.config._attn_implementation
    before = _completions(cb.generate(_prompts(tok), ["x"] * 4, greedy))
    assert before == _completions(hf.generate(_prompts(tok), ["x"] * 4, greedy))
    torch.manual_seed(0)
    with torch.no_grad():  # an optimiser step, as the trainer makes it: in place, on the same module
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    after = _completions(cb.generate(_prompts(tok), ["x"] * 4, greedy))
    assert after != before and after == _completions(hf.generate(_prompts(tok), ["x"] * 4, greedy))
    assert model.training is False and model.config._attn_implementation == attention  # the module is handed back as it was
    model.train()
    cb.generate(_prompts(tok), ["x"] * 4, greedy)
    assert model.training  # a training module stays in training mode


def test_samples_carry_the_sampling_policys_log_probs_and_a_seed_repeats_them(tiny_model_factory, tiny_tokenizer) -> None:
    model, tok = tiny_model_factory(seed=1), tiny_tokenizer
    _, cb = _pair(model, tok)
    s = Sampling(n=3, max_new_tokens=8, temperature=1.0, seed=4)
    r = cb.generate(_prompts(tok), ["add", "reverse", "sort", "add"], s)
    assert r.prompt_index.tolist() == [i for i in range(4) for _ in range(3)] and r.domains[:4] == ["add"] * 3 + ["reverse"]
    m = r.completion_mask.bool()
    prefill = HFTeacherScorer(model).score(r, ScoreRequest())
    assert torch.allclose(prefill.logps[m], r.rollout_logps[m], atol=1e-4)
    assert torch.equal(cb.generate(_prompts(tok), ["x"] * 4, s).input_ids, r.input_ids)
    # top-k changes the policy: every sampled token is among the model's top 3, and its log-prob is renormalised over them
    k = cb.generate(_prompts(tok), ["x"] * 4, Sampling(n=2, max_new_tokens=8, top_k=3, seed=1))
    full = HFTeacherScorer(model).score(k, ScoreRequest(topk=3))
    mk = k.completion_mask.bool()
    assert bool((full.topk_ids[mk] == k.completion_ids[mk].unsqueeze(-1)).any(-1).all())
    assert torch.allclose(k.rollout_logps[mk], full.logps[mk] - full.topk_logps[mk].logsumexp(-1), atol=1e-4)


def test_samples_follow_generates_distribution(tiny_model_factory, tiny_tokenizer) -> None:
    """Two samplers of one policy: the mean sequence log-prob of their samples under the model
    estimates the same number (minus the entropy); they agree within 4 standard errors."""
    model, tok = tiny_model_factory(seed=2), tiny_tokenizer
    hf, cb = _pair(model, tok)
    s = Sampling(n=48, max_new_tokens=5, temperature=1.0, seed=11)
    stats = []
    for backend in (hf, cb):
        r = backend.generate(_prompts(tok), ["x"] * 4, s)
        seq = HFTeacherScorer(model).score(r, ScoreRequest()).logps.mul(r.completion_mask).sum(-1)
        stats.append((seq.mean().item(), seq.var().item() / seq.numel()))
    (a, va), (b, vb) = stats
    assert abs(a - b) < 4 * math.sqrt(va + vb), stats


def test_eos_and_stop_strings_end_a_sample(tiny_model_factory, tiny_tokenizer) -> None:
    model, tok = tiny_model_factory(seed=3), tiny_tokenizer
    free = _completions(HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id).generate(_prompts(tok), ["x"] * 4, Sampling(max_new_tokens=10, greedy=True)))
    stop_token = free[0][3]  # the 4th token the model writes for the first prompt: made "EOS" for this test
    hf, cb = _pair(model, tok, eos=stop_token)
    got = _completions(cb.generate(_prompts(tok), ["x"] * 4, Sampling(max_new_tokens=10, greedy=True)))
    assert got == _completions(hf.generate(_prompts(tok), ["x"] * 4, Sampling(max_new_tokens=10, greedy=True)))
    assert got[0] == free[0][:4] and all(c[-1] == stop_token or len(c) == 10 for c in got)
    assert all(stop_token not in c[:-1] for c in got)
    # a stop string is cut after the engine returns, as for every backend
    text = tok.decode(free[1][2:4])
    r = cut_at_stops(HFContinuousBatchingBackend(model, tok.pad_token_id, tok.eos_token_id).generate(_prompts(tok), ["x"] * 4, Sampling(max_new_tokens=10, greedy=True)),
                     tok, [text])
    assert r.completion_mask[1].sum().item() < 10


def test_keyed_sampling_is_refused_and_the_cpu_cache_is_sized_from_the_call() -> None:
    from mopdx.errors import ConfigError

    with pytest.raises(ConfigError, match="rollout.sampler=generate"):
        HFContinuousBatchingBackend(torch.nn.Linear(1, 1), 0, 1).generate([[1]], ["x"], Sampling(seed=0, keyed=True))
    cpu = cache_sizes(CBSettings(), cuda=False, requests=8, max_len=40)
    assert cpu == {"page_size": 16, "num_blocks": 8 * 3 + 8, "max_batch_tokens": 512}
    assert cache_sizes(CBSettings(), cuda=True, requests=8, max_len=40) == {"page_size": None, "num_blocks": None, "max_batch_tokens": None}
    assert cache_sizes(CBSettings(page_size=32, num_blocks=7), cuda=False, requests=8, max_len=40)["num_blocks"] == 7
