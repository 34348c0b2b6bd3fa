"""``train.loggers``: Lightning's own loggers, chosen in the config, checked before any model loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from mopdx.config import load_config
from mopdx.errors import ConfigError
from mopdx.run.loggers import make_loggers


def cfg_with(tmp_path: Path, *overrides: str):
    return load_config("mopd", [], [f"lab.root={tmp_path / 'lab'}", *overrides])


def test_default_is_csv_and_tensorboard_in_the_run_folder(tmp_path: Path) -> None:
    loggers = make_loggers(cfg_with(tmp_path), tmp_path / "run", "")
    assert [type(lg) for lg in loggers] == [CSVLogger, TensorBoardLogger]
    assert Path(loggers[0].log_dir) == tmp_path / "run" / "logs" and Path(loggers[1].log_dir) == tmp_path / "run" / "tb"
    resumed = make_loggers(cfg_with(tmp_path), tmp_path / "run", "resume-1")
    assert Path(resumed[0].log_dir) == tmp_path / "run" / "logs" / "resume-1"  # the first attempt's logs are kept


def test_a_chosen_subset_and_none(tmp_path: Path) -> None:
    assert [type(lg) for lg in make_loggers(cfg_with(tmp_path, "train.loggers=[csv]"), tmp_path, "")] == [CSVLogger]
    assert make_loggers(cfg_with(tmp_path, "train.loggers=[]"), tmp_path, "") == []


def test_unknown_or_repeated_names_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.loggers=.*allowed: a list of distinct names from csv, tensorboard, wandb, mlflow"):
        cfg_with(tmp_path, "train.loggers=[comet]")
    with pytest.raises(ConfigError, match="distinct"):
        cfg_with(tmp_path, "train.loggers=[csv,csv]")


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_logger_whose_package_is_missing_names_the_install(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda pkg, *a: None if pkg == name else real(pkg, *a))
    with pytest.raises(ConfigError, match=f"{name} needs the {name} package, which is not installed: pip install {name}"):
        cfg_with(tmp_path, f"train.loggers=[csv,{name}]")
