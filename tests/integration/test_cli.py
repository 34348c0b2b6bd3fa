"""The command line: help, listing, and one clear line for each kind of bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mopdx.cli import main
from mopdx.config import load_config


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "mopdx", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("cmd", [[], ["fit"], ["eval"], ["lab"], ["list-strategies"]])
def test_help_for_every_command(cmd: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if cmd == ["fit"]:
        for opt in ("--strategy", "--config", "--resume", "key=value"):
            assert opt in out


def test_list_strategies(capsys) -> None:
    assert main(["list-strategies"]) == 0
    assert "mopd" in capsys.readouterr().out


def test_unknown_strategy() -> None:
    assert_one_line_error(run_cli("fit", "--strategy", "nope"), "unknown strategy 'nope'", "mopd")


def test_misspelled_key() -> None:
    assert_one_line_error(run_cli("fit", "optim.lrr=0.1"), "optim.lrr")


def test_unknown_flag_is_rejected() -> None:
    proc = run_cli("fit", "--stratgy", "mopd")
    assert proc.returncode == 2 and "--stratgy" in proc.stderr


@pytest.fixture()
def lab_args(tiny_lab, tiny_overrides, tmp_path: Path) -> list[str]:
    return [*tiny_overrides, f"run.out_dir={tmp_path / 'runs'}"]


def test_missing_model_folder(lab_args, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("fit", *lab_args, f"model.student={tmp_path / 'nothing'}"), "student folder", "not found")


def test_teacher_with_other_vocabulary(lab_args, tmp_path: Path, tiny_model_factory) -> None:
    from mopdx_lab.tokenizer import build_tokenizer

    other = build_tokenizer(["completely different words " * 3, "zebra quartz"], vocab_size=270)
    folder = tmp_path / "alien"
    tiny_model_factory().save_pretrained(folder)
    other.save_pretrained(folder)
    assert_one_line_error(run_cli("fit", *lab_args, f"model.teachers.add={folder}"), "teacher 'add'", "different vocabulary")


def test_domain_without_teacher(lab_args, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "write a poem", "domain": "poetry"}) + "\n")
    own = ["model.student=lab:stage1", "model.teachers.add=lab:teacher/add", "data.eval=lab:eval"]  # data of its own: the lab run is not merged in
    assert_one_line_error(run_cli("fit", *lab_args, *own, f"data.train={prompts}"), "poetry", "no teacher")


def test_empty_prompt_file(lab_args, tmp_path: Path) -> None:
    prompts = tmp_path / "empty.jsonl"
    prompts.write_text("")
    assert_one_line_error(run_cli("fit", *lab_args, f"data.train={prompts}"), "empty")


def test_resume_of_a_non_run_folder(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("fit", "--resume", str(tmp_path)), "cannot resume")


@pytest.mark.slow
def test_fit_then_eval_end_to_end(lab_args, tiny_lab, tmp_path: Path) -> None:
    proc = run_cli("fit", "--strategy", "mopd", "--quiet", *lab_args, "run.name=e2e")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\|\s*add\s*\|", proc.stdout) and "normalised" in proc.stdout
    run = tmp_path / "runs" / "e2e"
    out = tmp_path / "eval.json"
    proc = run_cli("eval", "--quiet", "--model", str(run / "final"), "--out", str(out), *lab_args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["model"]) == {"add", "reverse", "sort"}
    assert "mean" in result["normalised"]
    # the saved config alone reproduces the run's settings
    proc = run_cli("fit", "--quiet", "--config", str(run / "config.yaml"), "run.name=again")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "again" / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_compare_two_strategies(camopd_overrides, tmp_path: Path) -> None:
    """MOPD, CaMOPD and one of its controls (a method variant) on the tiny CaMOPD scenario."""
    out = tmp_path / "cmp"
    scenario = str(Path(__file__).parents[2] / "configs" / "experiment" / "camopd_lab.yaml")
    args = [*camopd_overrides, f"run.out_dir={tmp_path / 'runs'}", "train.max_steps=2", "train.eval_every=1"]
    proc = run_cli("compare", "--quiet", "--strategies", "mopd", "camopd", "camopd[strategy.selector=random]", "--seeds", "0", "1",
                   "--config", scenario, "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\|\s*mopd\s*\|", proc.stdout) and re.search(r"\|\s*camopd\s*\|", proc.stdout) and "±" in proc.stdout
    assert "general recovery AUC" in proc.stdout and "steps to 80%" in proc.stdout
    for name in ("comparison.md", "comparison.json", "comparison.png", "mopd-seed1/final/model.safetensors",
                 "camopd_strategy.selector=random-seed0/final/model.safetensors", "comparison_tradeoff.png", "comparison_recovery.png"):
        assert (out / name).exists(), name
    result = json.loads((out / "comparison.json").read_text())
    assert result["strategies"]["camopd"]["seeds"] == [0, 1] and "auc" in result["strategies"]["camopd"]["groups"]["general"]
    rand = load_config(None, [out / "camopd_strategy.selector=random-seed0" / "config.yaml"], [])
    assert rand.strategy.selector == "random" and rand.strategy.name == "camopd"
    # rerunning reuses finished runs instead of training again
    again = run_cli("compare", "--quiet", "--strategies", "mopd", "--seeds", "0", "--config", scenario, "--out", str(out), *args)
    assert again.returncode == 0 and re.search(r"\|\s*mopd\s*\|", again.stdout)
    assert (out / "mopd-seed0" / "summary.json").stat().st_mtime < (out / "comparison.md").stat().st_mtime
    # a typo in any arm fails before the first run starts
    bad = run_cli("compare", "--quiet", "--strategies", "mopd", "camopd[strategy.rhoo=0.3]", "--seeds", "0", "--config", scenario,
                  "--out", str(tmp_path / "bad"), *args)
    assert bad.returncode == 2 and "strategy.rhoo" in bad.stderr and not (tmp_path / "bad" / "mopd-seed0").exists()

def test_compare_overrides_after_strategies_are_overrides(tmp_path: Path) -> None:
    """``--strategies mopd key=value`` reads the trailing pair as an override (the help's promise), not a method name."""
    out = tmp_path / "cmp"
    bad = run_cli("compare", "--quiet", "--strategies", "mopd", "trian.max_steps=2", "--seeds", "0", "--out", str(out))
    assert bad.returncode == 2 and "trian" in bad.stderr and "unknown strategy" not in bad.stderr, bad.stderr
    assert not out.exists() or not any(out.iterdir())
