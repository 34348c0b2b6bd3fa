"""Learning-rate multiplier: warmup, then constant or cosine to a floor."""

from __future__ import annotations

import pytest

from mopdx.module import lr_factor


def test_warmup_is_linear() -> None:
    assert lr_factor(0, 10, 100, "constant", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, "constant", 0.1) == pytest.approx(1.0)


def test_constant_after_warmup() -> None:
    assert lr_factor(80, 10, 100, "constant", 0.1) == 1.0


def test_cosine_reaches_floor_and_stays() -> None:
    assert lr_factor(10, 10, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(150, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
