"""Optuna sweeps: spec checks, a two-trial sweep + report, failed trials, resume after kill, PostgreSQL workers."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from mopdx.errors import ConfigError
from mopdx.experiments.sweep import load_spec, run_sweep
from mopdx.experiments.sweep_report import sweep_report


def _spec(tmp_path: Path, overrides: list[str], name: str = "t", **extra) -> Path:
    spec = {
        "name": name,
        "strategy": "mopd",
        "overrides": [*overrides, "train.max_steps=2", "train.eval_every=1", "train.ckpt_every=0"],
        "objectives": [{"metric": "acc.sort", "direction": "maximize"}],
        "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}, "loss.topk": {"type": "int", "low": 4, "high": 16}},
        "n_trials": 2,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 1},
        "out_dir": str(tmp_path / name),
        "heartbeat_s": 1,
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [({"typo": 1}, "unknown key"), ({"space": {"optim.lrr": {"type": "float", "low": 0.1, "high": 1}}}, "optim.lrr"),
     ({"objectives": [{"metric": "acc.sort", "direction": "up"}]}, "direction"), ({"sampler": {"name": "grid"}}, "sampler.name"),
     ({"space": {"optim.lr": {"type": "float", "low": 1, "high": 0.1}}}, "low <= high")],
)
def test_bad_specs_fail_with_one_line(tmp_path: Path, change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_spec(_spec(tmp_path, [], **change))


@pytest.mark.slow
def test_two_trial_sweep_then_report(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, tiny_overrides))
    study = run_sweep(spec)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        assert any(o.startswith("optim.lr=") for o in t.user_attrs["overrides"])
        assert (Path(t.user_attrs["run_dir"]) / "final" / "model.safetensors").is_file()  # each trial's run folder is kept
    assert len(run_sweep(spec).trials) == 2  # rerunning a finished study adds nothing
    report = sweep_report(spec)
    for name in ("best_trials.md", "trials.csv", "importances.json", "history.png", "parallel_coordinates.png", "history.html"):
        assert (spec.folder / "report" / name).is_file(), name
    assert "optim.lr=" in report["table"]


@pytest.mark.slow
def test_failed_trial_is_recorded_and_the_study_goes_on(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    space = {"data.eval": {"type": "categorical", "choices": [str(tmp_path / "missing.jsonl")]}}
    spec = load_spec(_spec(tmp_path, tiny_overrides, name="f", space=space))
    study = run_sweep(spec)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(failed) == 2  # the first failure did not stop the study
    assert all("missing.jsonl" in t.user_attrs["fail_reason"] for t in failed)
    assert "failed:" in sweep_report(spec)["table"]


def _sweep_cmd(spec: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mopdx", "sweep", "--quiet", str(spec), *extra]


@pytest.mark.slow
def test_resume_after_kill_reruns_the_interrupted_trial(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    path = _spec(tmp_path, [*tiny_overrides, "train.max_steps=6"], name="k", n_trials=2)
    spec = load_spec(path)
    proc = subprocess.Popen(_sweep_cmd(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    running = False
    while time.time() < deadline and not running:  # kill the worker in the middle of a trial
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="k", storage=spec.storage_url)
            running = any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
        except Exception:  # noqa: BLE001 -- no database or study yet: the worker is still starting
            continue
    assert running, "the sweep never started a trial"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3.5)  # past the heartbeat grace period (3 x 1 s)
    done = subprocess.run(_sweep_cmd(path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="k", storage=spec.storage_url)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    killed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1 and "fail_reason" not in killed[0].user_attrs  # interrupted, not a failure of its own


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


@pytest.fixture()
def postgres(tmp_path: Path):
    """A throwaway PostgreSQL server on loopback (Debian's packages; .ci/run installs them)."""
    bindir = _pg_bin()
    if bindir is None:
        msg = "PostgreSQL is not installed: apt-get install postgresql (.ci/run does)"
        if os.environ.get("MOPDX_REQUIRE_POSTGRES"):
            pytest.fail(msg)
        pytest.skip(msg)
    # not under pytest's tmp_path: that is private to its owner, and initdb refuses to run
    # as root, so the server runs as the postgres user in a folder of its own
    data = Path(tempfile.mkdtemp(prefix="mopdx-pg-"))
    run_as: list[str] = []
    if getpass.getuser() == "root":
        shutil.chown(data, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    def run(*cmd: str) -> None:
        done = subprocess.run([*run_as, *cmd], capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd[0]}: {done.stderr or done.stdout}"

    run(str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres")
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", opts, "-w", "-l", str(data / "log"), "start")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_in_postgresql(tiny_lab, tiny_overrides, tmp_path: Path, postgres: str) -> None:
    path = _spec(tmp_path, [*tiny_overrides, "train.max_steps=4"], name="pg", n_trials=4)
    workers = [subprocess.Popen(_sweep_cmd(path, "--storage", postgres), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="pg", storage=postgres)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert 4 <= len(complete) <= 5  # each worker stops once the shared budget is used (at most one overshoot)
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers ran trials of the one study
