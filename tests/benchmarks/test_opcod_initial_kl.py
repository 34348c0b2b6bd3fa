"""benchmarks/opcod_initial_kl.py: each peer's first-step loss, per arm, over seeds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("opcod_initial_kl", Path(__file__).parents[2] / "benchmarks" / "opcod_initial_kl.py")
opcod_initial_kl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(opcod_initial_kl)


def _run(folder: Path, name: str, rows: str) -> None:
    run = folder / name
    (run / "logs").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "config.yaml").write_text("codistill:\n  divergence: reverse_kl\n")
    # as Lightning's CSV logger writes it: eval rows without a loss come first, then step rows
    (run / "logs" / "metrics.csv").write_text("A/loss,B/loss,eval/A/acc_x,loss,step\n,,0.3,,0\n" + rows)


def test_an_older_runs_first_logged_step_is_taken_and_named_and_averaged_over_seeds(tmp_path: Path) -> None:
    _run(tmp_path, "opcod-seed0", "0.20,0.10,,0.30,4\n0.05,0.01,,0.06,9\n")
    _run(tmp_path, "opcod-seed1", "0.30,0.12,,0.42,4\n0.04,0.02,,0.06,9\n")
    _run(tmp_path, "opcod-seed2", "")  # no training step logged: not finished, but summary exists
    (tmp_path / "opcod-seed2" / "summary.json").unlink()  # so it is left out
    rows = {r["peer"]: r for r in opcod_initial_kl.initial_divergence(tmp_path, "opcod")}
    assert rows["A"]["per token (nats)"] == pytest.approx(0.25) and rows["B"]["per token (nats)"] == pytest.approx(0.11)
    assert rows["A"]["seeds"] == 2 and rows["A"]["divergence"] == "reverse_kl"
    assert rows["A"]["step"] == "4"  # the logger's first row, not step 0: the table says so
    # two values 0.1 apart: sample sd 0.1 / sqrt(2), standard error 0.05, t(1 dof) 12.706
    assert rows["A"]["95% CI"] == pytest.approx(12.706 * 0.05, rel=1e-3)


def test_the_step_0_loss_a_run_recorded_is_preferred_to_the_log(tmp_path: Path) -> None:
    _run(tmp_path, "opcod-seed0", "0.20,0.10,,0.30,4\n")
    (tmp_path / "opcod-seed0" / "summary.json").write_text(json.dumps({"initial_loss": {"A": 0.5, "B": 0.7}}))
    rows = {r["peer"]: r for r in opcod_initial_kl.initial_divergence(tmp_path, "opcod")}
    assert rows["A"]["per token (nats)"] == pytest.approx(0.5) and rows["B"]["per token (nats)"] == pytest.approx(0.7)
    assert rows["A"]["step"] == "0"


def test_an_arm_without_finished_runs_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no finished run"):
        opcod_initial_kl.initial_divergence(tmp_path, "opcod[strategy.gating=false]")
