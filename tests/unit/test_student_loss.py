"""The chunked student loss equals the naive full-log-softmax loss, and keeps no [N, V] tensor for backward."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mopdx import losses
from mopdx.backends.base import Rollouts, TeacherOutput
from mopdx.student_loss import on_columns, student_loss, supports_chunking

V, P, C, B = 101, 5, 7, 4

CASES = {
    "pg": {},
    "pg-baseline-isclip": {"adv_baseline": "mean", "is_clip": 1.5},
    "pg-rl": {"teacher_weight": 1.0, "reward_weight": 0.5},
    "topk": {"kind": "topk", "topk": 6},
    "topk-tail": {"kind": "topk", "topk": 6, "topk_tail": True},
    "full_reverse_kl": {"kind": "full_reverse_kl"},
    "forward_kl": {"kind": "forward_kl"},
    "jsd": {"kind": "jsd", "jsd_beta": 0.3},
}


def _model(tied: bool = False) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=tied)
    return Qwen2ForCausalLM(cfg).eval()


def _batch() -> tuple[Rollouts, TeacherOutput, torch.Tensor]:
    """Left-padded prompts, completions of different lengths (padding after EOS), a full teacher."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (B, P + C), generator=g)
    attn = torch.ones(B, P + C, dtype=torch.long)
    attn[0, :2] = 0  # left padding
    lengths = torch.tensor([7, 3, 1, 5])
    mask = (torch.arange(C)[None] < lengths[:, None]).float()
    attn[:, P:] = mask.long()
    r = Rollouts(ids, attn, P, mask, torch.randn(B, C, generator=g) - 2.0, ["a"] * B, torch.tensor([0, 0, 1, 1]))
    full = torch.log_softmax(torch.randn(B, C, V, generator=g) * 2, dim=-1)
    topk_logps, topk_ids = full.topk(6, dim=-1)
    teacher = TeacherOutput(full.gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1), topk_ids, topk_logps, full)
    return r, teacher, torch.tensor([1.0, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("average", ["sequence", "token"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_chunked_loss_and_gradients_equal_the_naive_path(case: str, average: str) -> None:
    model = _model()
    r, teacher, rewards = _batch()
    spec = losses.LossSpec(**{"average": average, **CASES[case]})
    batch = losses.LossBatch.of(r, teacher, rewards if spec.uses_rewards else None)
    _assert_chunks_equal_naive(model, r, batch, spec, case)


def _assert_chunks_equal_naive(model: Qwen2ForCausalLM, r: Rollouts, batch: losses.LossBatch, spec: losses.LossSpec, case: str) -> None:
    results = {}
    for chunk in (0, 1, 4, 10_000):
        model.zero_grad(set_to_none=True)
        loss, stats = student_loss(model, r, batch, spec, chunk)
        (loss * 3.0).backward()  # a scale after the loss reaches every gradient (the full kinds' backward only scales)
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[chunk] = (loss.detach(), grads, {k: v.detach() for k, v in stats.items()})
    ref_loss, ref_grads, ref_stats = results[0]
    assert ref_grads.abs().max() > 0
    for chunk, (loss, grads, stats) in results.items():
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6, msg=f"{case} chunk={chunk}")
        # float32 sums taken in another order (chunks; another CPU's kernels) differ by a few ulps of the
        # gradient's scale, not of each element: ~5e-7 of max|grad| measured; a wrong chunk is off by O(1)
        torch.testing.assert_close(grads, ref_grads, rtol=1e-5, atol=1e-5 * float(ref_grads.abs().max()), msg=f"{case} chunk={chunk}")
        assert stats.keys() == ref_stats.keys()
        for k in stats:
            torch.testing.assert_close(stats[k], ref_stats[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["tied", "bias"])
@pytest.mark.parametrize("case", ["full_reverse_kl", "jsd"])
def test_full_kinds_gradient_in_forward_handles_tied_and_biased_heads(case: str, head: str) -> None:
    """The full kinds hand their head gradient back through the weight itself: a head tied to
    the input embeddings must get both paths' gradients summed, and a bias its own."""
    model = _model(tied=head == "tied")
    if head == "bias":
        out = model.get_output_embeddings()
        out.bias = torch.nn.Parameter(torch.randn(V) * 0.1)
    else:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    r, teacher, _ = _batch()
    spec = losses.LossSpec(**CASES[case])
    _assert_chunks_equal_naive(model, r, batch=losses.LossBatch.of(r, teacher), spec=spec, case=f"{case}-{head}")


@pytest.mark.parametrize("case", ["pg", "topk", "full_reverse_kl"])
def test_chunked_path_saves_no_vocabulary_sized_tensor_beyond_one_chunk(case: str) -> None:
    """What autograd keeps for backward: the naive path keeps [B, C, V] log-probs; the
    chunked one at most one chunk of logits at a time (recomputed in backward for column
    kinds; for full kinds only while that chunk's gradient is taken in the forward pass).
    The teacher's distribution is indexed per chunk, not saved."""
    model = _model()
    r, teacher, _ = _batch()
    spec = losses.LossSpec(**CASES[case])
    batch = losses.LossBatch.of(r, teacher)
    n_real = int(r.completion_mask.sum())

    def largest_vocab_saved(chunk: int) -> int:
        sizes = [0]

        weights = {q.untyped_storage().data_ptr() for q in model.parameters()}

        def pack(t: torch.Tensor) -> torch.Tensor:  # a view of the head's weight costs nothing
            if t.dim() >= 2 and t.shape[-1] == V and t.untyped_storage().data_ptr() not in weights:
                sizes.append(t.numel() // V)  # rows of vocabulary width
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = student_loss(model, r, batch, spec, chunk)
        loss.backward()
        return max(sizes)

    assert largest_vocab_saved(0) >= B * C  # the naive path: the whole batch's distribution
    chunked = largest_vocab_saved(2)
    assert chunked <= 2 < n_real, chunked


def test_on_columns_renumbers_ids_into_the_gathered_layout() -> None:
    r, teacher, _ = _batch()
    b = on_columns(losses.LossBatch.of(r, teacher), 7)
    assert b.completion_ids.eq(0).all()
    assert b.topk_ids.shape == (B, C, 6) and b.topk_ids[0, 0].tolist() == [1, 2, 3, 4, 5, 6]


def test_models_with_post_processed_logits_take_the_naive_path() -> None:
    model = _model()
    assert supports_chunking(model)
    model.config.final_logit_softcapping = 30.0
    assert not supports_chunking(model)
