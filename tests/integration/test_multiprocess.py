"""Two processes through Lightning's DDP give the update of one process with the same global batch.

Run as the CLI in subprocesses: Lightning's launcher starts the second process by
running the same command again (under pytest it would rerun pytest).  CPU, gloo.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

KEYED = ["train.accelerator=cpu", "rollout.sampler=keyed", "eval.sampler=keyed", "train.threads=1", "eval.samples=2"]
TWO = ["train.devices=2", "train.parallel=ddp"]


def _fit(args: list[str], strategy: str = "mopd", resume: Path | None = None, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mopdx", "fit", "--quiet", "--strategy", strategy, *(["--resume", str(resume)] if resume else []), *args]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(RUN_DIR_ENV, None)
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


RUN_DIR_ENV = "MOPDX_RUN_DIR"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def _series(run: Path) -> dict[str, list[float]]:
    """Per-step values of the logged training metrics (metrics.csv)."""
    import csv

    with open(run / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows if r.get(k)] for k in ("train/loss", "train/grad_norm")}


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("strategy", ["mopd", "camopd"])
def test_two_processes_match_one(tiny_lab, tiny_overrides, camopd_overrides, tmp_path: Path, strategy: str) -> None:
    """Same final weights (float tolerance) and the same evals; CaMOPD selects over the global batch."""
    base = [*(camopd_overrides if strategy == "camopd" else tiny_overrides), *KEYED, f"run.out_dir={tmp_path}", "train.max_steps=4"]
    one = _fit([*base, "run.name=one"], strategy)
    two = _fit([*base, *TWO, "run.name=two"], strategy)
    assert "run folder:" in one.stdout and two.stdout.count("run folder:") == 1  # only the main process reports
    # every step's loss and gradient norm (the global batch's, logged by the main process), then the weights
    logs = [_series(tmp_path / name) for name in ("one", "two")]
    assert len(logs[0]["train/loss"]) == 4
    for key in ("train/loss", "train/grad_norm"):
        assert max(abs(a - b) for a, b in zip(logs[0][key], logs[1][key], strict=True)) < 1e-5, (key, logs)
    assert _close(_weights(tmp_path / "one"), _weights(tmp_path / "two")) < 1e-5
    evals = [[json.loads(line)["acc"] for line in (tmp_path / name / "eval.jsonl").read_text().splitlines()] for name in ("one", "two")]
    assert evals[0] == evals[1] and len(evals[0]) == 3  # steps 0, 2, 4: the sharded eval reduces to the same figures
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["budget"]["sampled_tokens"] == \
        json.loads((tmp_path / "one" / "summary.json").read_text())["budget"]["sampled_tokens"]


def test_two_processes_resume_after_kill_9(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    """kill -9 of the whole 2-process run mid-way; --resume continues the same schedule to the same weights."""
    # Every periodic checkpoint is kept, so step 3's stays visible for the rest of the run: with
    # the default two, a fast machine could write steps 3-5 between two polls (CI once did) and
    # the run finished before the test saw it.  Twelve steps leave a wide window to kill in.
    base = [*tiny_overrides, *KEYED, *TWO, f"run.out_dir={tmp_path}", "train.max_steps=12", "train.ckpt_every=1",
            "train.eval_every=0", "train.keep_checkpoints=true"]
    _fit([*base, "run.name=whole"])
    proc = _fit([*base, "run.name=killed"], wait=False)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts / "epoch=0-step=3.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # both processes, no chance to clean up
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before the kill: nothing was resumed"
    _fit([*TWO], resume=tmp_path / "killed")
    assert _close(_weights(tmp_path / "whole"), _weights(tmp_path / "killed")) < 1e-5
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["steps"] == 12
    # it continued from the checkpoint rather than starting over: the resumed attempt logged steps >= 3 only
    (resumed,) = (tmp_path / "killed" / "logs").glob("resume-*/metrics.csv")
    steps = [int(float(row.split(",")[header.index("step")])) for header in [resumed.read_text().splitlines()[0].split(",")]
             for row in resumed.read_text().splitlines()[1:]]
    assert steps and min(steps) >= 3


def test_a_rank_in_the_environment_alone_does_not_make_a_helper(tiny_lab, tiny_overrides, tmp_path: Path, monkeypatch) -> None:
    """SLURM sets SLURM_PROCID for every task, also for independent single-process fits: each
    still creates, locks and writes its own run folder."""
    from mopdx.config import load_config
    from mopdx.run import ranks
    from mopdx.run.fit import fit

    monkeypatch.setenv("SLURM_PROCID", "3")
    assert not ranks.is_main()
    cfg = load_config("mopd", [], [*tiny_overrides, f"run.out_dir={tmp_path}", "run.name=task3", "train.max_steps=1", "train.eval_every=0"])
    assert not ranks.is_helper(cfg)
    summary = fit(cfg, progress=False)
    assert "table" in summary and (tmp_path / "task3" / "summary.json").is_file() and (tmp_path / "task3" / "teacher_acc.json").is_file()
