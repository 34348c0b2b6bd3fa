"""Keyed sampling: exact samples, and each completion independent of how the batch is cut."""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mopdx.backends.base import Sampling
from mopdx.backends.hf import HFRolloutBackend
from mopdx.backends.keyed import gumbel_noise, row_keys

V, PAD, EOS = 61, 0, 1


def _backend() -> HFRolloutBackend:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                      pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2)
    return HFRolloutBackend(Qwen2ForCausalLM(cfg).eval(), PAD, EOS)


PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16], [17, 18, 19]]


def _completions(r) -> list[list[int]]:
    return [ids[m.bool()].tolist() for ids, m in zip(r.completion_ids, r.completion_mask)]


def test_gumbel_max_with_keyed_noise_samples_the_distribution() -> None:
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0, -1.0]), 0)
    rows = torch.tensor(row_keys(0, range(100_000), 1))
    freq = torch.bincount((p.log()[None] + gumbel_noise(rows, 3, 4)).argmax(-1), minlength=4) / 100_000
    assert (freq - p).abs().max() < 0.006  # ~4 standard errors at n = 100k


def test_a_prompts_completions_do_not_depend_on_the_rest_of_its_batch() -> None:
    backend = _backend()
    s = Sampling(n=2, max_new_tokens=6, seed=7, keyed=True)
    whole = _completions(backend.generate(PROMPTS, ["d"] * 6, s))
    # strided halves (two ranks), with their global keys
    even = _completions(backend.generate(PROMPTS[0::2], ["d"] * 3, s.with_keys(range(0, 6, 2))))
    odd = _completions(backend.generate(PROMPTS[1::2], ["d"] * 3, s.with_keys(range(1, 6, 2))))
    for i in range(3):
        assert even[2 * i : 2 * i + 2] == whole[4 * i : 4 * i + 2]
        assert odd[2 * i : 2 * i + 2] == whole[4 * i + 2 : 4 * i + 4]
    assert whole[0] != whole[1] or whole[2] != whole[3]  # the n samples of a prompt differ
    # another seed, other completions
    assert _completions(backend.generate(PROMPTS, ["d"] * 6, s.with_seed(8))) != whole


def test_keyed_rollout_logps_are_the_sampling_policys() -> None:
    backend = _backend()
    s = Sampling(n=1, max_new_tokens=5, seed=3, keyed=True, temperature=0.7)
    r = backend.generate(PROMPTS, ["d"] * 6, s)
    logits = backend.model(input_ids=r.input_ids, attention_mask=r.attention_mask).logits[:, r.prompt_len - 1 : -1]
    ref = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1)
    m = r.completion_mask.bool()
    # left padding shifts positions; compare with position ids like the trainer's
    from mopdx.backends.hf import completion_logits

    ref = torch.log_softmax(completion_logits(backend.model, r.input_ids, r.attention_mask, r.prompt_len) / 0.7, -1)
    ref = ref.gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(r.rollout_logps[m], ref[m], atol=1e-4)
    assert logits.shape[1] == r.completion_ids.shape[1]


def test_keyed_eval_draws_do_not_depend_on_eval_batch_size(tiny_tokenizer, tiny_model_factory) -> None:
    """What evaluation samples for each prompt, recorded at three ``eval.batch_size`` values."""
    from mopdx.config import EvalConfig
    from mopdx_lab.domains import get_domain, make_split
    from mopdx.run.evaluation import accuracy_by_domain

    tok = tiny_tokenizer
    inner = HFRolloutBackend(tiny_model_factory(0), tok.pad_token_id, tok.eos_token_id)
    examples = make_split(get_domain("add"), 12, seed=0)

    def draws(sampler: str, batch: int) -> dict[tuple[int, ...], list[list[int]]]:
        seen: dict[tuple[int, ...], list[list[int]]] = {}

        class Recording:
            def generate(self, prompt_ids, domains, sampling):
                r = inner.generate(prompt_ids, domains, sampling)
                for p, c in zip(r.prompt_index.tolist(), _completions(r)):
                    seen.setdefault(tuple(prompt_ids[p]), []).append(c)
                return r

        accuracy_by_domain(Recording(), tok, examples, EvalConfig(max_new_tokens=4, samples=4, batch_size=batch, sampler=sampler))
        return seen

    keyed = [draws("keyed", b) for b in (4, 8, 48)]
    assert len(keyed[0]) == 12 and keyed[0] == keyed[1] == keyed[2]
    plain = [draws("generate", b) for b in (4, 48)]
    assert plain[0] != plain[1]  # the engine's own stream: the draws depend on the batching
