"""The run's Lightning loggers, chosen by ``train.loggers`` (csv, tensorboard, wandb, mlflow).

Why a function of its own: every loop (distillation, co-distillation) gets its loggers
from ``make_trainer``, and where each one writes is part of the run folder layout that
resume and the analysis scripts rely on -- CSV in ``logs/``, TensorBoard in ``tb/``, a
resumed attempt in a ``resume-<time>`` sub-folder of each so the first attempt's logs are
kept.  W&B and MLflow stay inside the run folder by default too (W&B offline in
``wandb/``, MLflow a file store in ``mlruns/``), so a run never needs a network or an
account unless its config asks for one.  Lightning's own logger classes throughout;
whether the ``wandb`` / ``mlflow`` packages are installed is checked at config load
(``mopdx.config_checks``), before any model is built.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from mopdx.config_checks import LOGGER_PACKAGES


def make_loggers(cfg: DictConfig, run_dir: Path, log_version: str) -> list[Logger]:
    """The loggers of ``train.loggers``, in the order listed.

    ``log_version`` is ``""`` for a first attempt and ``resume-<time>`` for a resumed one:
    CSV and TensorBoard then write to ``logs/<version>`` and ``tb/<version>``.  A W&B or
    MLflow logger starts a new run of its own on each attempt, named after the run folder.
    """
    t = cfg.train
    loggers: list[Logger] = []
    for name in t.loggers:
        if name == "csv":
            loggers.append(CSVLogger(run_dir, name="logs", version=log_version))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir, name="tb", version=log_version))
        elif name == "wandb":
            loggers.append(WandbLogger(name=run_dir.name, save_dir=str(run_dir), project=str(t.wandb_project), offline=bool(t.wandb_offline)))
        elif name == "mlflow":
            uri = str(t.mlflow_tracking_uri) or f"file:{(run_dir / 'mlruns').resolve()}"
            loggers.append(MLFlowLogger(experiment_name=str(t.mlflow_experiment), run_name=run_dir.name, tracking_uri=uri))
        else:  # config_checks refuses other names; a config built by hand may still hold one
            raise ValueError(f"unknown logger {name!r} in train.loggers; allowed: {', '.join(LOGGER_PACKAGES)}")
    return loggers
