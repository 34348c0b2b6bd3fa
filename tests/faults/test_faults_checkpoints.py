"""Divergence and damaged checkpoints: one-line errors, no poisoned checkpoint, a resume that works.

Divergence is forced where each guard sits: a NaN gradient (caught before the optimiser
applies it), a NaN weight after the update, a real lr=1e6 run, and a NaN gradient in the
co-distillation loop.  Damaged checkpoints are a truncated ``last.ckpt`` (resume falls back
to the intact periodic one), all files corrupt (one-line error), and a crash mid-write
(the previous file stays loadable).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from mopdx.config import configs_dir, load_config
from mopdx.errors import MopdxError, TrainingError
from mopdx.finite import NonFiniteError, checkpoint_tensors, first_nonfinite
from mopdx.run.fit import fit
from mopdx.run.trainer import SafeCheckpointIO, make_trainer, resume_checkpoint

# lab v1's OPCoD scenario (reverse / sort, 8-token answers): the tiny tests' scenario, fast where lab v2's 49-token traces are not
OPCOD_V1 = configs_dir() / "experiment" / "opcod_v1.yaml"
TINY_OPCOD = ["lab.opcod.base_steps=8", "lab.opcod.specialise_steps=6", "rollout.n=2", "data.batch_size=4", "codistill.feedback_max_tokens=6"]


def _args(tiny_overrides: list[str], tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [*tiny_overrides, f"run.out_dir={tmp_path}", f"run.name={name}", "train.eval_every=0", *extra]


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_all_finite(ckpt_dir: Path) -> None:
    """Every file in checkpoints/ -- set-aside ones included -- holds finite weights and moments."""
    for p in ckpt_dir.iterdir():
        assert first_nonfinite(checkpoint_tensors(_load(p))) is None, p.name


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


class PoisonGrad(pl.Callback):
    """A NaN in one gradient at ``step`` -- what a numerically broken backward leaves."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == self.step:
            next(p for p in pl_module.parameters() if p.grad is not None and p.requires_grad).grad.view(-1)[0] = float("nan")


@pytest.mark.slow
def test_nan_gradient_is_never_applied_and_resume_continues(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    args = _args(tiny_overrides, tmp_path, "grad", "train.max_steps=5", "train.ckpt_every=1")
    with pytest.raises(NonFiniteError) as err:
        fit(load_config("mopd", [], args), progress=False, callbacks=[PoisonGrad(3)])
    assert "gradient norm of the student is nan at step 3" in _one_line(err) and "optim.lr" in str(err.value)
    ckpts = tmp_path / "grad" / "checkpoints"
    _assert_all_finite(ckpts)
    # no exception checkpoint for a divergence; step 3's checkpoints (the weights that gave the NaN) are set aside
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt.diverged", "last.ckpt.diverged"], names
    assert Path(resume_checkpoint(tmp_path / "grad")).name == "epoch=0-step=2.ckpt"
    run = tmp_path / "grad"
    resumed = fit(load_config(None, [run / "config.yaml"], ["optim.lr=1e-5"]), resume=run, progress=False)
    assert resumed["steps"] == 5
    assert _load(ckpts / "last.ckpt")["global_step"] == 5
    _assert_all_finite(ckpts)


@pytest.mark.slow
def test_nan_weights_after_the_update_are_never_checkpointed(tiny_lab, tiny_overrides, tmp_path: Path, monkeypatch) -> None:
    real = pl.LightningModule.optimizer_step

    def overflowing(self, *a: Any, **k: Any) -> None:  # an update so large the weights overflow
        real(self, *a, **k)
        if self.global_step == 2:
            with torch.no_grad():
                next(self.parameters()).fill_(float("inf"))

    monkeypatch.setattr(pl.LightningModule, "optimizer_step", overflowing)
    with pytest.raises(NonFiniteError, match=r"student weight \S+ became non-finite in the optimiser update of step 2") as err:
        fit(load_config("mopd", [], _args(tiny_overrides, tmp_path, "weights", "train.max_steps=4", "train.ckpt_every=1")), progress=False)
    _one_line(err)
    ckpts = tmp_path / "weights" / "checkpoints"
    _assert_all_finite(ckpts)
    assert not (ckpts / "on_exception.ckpt").exists()
    # step 2's weights were fine (the update broke them): nothing is set aside, resume starts there
    assert not list(ckpts.glob("*.diverged"))
    assert _load(Path(resume_checkpoint(tmp_path / "weights")))["global_step"] == 2


@pytest.mark.slow
def test_huge_lr_stops_with_one_line_and_no_nan_checkpoint(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    """The fault probe's case: the lr blows the weights up within a step or two."""
    args = _args(tiny_overrides, tmp_path, "lr", "train.max_steps=4", "train.ckpt_every=1", "optim.lr=1e6", "optim.warmup_steps=0")
    with pytest.raises(TrainingError, match=r"at step \d+|of step \d+") as err:
        fit(load_config("mopd", [], args), progress=False)
    assert "optim.lr" in _one_line(err)
    _assert_all_finite(tmp_path / "lr" / "checkpoints")


@pytest.mark.slow
def test_codistill_nan_gradient_names_the_peer(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    args = [*_args(tiny_overrides, tmp_path, "opcod", "train.max_steps=3", "train.ckpt_every=1"), *TINY_OPCOD]
    with pytest.raises(NonFiniteError, match=r"gradient norm of peer 'A' is nan at step 1") as err:
        fit(load_config("opcod", [OPCOD_V1], args), progress=False, callbacks=[PoisonGrad(1)])
    _one_line(err)
    _assert_all_finite(tmp_path / "opcod" / "checkpoints")


@pytest.mark.slow
def test_truncated_last_ckpt_falls_back_to_the_periodic_one(tiny_lab, tiny_overrides, tmp_path: Path, caplog) -> None:
    part = fit(load_config("mopd", [], _args(tiny_overrides, tmp_path, "cut", "train.max_steps=2", "train.ckpt_every=2")), progress=False)
    run = Path(part["run_dir"])
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="mopdx"):
        chosen = resume_checkpoint(run)
    assert Path(chosen).name == "epoch=0-step=2.ckpt"
    assert "last.ckpt (unreadable" in caplog.text and "resuming from epoch=0-step=2.ckpt (step 2)" in caplog.text
    resumed = fit(load_config(None, [run / "config.yaml"], ["train.max_steps=4"]), resume=run, progress=False)
    assert resumed["steps"] == 4 and _load(last)["global_step"] == 4


def test_all_checkpoints_corrupt_is_one_line(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"not a checkpoint")
    good = tmp_path / "good.ckpt"
    torch.save({"global_step": 2, "state_dict": {"w": torch.ones(3)}}, good)
    (ckpts / "epoch=0-step=2.ckpt").write_bytes(good.read_bytes()[:50])
    with pytest.raises(MopdxError, match="no usable checkpoint to resume") as err:
        resume_checkpoint(tmp_path)
    text = _one_line(err)
    assert "last.ckpt (unreadable" in text and "epoch=0-step=2.ckpt (unreadable" in text


def test_resume_skips_nan_checkpoints_of_old_runs(tmp_path: Path, caplog) -> None:
    """Runs from before the guards could write NaN weights into the newest checkpoints."""
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"global_step": 3, "state_dict": {"w": torch.tensor([1.0, float("nan")])}}, ckpts / "last.ckpt")
    torch.save({"global_step": 2, "state_dict": {"w": torch.ones(2)}}, ckpts / "epoch=0-step=2.ckpt")
    with caplog.at_level(logging.WARNING, logger="mopdx"):
        assert Path(resume_checkpoint(tmp_path)).name == "epoch=0-step=2.ckpt"
    assert "last.ckpt (non-finite w)" in caplog.text
    (ckpts / "epoch=0-step=2.ckpt").unlink()
    with pytest.raises(MopdxError, match=r"no usable checkpoint .*last.ckpt \(non-finite w\)"):
        resume_checkpoint(tmp_path)


def test_checkpoint_write_is_atomic_and_refuses_nan(tmp_path: Path, monkeypatch) -> None:
    io = SafeCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(4)}}, path)
    real_save = torch.save

    def crash_mid_write(obj: Any, f: Any, *a: Any, **k: Any) -> None:  # half the bytes, then the process "dies"
        real_save(obj, f, *a, **k)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(4)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert _load(path)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temp file left behind
    with pytest.raises(NonFiniteError, match=r"refusing to write last.ckpt: w is non-finite at step 3"):
        io.save_checkpoint({"global_step": 3, "state_dict": {"w": torch.tensor([float("nan")])}}, path)
    with pytest.raises(NonFiniteError, match=r"optimizer state exp_avg of parameter 0 is non-finite"):
        io.save_checkpoint({"global_step": 3, "state_dict": {}, "optimizer_states": [{"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}]}, path)
    assert _load(path)["global_step"] == 1


def test_make_trainer_uses_the_safe_writer(tiny_overrides, tmp_path: Path) -> None:
    cfg = load_config("mopd", [], [*tiny_overrides, f"run.out_dir={tmp_path}"])
    trainer = make_trainer(cfg, tmp_path / "run", [], resumed=False, progress=False)
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
