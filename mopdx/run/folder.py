"""Run folders: atomic creation, one process at a time, no empty leftovers, resume records.

A run folder belongs to one process at a time: ``lock_run_dir`` takes an OS
lock on ``<run>/.lock`` (``fcntl.flock``, released by the OS when the process
dies), so a second ``fit --resume`` of a folder in use fails at once instead of
training beside the first (every step logged twice, ``-v1`` checkpoints).  A
folder that a failed run leaves with nothing but its config is removed when the
run is closed (``release_run_dir``, ``close_run_dirs`` at process exit), so
failures do not litter ``runs/``; a folder with a checkpoint or an eval record
is always kept.  A resume never rewrites ``config.yaml``: what it changed is
recorded beside it in ``resume-<time>.yaml``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import time
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from mopdx.config import to_yaml
from mopdx.errors import RunFolderError

try:
    import fcntl
except ImportError:  # Windows: no flock; run folders are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
# What a run leaves before it has done any work: its config, its lock, Lightning's log folders.
_NO_WORK = {"config.yaml", LOCK_FILE, "logs", "tb"}
# resolved run folder -> (its open, locked .lock file; whether this process made the folder)
_HELD: dict[Path, tuple[IO[str] | None, bool]] = {}
# every run folder this process has opened, in order (the CLI's Ctrl-C line names the last one kept)
_OPENED: dict[Path, None] = {}


def new_run_dir(cfg: DictConfig) -> Path:
    """``<out_dir>/<name>``; a fresh suffix when the folder exists (never overwrite a run).

    ``mkdir`` without ``exist_ok`` is the claim: of several processes starting runs with
    one ``run.name`` at once, each gets its own folder (a check-then-mkdir would race)."""
    base = Path(cfg.run.out_dir)
    base.mkdir(parents=True, exist_ok=True)
    name = cfg.run.name or f"{cfg.strategy.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base / name, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            i += 1
            path = base / f"{name}-{i}"


def lock_run_dir(path: Path, created: bool = False) -> None:
    """Hold ``path`` for this process until ``release_run_dir`` or process exit.

    Raises at once when another process holds it; taking it again in this process is a
    no-op (a resume in the process that trained the run). ``created``: this process made
    the folder, so it may remove it if the run leaves it empty (never a folder it was given)."""
    key = path.resolve()
    if key in _HELD:
        return
    if fcntl is None:
        _HELD[key] = (None, created)
        _OPENED[key] = None
        return
    fh = open(path / LOCK_FILE, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        raise RunFolderError(f"run folder {path} is in use by pid {pid}: wait for that run to end (or stop it) before resuming it") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _HELD[key] = (fh, created)
    _OPENED[key] = None


def has_work(path: Path) -> bool:
    """Whether a run folder holds anything worth keeping: a checkpoint, an eval record,
    metrics, a final model -- anything but its config, its lock and empty log folders."""
    if not path.is_dir():
        return False
    if any(p.name not in _NO_WORK for p in path.iterdir()):
        return True
    return next((path / "logs").rglob("metrics.csv"), None) is not None


def release_run_dir(path: Path, discard_if_empty: bool = True) -> bool:
    """Unlock ``path``; first remove it when ``discard_if_empty``, this process made it, and it
    holds no work (a run that failed before its first checkpoint). Returns whether it remains."""
    fh, created = _HELD.pop(path.resolve(), (None, False))
    kept = True
    if discard_if_empty and created and path.is_dir() and not has_work(path):
        shutil.rmtree(path, ignore_errors=True)  # while still locked: no one else is in it
        kept = path.exists()
    if fh is not None:
        fh.close()  # closing the file releases the flock
    return kept


def opened_run_dirs() -> list[Path]:
    """Every run folder this process has opened (held or closed since), oldest first."""
    return list(_OPENED)


def close_run_dirs(skip: Collection[Path] = ()) -> list[Path]:
    """Release the run folders this process holds but those in ``skip`` (at exit, after a failure
    or Ctrl-C); the empty ones it made are removed. Returns the folders it opened that remain
    (also those a loop already closed on its way out), oldest first."""
    for p in list(_HELD):
        if p not in skip:
            release_run_dir(p)
    return [p for p in _OPENED if p not in skip and p.is_dir()]


atexit.register(close_run_dirs)  # the OS drops the locks at exit anyway; this removes the empty folders


def saved_config(run_dir: Path) -> Path:
    """The config a resume of ``run_dir`` starts from: that of its latest resume, else ``config.yaml``."""
    resumes = sorted(run_dir.glob("resume-*.yaml"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return resumes[-1] if resumes else run_dir / "config.yaml"


def last_step(run_dir: Path) -> int | None:
    """The step of the newest checkpoint in ``run_dir`` (None without one); memory-mapped,
    so it costs no weight reading even for a large model."""
    import torch

    steps = []
    for p in (run_dir / "checkpoints").glob("*.ckpt"):
        try:
            steps.append(int(torch.load(p, map_location="cpu", weights_only=False, mmap=True).get("global_step", -1)))
        except Exception:  # noqa: BLE001 - a checkpoint cut short by the interrupt
            continue
    return max(steps) if steps else None


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def record_resume(run_dir: Path, cfg: DictConfig) -> Path | None:
    """Write ``resume-<time>.yaml`` when ``cfg`` differs from the config the run was saved
    with: a header listing the changed keys, then the resolved config (loadable with
    ``--config``, and the base of the next resume). ``config.yaml`` stays as first written."""
    before = _flat(OmegaConf.to_container(OmegaConf.load(saved_config(run_dir)), resolve=True))
    after = _flat(OmegaConf.to_container(cfg, resolve=True))
    changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if not changed:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = [f"# resumed {stamp} by pid {os.getpid()} with these changes to {saved_config(run_dir).name}:"]
    lines += [f"#   {k}: {json.dumps(before.get(k))} -> {json.dumps(after.get(k))}" for k in changed]
    lines.append(f"# the resolved config of this resume follows; `python -m mopdx fit --resume {run_dir}` continues from it\n")
    path, i = run_dir / f"resume-{stamp}.yaml", 1
    while True:
        try:
            with path.open("x") as fh:
                fh.write("\n".join(lines) + to_yaml(cfg))
            return path
        except FileExistsError:
            i += 1
            path = run_dir / f"resume-{stamp}-{i}.yaml"
