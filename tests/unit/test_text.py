"""Padding helpers shared by the backends (prompts left-padded, completions right-padded)."""

from __future__ import annotations

import torch

from mopdx.text import left_pad, right_pad


def test_left_and_right_pad_place_rows_at_opposite_ends() -> None:
    ids, mask = left_pad([[5, 6], [7], []], pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 7], [0, 0]] and mask.tolist() == [[1, 1], [0, 1], [0, 0]]
    ids, mask = right_pad([[5, 6], [7], []], 0, width=3)
    assert ids.tolist() == [[5, 6, 0], [7, 0, 0], [0, 0, 0]] and mask.tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]
    values, _ = right_pad([[-0.5], [-1.0, -2.0]], 0.0, dtype=torch.float32)
    assert values.dtype == torch.float32 and values.tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
