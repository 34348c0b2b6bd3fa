"""benchmarks/opcod_paired.py: two arms' final accuracies differenced seed by seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("opcod_paired", Path(__file__).parents[2] / "benchmarks" / "opcod_paired.py")
opcod_paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(opcod_paired)


def _run(folder: Path, name: str, final: dict[str, float]) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "summary.json").write_text(json.dumps({"final": final}))


def test_differences_are_paired_by_seed_over_the_seeds_both_arms_finished(tmp_path: Path) -> None:
    b = "opcod[strategy.feedback=false]"
    for seed, (x, y) in enumerate([(0.9, 0.5), (0.7, 0.4), (0.8, 0.6)]):
        _run(tmp_path, f"opcod-seed{seed}", {"A/x": x})
        _run(tmp_path, f"opcod_strategy.feedback=false-seed{seed}", {"A/x": y})
    _run(tmp_path, "opcod-seed3", {"A/x": 0.0})  # the other arm has no seed 3: left out
    (row,) = opcod_paired.paired(tmp_path, "opcod", b)
    assert row["seeds"] == 3 and row["a - b"] == pytest.approx((0.4 + 0.3 + 0.2) / 3)
    # paired: the seed-to-seed spread of each arm cancels (an unpaired CI would be far wider)
    assert row["95% CI"] == pytest.approx(4.303 * 0.1 / 3**0.5)
    with pytest.raises(SystemExit, match="no seed"):
        opcod_paired.paired(tmp_path, "opcod", "opcod[strategy.gating=false]")
