"""Gap-based selection: the gap definition and top-rho selection."""

from __future__ import annotations

import pytest
import torch

from mopdx.errors import ConfigError
from mopdx.selection import keep_count, select_top_fraction, sequence_gap


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
