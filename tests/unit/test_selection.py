"""Gap-based selection: the gap definition and top-rho selection."""

from __future__ import annotations

import pytest
import torch

from mopdx.errors import ConfigError
from mopdx.selection import choose, keep_count, length_correlation, length_matched_subset, random_subset, select_top_fraction, sequence_gap


def test_gap_matches_hand_computed_example() -> None:
    lt = torch.tensor([[-1.0, -0.5, -2.0, 0.0], [-0.2, -0.2, 0.0, 0.0]])
    ls = torch.tensor([[-2.0, -0.1, -1.0, -9.0], [-1.2, -0.1, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # d = lt - ls = [[1, -0.4, -1, (masked)], [1, -0.1]]
    assert sequence_gap(lt, ls, mask, "abs").tolist() == pytest.approx([(1 + 0.4 + 1) / 3, (1 + 0.1) / 2])
    assert sequence_gap(lt, ls, mask, "positive").tolist() == pytest.approx([1 / 3, 1 / 2])
    assert sequence_gap(lt, ls, mask, "negative").tolist() == pytest.approx([(0.4 + 1) / 3, 0.1 / 2])
    assert sequence_gap(lt, ls, mask, "signed").tolist() == pytest.approx([(1 - 0.4 - 1) / 3, (1 - 0.1) / 2])
    with pytest.raises(ConfigError):
        sequence_gap(lt, ls, mask, "bogus")


def test_keeps_exactly_the_top_rho() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8])
    assert select_top_fraction(scores, 0.5).tolist() == [1, 3, 5]
    assert select_top_fraction(scores, 1 / 3).tolist() == [1, 5]
    assert select_top_fraction(scores, 1.0).tolist() == list(range(6))


def test_ties_are_broken_by_position() -> None:
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert select_top_fraction(scores, 0.5).tolist() == [0, 1]
    scores = torch.tensor([0.2, 0.9, 0.9, 0.9])
    assert select_top_fraction(scores, 0.5).tolist() == [1, 2]


def test_rho_bounds() -> None:
    assert keep_count(10, 0.01) == 1  # never an empty batch
    assert keep_count(10, 0.25) == 3
    assert keep_count(8, 0.5) == 4
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="rho"):
            keep_count(10, bad)


def test_length_normalisations_by_hand() -> None:
    lt = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]])
    ls = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert sequence_gap(lt, ls, mask, "abs", "mean").tolist() == pytest.approx([1.0, 2.0])
    assert sequence_gap(lt, ls, mask, "abs", "sqrt").tolist() == pytest.approx([4 / 2, 2 / 1])
    assert sequence_gap(lt, ls, mask, "abs", "sum").tolist() == pytest.approx([4.0, 2.0])
    with pytest.raises(ConfigError, match="length normalisation"):
        sequence_gap(lt, ls, mask, "abs", "median")


def test_mean_gap_favours_short_rollouts_and_sqrt_does_not() -> None:
    """Under the null (iid token gaps, whatever the length), the top half by mean |gap| is
    mostly short rollouts: the reason for the length-normalised variant and the logged correlation."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([4] * 200 + [64] * 200)
    mask = (torch.arange(64)[None, :] < lengths[:, None]).float()
    d = torch.randn(400, 64, generator=g)
    mean_pick = select_top_fraction(sequence_gap(d, torch.zeros_like(d), mask, "signed", "mean"), 0.25)
    sqrt_pick = select_top_fraction(sequence_gap(d, torch.zeros_like(d), mask, "signed", "sqrt"), 0.25)
    # analytically 0.77 of the top quarter by mean are short (sd 1/2 vs 1/8), 0.5 by sqrt
    assert (lengths[mean_pick] == 4).float().mean() > 0.65
    assert 0.35 < (lengths[sqrt_pick] == 4).float().mean() < 0.65


def test_length_correlation() -> None:
    assert length_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3, 2, 1])) == pytest.approx(-1.0)
    assert length_correlation(torch.tensor([1.0, 2.0]), torch.tensor([5, 5])) == 0.0


def test_random_control_has_the_same_size_and_is_seeded() -> None:
    a = random_subset(10, 0.3, torch.Generator().manual_seed(1))
    assert len(a) == keep_count(10, 0.3) == 3 and a.tolist() == sorted(set(a.tolist()))
    assert a.tolist() == random_subset(10, 0.3, torch.Generator().manual_seed(1)).tolist()
    draws = {tuple(random_subset(10, 0.3, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(draws) > 10


def test_length_matched_control_copies_the_lengths_not_the_choice() -> None:
    lengths = torch.tensor([5, 5, 5, 9, 9, 9, 2, 2])
    ref = torch.tensor([0, 3, 6])  # one of each length
    picks = {tuple(length_matched_subset(lengths, ref, torch.Generator().manual_seed(s)).tolist()) for s in range(30)}
    for p in picks:
        assert sorted(lengths[list(p)].tolist()) == [2, 5, 9]
    assert len(picks) > 5  # random within each length
    # nearest length when no exact one is left
    got = length_matched_subset(torch.tensor([10, 11, 30]), torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    assert got.tolist() == [0, 1]


def test_choose_dispatches_and_rejects_unknown() -> None:
    gaps, lengths, g = torch.tensor([0.1, 0.9, 0.5, 0.7]), torch.tensor([1, 2, 3, 4]), torch.Generator().manual_seed(0)
    assert choose("gap", gaps, lengths, 0.5, g).tolist() == [1, 3]
    assert len(choose("random", gaps, lengths, 0.5, g)) == 2
    assert sorted(lengths[choose("length_matched", gaps, lengths, 0.5, g)].tolist()) == [2, 4]
    with pytest.raises(ConfigError, match="selector"):
        choose("oracle", gaps, lengths, 0.5, g)
