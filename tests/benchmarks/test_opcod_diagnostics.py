"""benchmarks/opcod_diagnostics.py: teacher diagnostics per window, per run or averaged over an arm's seeds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("opcod_diagnostics", Path(__file__).parents[2] / "benchmarks" / "opcod_diagnostics.py")
opcod_diagnostics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(opcod_diagnostics)

HEADER = ("A/loss,A/teacher_entropy,A/teacher_eos_early,A/teacher_acc,A/rollout_acc_x,A/rollout_acc_y,"
          "A/completion_len,A/flip_rate,step\n")


def _run(folder: Path, name: str, rows: list[tuple[float, float, float, int]], finished: bool = True) -> None:
    """A run whose peer A logs (loss, rollout acc on x, rollout acc on y) at each step, the rest constant."""
    run = folder / name
    (run / "logs").mkdir(parents=True)
    if finished:
        (run / "summary.json").write_text("{}")
    body = "".join(f"{loss},0.1,0.01,0.5,{x},{y},40,0.3,{step}\n" for loss, x, y, step in rows)
    (run / "logs" / "metrics.csv").write_text(HEADER + ",,,,,,,,0\n" + body)  # an eval row without a loss first


def test_an_arm_is_averaged_over_its_finished_seeds_per_window_with_each_domain_kept(tmp_path: Path) -> None:
    arm = "opcod[codistill.teacher=current]"
    _run(tmp_path, "opcod_codistill.teacher=current-seed0", [(0.4, 0.0, 1.0, 0), (0.2, 0.5, 1.0, 1), (0.1, 1.0, 0.5, 2)])
    _run(tmp_path, "opcod_codistill.teacher=current-seed1", [(0.2, 0.0, 1.0, 0), (0.0, 0.5, 1.0, 1), (0.3, 1.0, 0.0, 2)])
    _run(tmp_path, "opcod_codistill.teacher=current-seed2", [(9.0, 9.0, 9.0, 0)], finished=False)  # left out
    table = opcod_diagnostics.arm_diagnostics(tmp_path, arm, window=2)
    assert list(table["window"]) == [0, 2] and set(table["peer"]) == {"A"} and set(table["seeds"]) == {2}
    first, second = table.iloc[0], table.iloc[1]
    # window 0 = steps 0-1: seed means 0.3 and 0.1 -> 0.2; x: 0.25 in both seeds
    assert first["loss"] == pytest.approx(0.2) and first["rollout_acc_x"] == pytest.approx(0.25) and first["rollout_acc_y"] == pytest.approx(1.0)
    # window 2 = step 2: y is 0.5 and 0.0 -> 0.25; rollout_acc is the mean over domains
    assert second["rollout_acc_y"] == pytest.approx(0.25) and second["rollout_acc"] == pytest.approx((1.0 + 0.25) / 2)
    assert first["teacher_acc"] == pytest.approx(0.5) and first["arm"] == arm


def test_an_arm_without_finished_runs_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no finished run"):
        opcod_diagnostics.arm_diagnostics(tmp_path, "opcod", window=10)


def test_the_gate_and_leak_rates_of_the_feedback_to_a_peer_are_windowed_with_the_rest(tmp_path: Path) -> None:
    run = tmp_path / "opcod-seed0"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.csv").write_text("A/loss,A/teacher_entropy,A/feedback_gated,A/feedback_leaked,step\n"
                                              "0.3,0.1,0.5,0.25,0\n0.2,0.1,1.0,0.75,1\n0.1,0.1,0.5,0.0,2\n")
    table = opcod_diagnostics.run_diagnostics(run, window=2)
    assert list(table["feedback_gated"]) == pytest.approx([0.75, 0.5]) and list(table["feedback_leaked"]) == pytest.approx([0.5, 0.0])
    assert table["teacher_acc"].isna().all()  # not logged: left empty, not invented
