"""Losses against known limits (DESIGN.md section 2, 'Style')."""

from __future__ import annotations

import pytest
import torch

from mopdx import losses


def _rand_logps(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=g) * 2, dim=-1)


MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


def test_identical_distributions_give_zero() -> None:
    p = _rand_logps(2, 4, 11)
    assert losses.full_reverse_kl(p, p, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.forward_kl(p, p, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.generalized_jsd(p, p, MASK, beta=0.3).item() == pytest.approx(0.0, abs=1e-6)
    top, idx = p.topk(5, dim=-1)
    assert losses.topk_reverse_kl(top, top, MASK).item() == pytest.approx(0.0, abs=1e-6)
    sampled = p[..., 0]
    loss, stats = losses.pg_reverse_kl(sampled, sampled, MASK)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert stats.reverse_kl_estimate.item() == pytest.approx(0.0, abs=1e-7)


def test_topk_with_full_vocab_equals_full_reverse_kl() -> None:
    s, t = _rand_logps(2, 4, 9, seed=1), _rand_logps(2, 4, 9, seed=2)
    full = losses.full_reverse_kl(s, t, MASK)
    ids = t.topk(9, dim=-1).indices
    topk = losses.topk_reverse_kl(s.gather(-1, ids), t.gather(-1, ids), MASK)
    assert topk.item() == pytest.approx(full.item(), rel=1e-5)
    assert full.item() > 0.01


def test_topk_subset_is_nonnegative_and_smaller_than_full() -> None:
    s, t = _rand_logps(2, 4, 9, seed=3), _rand_logps(2, 4, 9, seed=4)
    ids = t.topk(3, dim=-1).indices
    part = losses.topk_reverse_kl(s.gather(-1, ids), t.gather(-1, ids), MASK)
    assert 0.0 <= part.item() <= losses.full_reverse_kl(s, t, MASK).item() + 1e-6


def test_topk_gradient_is_zero_at_p_equals_q() -> None:
    t = _rand_logps(2, 4, 9, seed=5)
    logits = t.clone().requires_grad_(True)
    s = torch.log_softmax(logits, dim=-1)
    ids = t.topk(4, dim=-1).indices
    losses.topk_reverse_kl(s.gather(-1, ids), t.gather(-1, ids), MASK).backward()
    assert logits.grad is not None
    assert logits.grad.abs().max().item() < 1e-6


def test_topk_gradient_per_coordinate_is_log_ratio() -> None:
    s_logp = torch.log(torch.tensor([[[0.2, 0.1]]])).requires_grad_(True)
    t_logp = torch.log(torch.tensor([[[0.4, 0.05]]]))
    losses.topk_reverse_kl(s_logp, t_logp, torch.ones(1, 1)).backward()
    # d/d(log p) of p log(p/q) - p + q = p * log(p/q)
    p = s_logp.detach().exp()
    assert torch.allclose(s_logp.grad, p * (s_logp.detach() - t_logp), atol=1e-6)


def test_pg_gradient_equals_reverse_kl_gradient_in_expectation() -> None:
    """Enumerate every token of a categorical: E_y[grad L_pg(y)] == grad KL(pi_s || pi_t)."""
    vocab = 6
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(7)).requires_grad_(True)
    teacher = torch.log_softmax(torch.randn(vocab, generator=torch.Generator().manual_seed(8)), dim=-1)
    mask = torch.ones(1, 1)

    expected = torch.zeros(vocab)
    probs = torch.softmax(logits, dim=-1).detach()
    for y in range(vocab):
        ls = torch.log_softmax(logits, dim=-1)[y].view(1, 1)
        loss, _ = losses.pg_reverse_kl(ls, teacher[y].view(1, 1), mask, adv_clip=100.0)
        (grad,) = torch.autograd.grad(loss, logits)
        expected += probs[y] * grad

    kl = losses.full_reverse_kl(torch.log_softmax(logits, dim=-1).view(1, 1, -1), teacher.view(1, 1, -1), mask)
    (true_grad,) = torch.autograd.grad(kl, logits)
    assert torch.allclose(expected, true_grad, atol=1e-6)


def test_pg_advantage_is_clipped_two_sided() -> None:
    ls = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    lt = torch.tensor([[-20.0, 30.0]])
    loss, stats = losses.pg_reverse_kl(ls, lt, torch.ones(1, 2), adv_clip=5.0)
    loss.backward()
    # loss = -(1/2) * (clip(-19)*ls0 + clip(31)*ls1) -> grads +2.5, -2.5
    assert torch.allclose(ls.grad, torch.tensor([[2.5, -2.5]]))
    assert stats.clip_fraction.item() == 1.0


def test_pg_truncated_importance_weight() -> None:
    ls = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_(True)
    rollout = torch.log(torch.tensor([[0.1, 0.5]]))
    lt = torch.zeros(1, 2)
    loss, stats = losses.pg_reverse_kl(ls, lt, torch.ones(1, 2), adv_clip=10, rollout_logps=rollout, is_clip=2.0)
    # ratios 5 -> clipped to 2, and 1
    assert stats.is_weight_mean.item() == pytest.approx(1.5)


def test_masked_sequence_mean_ignores_padding_and_weights_sequences_equally() -> None:
    values = torch.tensor([[1.0, 1.0, 1.0, 100.0], [4.0, 2.0, 100.0, 100.0]])
    assert losses.masked_sequence_mean(values, MASK).item() == pytest.approx((1.0 + 3.0) / 2)


def test_jsd_is_symmetric_at_half_and_bounded() -> None:
    s, t = _rand_logps(2, 4, 7, seed=9), _rand_logps(2, 4, 7, seed=10)
    a = losses.generalized_jsd(s, t, MASK, beta=0.5)
    b = losses.generalized_jsd(t, s, MASK, beta=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert 0 < a.item() <= torch.log(torch.tensor(2.0)).item()
    with pytest.raises(ValueError):
        losses.generalized_jsd(s, t, MASK, beta=1.0)


def test_forward_kl_matches_definition() -> None:
    s, t = _rand_logps(1, 1, 5, seed=11), _rand_logps(1, 1, 5, seed=12)
    want = (t.exp() * (t - s)).sum()
    assert losses.forward_kl(s, t, torch.ones(1, 1)).item() == pytest.approx(want.item(), rel=1e-6)


def test_topk_tail_term_penalises_mass_outside_the_teachers_top_k() -> None:
    # teacher: all mass on tokens {0, 1}; student: puts 0.5 on token 2 (outside K)
    q = torch.log(torch.tensor([[[0.6, 0.4 - 1e-6, 1e-6]]]))
    s = torch.log(torch.tensor([[[0.3, 0.2, 0.5]]]))
    ids = torch.tensor([[[0, 1]]])
    mask = torch.ones(1, 1)
    plain = losses.topk_reverse_kl(s.gather(-1, ids), q.gather(-1, ids), mask)
    tailed = losses.topk_reverse_kl(s.gather(-1, ids), q.gather(-1, ids), mask, tail=True)
    assert tailed.item() > plain.item() + 1.0
    # with K = the full vocabulary the tail is empty and changes nothing
    full = torch.tensor([[[0, 1, 2]]])
    a = losses.topk_reverse_kl(s.gather(-1, full), q.gather(-1, full), mask)
    b = losses.topk_reverse_kl(s.gather(-1, full), q.gather(-1, full), mask, tail=True)
    assert b.item() == pytest.approx(a.item(), abs=1e-4)
