"""A run whose domain is a multi-turn environment: trains, logs the episodes, resumes to the same episodes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mopdx.config import load_config
from mopdx.errors import ConfigError

EPISODES = ["lab.domains=[inc,rot]", "env.environments.inc=lab_blocks", "env.max_tokens=40", "env.max_turns=3",
            "rollout.max_new_tokens=6", "rollout.sampler=keyed"]


def test_a_multi_turn_domain_trains_beside_a_single_turn_one(tiny_overrides: list[str], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from mopdx.cli import main

    root = tmp_path_factory.mktemp("episodes_lab")
    args = [*tiny_overrides, f"lab.root={root}", *EPISODES, f"run.out_dir={tmp_path}", "train.max_steps=2", "train.eval_every=0"]
    assert main(["fit", "--strategy", "mopd", *args, "run.name=a", "--quiet"]) == 0
    metrics = pd.read_csv(tmp_path / "a" / "logs" / "metrics.csv")
    turns = metrics["train/env/turns"].dropna()
    assert len(turns) == 2 and (turns >= 1).all()  # every episode had at least one turn
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["steps"] == 2


def test_episode_settings_refused_at_load(tiny_overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match="env.environments.inc: unknown environment 'nope'"):
        load_config("mopd", [], [*tiny_overrides, "env.environments.inc=nope"])
    with pytest.raises(ConfigError, match="cross_tokenizer"):
        load_config("mopd", [], [*tiny_overrides, "env.environments.inc=lab_blocks", "model.cross_tokenizer=true"])
    with pytest.raises(ConfigError, match="opcod"):
        load_config("opcod", [], [*tiny_overrides, "env.environments.inc=lab_blocks"])


def test_a_resumed_run_replays_the_same_episodes(tiny_overrides: list[str], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """Keyed sampling: an episode's every turn is a function of (seed, step, prompt, sample, turn), so a run
    resumed from its checkpoint samples the episodes the uninterrupted run did and ends at the same weights."""
    import torch
    from safetensors.torch import load_file

    from mopdx.run.fit import fit

    root = tmp_path_factory.mktemp("episodes_lab")
    args = [*tiny_overrides, f"lab.root={root}", *EPISODES, f"run.out_dir={tmp_path}", "train.max_steps=3", "train.ckpt_every=1", "train.eval_every=0"]
    full = fit(load_config("mopd", [], [*args, "run.name=full"]), progress=False)
    part = fit(load_config("mopd", [], [*args, "run.name=part", "train.max_steps=1"]), progress=False)
    run = Path(part["run_dir"])
    resumed = fit(load_config(None, [run / "config.yaml"], ["train.max_steps=3"]), resume=run, progress=False)
    a = load_file(str(Path(full["run_dir"]) / "final" / "model.safetensors"))
    b = load_file(str(Path(resumed["run_dir"]) / "final" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # (multi-turn replay itself: tests/unit/test_episodes.py)


@pytest.mark.parametrize(("strategy", "extra"), [("mopd", ["loss.kind=topk"]), ("mopd", ["loss.kind=full_reverse_kl"]), ("camopd", [])])
def test_every_loss_kind_and_camopds_selection_train_on_episodes(strategy: str, extra: list[str], tiny_overrides: list[str],
                                                               tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The top-k and full kinds read the teacher's distribution at every episode position and the mask keeps the
    student's tokens; CaMOPD's gap-based selection ranks episodes by their student-token gaps: each trains."""
    from mopdx.cli import main

    root = tmp_path_factory.mktemp("episodes_lab")
    args = [*tiny_overrides, f"lab.root={root}", *EPISODES, f"run.out_dir={tmp_path}", "train.max_steps=2", "train.eval_every=0", *extra]
    assert main(["fit", "--strategy", strategy, *args, "run.name=k", "--quiet"]) == 0
    metrics = pd.read_csv(tmp_path / "k" / "logs" / "metrics.csv")
    assert metrics["train/env/turns"].dropna().ge(1).all() and metrics["train/loss"].dropna().map(math.isfinite).all()
