"""Which process of a multi-process run this is (``train.devices x train.num_nodes > 1``).

Why a module: Lightning's launcher starts the other processes by running the same
command again, and torchrun / SLURM start them all at once, so everything before
``trainer.fit`` runs in each of them.  What only one process may do -- create and
lock the run folder, score the teachers, write evals, the summary and the final
model -- is skipped where ``is_helper(cfg)``: a rank in the environment *and*
several processes in the config.  The others find the run folder the main process
made in ``MOPDX_RUN_DIR`` (inherited from its environment when Lightning launches them),
else under ``run.out_dir/run.name`` (required across nodes), else ``--resume``'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from mopdx.errors import ConfigError

RUN_DIR_ENV = "MOPDX_RUN_DIR"


def process_rank() -> int:
    """This process's global rank, read from the launcher's environment as Lightning reads it
    (``lightning_fabric``'s ``_get_rank``; without importing Lightning, so the CLI can ask
    before it loads anything heavy).  0 in a single-process run."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 0


def is_main() -> bool:
    return process_rank() == 0


def is_helper(cfg: DictConfig) -> bool:
    """A process other than the main one of *this* multi-process run.  A rank in the
    environment alone is not enough: SLURM sets ``SLURM_PROCID`` for every task, also when
    each task runs its own single-process fit (a sweep's workers)."""
    return world_size(cfg) > 1 and not is_main()


def world_size(cfg: DictConfig) -> int:
    return int(cfg.train.devices) * int(cfg.train.num_nodes)


def launched_together() -> bool:
    """Started by torchrun or SLURM (every process at once), not by Lightning's own launcher."""
    return "RANK" in os.environ or "SLURM_PROCID" in os.environ


def main_run_dir(cfg: DictConfig) -> Path | None:
    """The folder the main process must use so the others can find it: ``run.out_dir/run.name``
    when all processes start together; ``None`` (a fresh name) otherwise."""
    if world_size(cfg) > 1 and launched_together():
        return Path(cfg.run.out_dir) / str(cfg.run.name)
    return None


def shared_run_dir(cfg: DictConfig, resume: Path | None) -> Path:
    """The run folder of a process other than the main one."""
    if resume is not None:
        return resume
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if cfg.run.name:
        return Path(cfg.run.out_dir) / str(cfg.run.name)
    raise ConfigError(f"process {process_rank()} cannot tell which run folder to use: set run.name (every process then writes to run.out_dir/run.name)")


def announce_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Main process: pass the run folder on to the processes Lightning's launcher will start."""
    if world_size(cfg) > 1:
        os.environ[RUN_DIR_ENV] = str(run_dir)
