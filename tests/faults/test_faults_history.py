"""Kills and resumes vs the eval history: the final result and ``eval.jsonl`` stay right.

A kill -9 is simulated in-process: a callback raises (Lightning then stops the run,
as a kill would, after saving ``on_exception.ckpt``); deleting that checkpoint leaves
what a kill -9 leaves, the last periodic checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from mopdx.config import configs_dir, load_config
from mopdx.errors import DataError, MopdxError, TrainingError
from mopdx.experiments.compare import load_history
from mopdx.run.callbacks import PeriodicEval, read_history
from mopdx.run.fit import fit
from mopdx.run.trainer import EXCEPTION_CKPT

# lab v1's OPCoD scenario (reverse / sort, 8-token answers): the tiny tests' scenario, fast where lab v2's 49-token traces are not
OPCOD_V1 = configs_dir() / "experiment" / "opcod_v1.yaml"
TINY_OPCOD = ["lab.opcod.base_steps=8", "lab.opcod.specialise_steps=6", "rollout.n=2", "data.batch_size=4", "codistill.feedback_max_tokens=6"]


class Killed(MopdxError):
    """Stands in for a kill -9 in the middle of a run."""


class KillAt(pl.Callback):
    """Stops the run right after step ``step``'s periodic eval (it runs after PeriodicEval)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def _as_if_kill_9(run: Path) -> None:
    """A kill -9 writes no exception checkpoint: resume from the last periodic one."""
    (run / "checkpoints" / f"{EXCEPTION_CKPT}.ckpt").unlink(missing_ok=True)


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _resume(run: Path, **kw: Any) -> dict[str, Any]:
    return fit(load_config(None, [run / "config.yaml"], []), resume=run, progress=False, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["mopd", "opcod"])
def test_resume_at_max_steps_runs_the_final_eval(tiny_lab, tiny_overrides, tmp_path: Path, monkeypatch, strategy: str) -> None:
    # evals at 0 and 3 (periodic), 4 (final): a kill before the final eval leaves step 3 as the last record
    args = [*tiny_overrides, f"run.out_dir={tmp_path}", "train.max_steps=4", "train.eval_every=3", "train.ckpt_every=2"]
    if strategy == "opcod":
        args += TINY_OPCOD
    files = ["eval.jsonl"] if strategy == "mopd" else ["eval_A.jsonl", "eval_B.jsonl"]
    full = fit(load_config(strategy, [OPCOD_V1] if strategy == "opcod" else [], [*args, "run.name=full"]), progress=False)
    assert full["eval_step"] == 4

    def killed(self, trainer, pl_module) -> None:
        raise Killed("killed during the final eval")

    with monkeypatch.context() as m:
        m.setattr(PeriodicEval, "on_train_end", killed)
        with pytest.raises(Killed):
            fit(load_config(strategy, [OPCOD_V1] if strategy == "opcod" else [], [*args, "run.name=cut"]), progress=False)
    run = tmp_path / "cut"
    _as_if_kill_9(run)
    assert not (run / "summary.json").exists() and all(_steps(run / f) == [0, 3] for f in files)

    resumed = _resume(run)  # restored at step 4 == max_steps: Lightning skips training
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["eval_step"] == 4
    assert summary["final"] == full["final"] and resumed["final"] == full["final"]
    assert all(_steps(run / f) == [0, 3, 4] for f in files)
    # resuming the finished run again reuses the final eval instead of repeating it
    again = _resume(run)
    assert again["final"] == full["final"] and all(_steps(run / f) == [0, 3, 4] for f in files)


@pytest.mark.slow
def test_eval_history_has_one_record_per_step_after_repeated_resumes(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    args = [*tiny_overrides, f"run.out_dir={tmp_path}", "train.max_steps=10", "train.eval_every=2", "train.ckpt_every=3"]
    full = fit(load_config("mopd", [], [*args, "run.name=full"]), progress=False)
    expected = read_history(tmp_path / "full" / "eval.jsonl")
    assert [r["step"] for r in expected] == [0, 2, 4, 6, 8, 10]

    run = tmp_path / "cut"
    with pytest.raises(Killed):  # evals 0..6 written, last checkpoint at step 3
        fit(load_config("mopd", [], [*args, "run.name=cut"]), progress=False, callbacks=[KillAt(6)])
    _as_if_kill_9(run)
    with pytest.raises(Killed):  # restored at 3: evals 4, 6 are made again; killed at 8, last checkpoint at 6
        _resume(run, callbacks=[KillAt(8)])
    assert _steps(run / "eval.jsonl") == [0, 2, 4, 6, 8]
    _as_if_kill_9(run)
    resumed = _resume(run)  # restored at 6: eval 8 is made again

    assert _steps(run / "eval.jsonl") == [0, 2, 4, 6, 8, 10]  # one record per step, in order
    assert [r["acc"] for r in load_history(run)] == [r["acc"] for r in expected]
    assert resumed["final"] == full["final"] and resumed["eval_step"] == 10
    assert json.loads((run / "summary.json").read_text())["final"] == full["final"]


def _record(step: int, acc: float) -> str:
    return json.dumps({"step": step, "acc": {"add": acc}})


def test_load_history_keeps_the_last_record_per_step_in_order(tmp_path: Path, caplog) -> None:
    # what an older version left after resumes (steps repeated, out of order) and a kill mid-write
    lines = [_record(0, 0.1), _record(5, 0.2), _record(10, 0.3), _record(5, 0.25), _record(10, 0.35), _record(15, 0.4)]
    (tmp_path / "eval.jsonl").write_text("\n".join(lines) + '\n{"step": 20, "ac')
    with caplog.at_level(logging.WARNING, logger="mopdx"):
        history = load_history(tmp_path)
    assert [(r["step"], r["acc"]["add"]) for r in history] == [(0, 0.1), (5, 0.25), (10, 0.35), (15, 0.4)]
    assert "truncated last line" in caplog.text

    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "eval_A.jsonl").write_text("\n".join([_record(0, 0.1), _record(2, 0.2), _record(2, 0.3)]) + "\n")
    (peers / "eval_B.jsonl").write_text("\n".join([_record(2, 0.5), _record(0, 0.4)]) + '\n{"st')
    assert load_history(peers) == [{"step": 0, "acc": {"A/add": 0.1, "B/add": 0.4}}, {"step": 2, "acc": {"A/add": 0.3, "B/add": 0.5}}]


def test_read_history_refuses_a_bad_line_before_the_last(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(_record(0, 0.1) + '\n{"step": 5, "ac\n' + _record(10, 0.3) + "\n")
    with pytest.raises(DataError, match="line 2 is not JSON"):
        read_history(path)


def test_summary_refuses_an_eval_from_another_step(tmp_path: Path) -> None:
    (tmp_path / "eval.jsonl").write_text(_record(0, 0.1) + "\n" + _record(30, 0.2) + "\n")
    evaluator = PeriodicEval([], None, 30, tmp_path, {})  # type: ignore[arg-type]
    assert evaluator.final(30)["step"] == 30
    with pytest.raises(TrainingError, match="ended at step 60 but the last eval is at step 30"):
        evaluator.final(60)
