"""The lab's multi-turn models (mopdx_lab/blocks.py) and the scenario that compares multi-turn MOPD with single-turn MOPD and GRPO."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from episode_fakes import Scripted, lab_chat_tokenizer

from mopdx.data import Example

TINY_BLOCKS = ["lab.blocks.steps=2", "lab.blocks.check_every=1", "lab.blocks.prompts=4", "lab.blocks.group=2",
               "lab.targets.check_prompts=8", "lab.targets.check_samples=1"]


def test_format_examples_tokenise_as_the_episode_the_oracle_makes() -> None:
    """The SFT data must be the token sequences a lab_blocks episode holds, or the student learns a format the
    runs never show it: each turn's example (earlier turns as context) is a prefix of the episode, to the token."""
    from mopdx.backends.base import Sampling
    from mopdx.envs.episodes import EpisodeSpec, run_episodes
    from mopdx.text import encode_completion, encode_prompt
    from mopdx_lab.blocks import episode_examples
    from mopdx_lab.envs import BlockOracle

    tok = lab_chat_tokenizer()
    ex = Example("inc", "inc: 1234", "2345 3456 4567 5678")
    turns = ex.answer.split()[:3]
    rollouts, rewards, _ = run_episodes(Scripted(tok, turns), tok, [ex], lambda e: BlockOracle(), Sampling(max_new_tokens=8), EpisodeSpec(max_turns=3, max_tokens=64))
    assert rewards.tolist() == [1.0]
    seq = list(rollouts.unpadded()[0][0])
    examples = episode_examples(ex)
    assert [e.answer for e in examples] == turns and examples[1].prompt == "next" and examples[0].context == ()
    for e in examples:
        row = encode_prompt(tok, e) + encode_completion(tok, e.answer)
        assert seq[: len(row)] == row
    assert len(encode_prompt(tok, examples[-1]) + encode_completion(tok, turns[-1])) == len(seq)  # the last turn ends the episode


def test_the_probes_grade_one_turn_and_the_format() -> None:
    from mopdx_lab.envs import BlockFormat, BlockTrace

    ex = Example("inc", "inc: 1234", "2345 3456 4567 5678")
    env = BlockTrace()
    env.reset(ex)
    assert env.step("2345 3456 4567 9999").reward == 1.0  # only the first three blocks count
    assert env.step("2345 3456 4560").reward == 0.0 and env.step("2345 3456").reward == 0.0
    form = BlockFormat()
    form.reset(ex)
    assert form.step("9999").observation and form.step(" 0000").observation  # wrong digits, right form: next
    last = form.step("1111")
    assert last.done and last.reward == 1.0
    form.reset(ex)
    first = form.step("2345 3456 4567")  # the whole trace in one turn is not the format
    assert first.done and first.reward == 0.0


@pytest.fixture(scope="module")
def blocks_overrides(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> list[str]:
    root = tmp_path_factory.mktemp("blocks_lab")
    return [*tiny_overrides, f"lab.root={root}", "lab.domains=[inc,rot]", *TINY_BLOCKS, "lab.allow_outside_regime=true"]


def test_blocks_scenario_builds_resolves_and_every_arm_trains_and_evaluates_by_episode(blocks_overrides: list[str], tmp_path: Path) -> None:
    from mopdx.cli import main
    from mopdx.config import load_config
    from mopdx.paths import configs_dir
    from mopdx_lab.blocks import blocks_dir
    from mopdx_lab.build import lab_dir

    experiment = str(configs_dir() / "experiment" / "blocks_lab.yaml")
    short = [*blocks_overrides, "train.max_steps=2", "train.eval_every=2", "env.max_tokens=40", f"run.out_dir={tmp_path}", "--quiet"]
    assert main(["fit", "--strategy", "mopd", "--config", experiment, *short, "run.name=multi"]) == 0
    lab = load_config("mopd", [experiment], blocks_overrides).lab
    manifest = json.loads((blocks_dir(lab, lab_dir(lab)) / "manifest.json").read_text())
    assert set(manifest["models"]) == {"student", "teacher_inc", "teacher_rot"}
    student = manifest["models"]["student"]
    assert student["source"] == "stage1" and set(student["episode"]) == {"inc", "rot"} and set(student["single_turn"]) == {"source", "after"}
    # the tiny lab's models learn neither the format nor the task in two steps: each miss is one line, the regime's
    # too, and lab.allow_outside_regime=true builds on
    assert student["steps"] == 2 and any("blocks/student" in m and "lab.blocks.formed=0.95" in m for m in manifest["missed"])
    assert any("lab.blocks.teacher_reward=0.9" in m for m in manifest["missed"]) and any("regime on inc" in m for m in manifest["missed"])
    assert set(manifest["regime"]) == {"inc", "rot"} and all("kl" in r for r in manifest["regime"].values())
    metrics = pd.read_csv(tmp_path / "multi" / "logs" / "metrics.csv")
    assert metrics["train/env/turns"].dropna().ge(1).all()
    assert main(["fit", "--strategy", "mopd", "--config", experiment, *short, "env.train=false", "run.name=single"]) == 0
    single = pd.read_csv(tmp_path / "single" / "logs" / "metrics.csv")
    assert "train/env/turns" not in single or single["train/env/turns"].isna().all()  # trained on single-turn completions
    summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert set(summary["final"]) == {"inc", "rot"}  # evaluated (by episode) all the same
