"""Losses against known limits (DESIGN.md section 2, 'Style'), the two averages, and the ``LOSSES`` table."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf

from mopdx import losses
from mopdx.backends.base import ScoreRequest


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
    loss, _ = losses.pg_reverse_kl(sampled, sampled, MASK)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert losses.advantage_stats(sampled - sampled, MASK, 5.0)[0].item() == pytest.approx(0.0, abs=1e-7)


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
    loss, _ = losses.pg_reverse_kl(ls, lt, torch.ones(1, 2), adv_clip=5.0)
    loss.backward()
    # loss = -(1/2) * (clip(-19)*ls0 + clip(31)*ls1) -> grads +2.5, -2.5
    assert torch.allclose(ls.grad, torch.tensor([[2.5, -2.5]]))
    assert losses.advantage_stats((lt - ls).detach(), torch.ones(1, 2), 5.0)[2].item() == 1.0


def test_pg_truncated_importance_weight() -> None:
    ls = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_(True)
    rollout = torch.log(torch.tensor([[0.1, 0.5]]))
    lt = torch.zeros(1, 2)
    loss, stats = losses.pg_reverse_kl(ls, lt, torch.ones(1, 2), adv_clip=10, rollout_logps=rollout, is_clip=2.0)
    # ratios 5 -> clipped to 2, and 1
    assert stats.is_weight_mean.item() == pytest.approx(1.5)


VALUES = torch.tensor([[1.0, 1.0, 1.0, 100.0], [4.0, 2.0, 100.0, 100.0]])


def test_sequence_average_ignores_padding_and_weights_sequences_equally() -> None:
    assert losses.reduce_tokens(VALUES, MASK, "sequence").item() == pytest.approx((1.0 + 3.0) / 2)


def test_token_average_weighs_every_token_equally() -> None:
    assert losses.reduce_tokens(VALUES, MASK, "token").item() == pytest.approx((1.0 + 1.0 + 1.0 + 4.0 + 2.0) / 5)
    with pytest.raises(ValueError):
        losses.reduce_tokens(VALUES, MASK, "batch")


@pytest.mark.parametrize("average", losses.AVERAGES)
def test_rows_with_the_batch_denominator_add_up_to_the_batch_loss(average: str) -> None:
    den = losses.batch_denominator(MASK, average)
    parts = [losses.reduce_tokens(VALUES[i : i + 1], MASK[i : i + 1], average, den) for i in range(2)]
    assert sum(parts).item() == pytest.approx(losses.reduce_tokens(VALUES, MASK, average).item(), rel=1e-6)


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


# ------------------------------------------------------------------ the table
def _batch(seed: int = 20, k: int = 4) -> tuple[torch.Tensor, losses.LossBatch]:
    s, t = _rand_logps(2, 4, 9, seed=seed), _rand_logps(2, 4, 9, seed=seed + 1)
    ids = torch.randint(0, 9, (2, 4), generator=torch.Generator().manual_seed(seed))
    top = t.topk(k, dim=-1)
    lt = t.gather(-1, ids[..., None])[..., 0]
    rollout = s.gather(-1, ids[..., None])[..., 0] + 0.5 * torch.randn(2, 4, generator=torch.Generator().manual_seed(seed + 2))
    return s, losses.LossBatch(ids, MASK, lt, rollout, top.indices, top.values, t)


def test_loss_kinds_are_the_table() -> None:
    assert losses.LOSS_KINDS == tuple(losses.LOSSES) == ("pg", "topk", "full_reverse_kl", "forward_kl", "jsd")
    assert {k: e.needs for k, e in losses.LOSSES.items()} == {"pg": "sampled", "topk": "topk", "full_reverse_kl": "full", "forward_kl": "full", "jsd": "full"}


@pytest.mark.parametrize("kind", losses.LOSS_KINDS)
def test_score_request_follows_the_table(kind: str) -> None:
    request = losses.LossSpec(kind, topk=16).request()
    needs = losses.LOSSES[kind].needs
    assert request == ScoreRequest(topk=16 if needs == "topk" else 0, full=needs == "full")


def test_spec_rejects_unknown_kind_and_average() -> None:
    with pytest.raises(ValueError, match="loss kind"):
        losses.LossSpec("reverse_kl")
    with pytest.raises(ValueError, match="average"):
        losses.LossSpec("pg", average="batch")


def test_spec_from_cfg_reads_every_option() -> None:
    cfg = OmegaConf.create({"kind": "pg", "adv_clip": 2.0, "adv_baseline": "mean", "is_clip": 1.5, "topk": 8, "topk_tail": True, "jsd_beta": 0.2, "average": "token",
                            "teacher_weight": 0.5, "reward_weight": 2.0, "reward_std": False, "reward_sign": "negative"})
    assert losses.LossSpec.from_cfg(cfg) == losses.LossSpec("pg", 2.0, "mean", 1.5, 8, True, 0.2, "token", 0.5, 2.0, False, "negative")


@pytest.mark.parametrize("kind", losses.LOSS_KINDS)
def test_table_entries_compute_the_pure_functions(kind: str) -> None:
    s, b = _batch()
    spec = losses.LossSpec(kind, adv_clip=0.5, adv_baseline="mean", is_clip=1.1, topk_tail=True, jsd_beta=0.3)
    got, stats = losses.compute_loss(spec, s, b)
    ls = b.sampled(s)
    want = {
        "pg": lambda: losses.pg_reverse_kl(ls, b.teacher_logps, MASK, 0.5, b.rollout_logps, 1.1, "mean")[0],
        "topk": lambda: losses.topk_reverse_kl(s.gather(-1, b.topk_ids), b.topk_logps, MASK, tail=True),
        "full_reverse_kl": lambda: losses.full_reverse_kl(s, b.full_logps, MASK),
        "forward_kl": lambda: losses.forward_kl(s, b.full_logps, MASK),
        "jsd": lambda: losses.generalized_jsd(s, b.full_logps, MASK, 0.3),
    }[kind]()
    assert torch.equal(got, want)
    assert set(stats) == ({"is_weight"} if kind == "pg" else set())


@pytest.mark.parametrize("kind", ["topk", "full_reverse_kl"])
def test_missing_teacher_output_is_a_clear_error(kind: str) -> None:
    s, b = _batch()
    with pytest.raises(ValueError, match="needs the teacher"):
        losses.compute_loss(losses.LossSpec(kind), s, replace(b, topk_ids=None, full_logps=None))


@pytest.mark.parametrize("average", losses.AVERAGES)
@pytest.mark.parametrize("kind", losses.LOSS_KINDS)
def test_sliced_batch_constants_give_each_rows_contribution(kind: str, average: str) -> None:
    s, b = _batch()
    spec = losses.LossSpec(kind, adv_baseline="mean", is_clip=1.1, average=average, topk_tail=True)
    whole, _ = losses.compute_loss(spec, s, b)
    const = losses.batch_constants(spec, b.sampled(s), b)
    parts = []
    for i in range(2):
        row = losses.LossBatch(**{k: v[i : i + 1] for k, v in b.tensors().items()})
        sliced = losses.BatchConstants({k: v[i : i + 1] for k, v in const.per_token.items()}, const.denominator)
        parts.append(losses.compute_loss(spec, s[i : i + 1], row, sliced)[0])
    assert sum(parts).item() == pytest.approx(whole.item(), rel=1e-6)


def test_token_average_differs_from_sequence_average_on_ragged_batches() -> None:
    s, b = _batch()
    seq = losses.compute_loss(losses.LossSpec("full_reverse_kl"), s, b)[0]
    tok = losses.compute_loss(losses.LossSpec("full_reverse_kl", average="token"), s, b)[0]
    p = s.exp()
    per_token = (p * (s - b.full_logps)).sum(-1)
    assert tok.item() == pytest.approx(((per_token * MASK).sum() / MASK.sum()).item(), rel=1e-6)
    assert abs(tok.item() - seq.item()) > 1e-4
