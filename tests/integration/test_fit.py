"""Training runs on the tiny lab: metrics, checkpoints, exact resume, NaN handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mopdx.config import load_config
from mopdx.errors import TrainingError
from mopdx.run.fit import fit


def _cfg(tiny_overrides: list[str], tmp_path: Path, *extra: str):
    return load_config("mopd", [], [*tiny_overrides, f"run.out_dir={tmp_path}", *extra])


def _weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


def test_fit_writes_run_folder_and_changes_student(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    summary = fit(_cfg(tiny_overrides, tmp_path, "run.name=a"), progress=False)
    run = Path(summary["run_dir"])
    for name in ("config.yaml", "eval.jsonl", "summary.json", "report.md", "final/model.safetensors", "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (run / name).exists(), name
    history = [json.loads(l) for l in (run / "eval.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2, 4]
    header = (run / "logs" / "metrics.csv").read_text().splitlines()[0]
    for col in ("kl/add", "kl/reverse", "kl/sort", "clip_frac/sort", "train/adv_mean", "train/clip_frac", "throughput/rollout_tok_s", "eval/acc_add"):
        assert col in header
    start = load_file(str(tiny_lab / "models" / "stage1" / "model.safetensors"))
    end = _weights(run)
    assert any(not torch.equal(start[k], end[k]) for k in start)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert "mopdx" in ckpt and ckpt["mopdx"]["sampler"]["seed"] == 0
    assert not any(k.startswith("teachers") for k in ckpt["state_dict"])


def test_resume_continues_exactly(tiny_lab, tiny_overrides, tmp_path: Path, caplog) -> None:
    full = fit(_cfg(tiny_overrides, tmp_path, "run.name=full"), progress=False)
    part = fit(_cfg(tiny_overrides, tmp_path, "run.name=part", "train.max_steps=2"), progress=False)
    run = Path(part["run_dir"])
    saved = load_config(None, [run / "config.yaml"], ["train.max_steps=4"])
    caplog.clear()
    with caplog.at_level("INFO", logger="mopdx"):
        resumed = fit(saved, resume=run, progress=False)
    assert "eval @ step 4" in caplog.text  # the log was captured
    # the initial KL was reported by the first attempt; step 3's KL is not "initial"
    assert "initial per-token KL to the" not in caplog.text
    assert resumed["steps"] == 4
    a, b = _weights(full["run_dir"]), _weights(resumed["run_dir"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    steps = [json.loads(l)["step"] for l in (run / "eval.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4]
    # the first attempt's logs survive; the resumed attempt logs beside them
    first = (run / "logs" / "metrics.csv").read_text()
    assert "kl/add" in first
    assert list((run / "logs").glob("resume-*/metrics.csv"))


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tiny_lab, tiny_overrides, tmp_path: Path, monkeypatch) -> None:
    from mopdx.distill import module as module_mod
    from mopdx.run.trainer import resume_checkpoint

    real = module_mod.DistillModule.student_loss

    def poisoned(self, *a, **k):
        loss, stats = real(self, *a, **k)
        return (loss * float("nan") if self.global_step >= 3 else loss), stats

    monkeypatch.setattr(module_mod.DistillModule, "student_loss", poisoned)
    with pytest.raises(TrainingError, match="loss is nan at step 3"):
        fit(_cfg(tiny_overrides, tmp_path, "run.name=nan", "train.ckpt_every=1"), progress=False)
    # A divergence writes no on_exception.ckpt and sets aside the checkpoints holding the weights that gave
    # the NaN (step 3): resuming from them would recompute it.  --resume picks the one before.
    ckpts = tmp_path / "nan" / "checkpoints"
    assert not (ckpts / "on_exception.ckpt").exists()
    assert (ckpts / "last.ckpt.diverged").is_file() and (ckpts / "epoch=0-step=3.ckpt.diverged").is_file()
    saved = resume_checkpoint(tmp_path / "nan")
    assert saved is not None and torch.load(saved, weights_only=False)["global_step"] == 2


@pytest.mark.parametrize("kind", ["topk", "forward_kl", "jsd", "full_reverse_kl"])
def test_other_loss_kinds_train(tiny_lab, tiny_overrides, tmp_path: Path, kind: str) -> None:
    summary = fit(_cfg(tiny_overrides, tmp_path, f"loss.kind={kind}", "train.max_steps=2", "loss.topk=8"), progress=False)
    assert summary["steps"] == 2


def test_keyed_sampling_makes_training_independent_of_overlap_chunks(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    """rollout.sampler=keyed: sampling the step's batch whole or in overlap chunks gives the same
    rollouts, so the same weights; with the engine's own stream the chunking changes them."""
    def final(name: str, *extra: str) -> dict[str, torch.Tensor]:
        cfg = _cfg(tiny_overrides, tmp_path, f"run.name={name}", "train.max_steps=3", "train.eval_every=0", *extra)
        return _weights(fit(cfg, progress=False)["run_dir"])

    whole = final("whole", "rollout.sampler=keyed")
    chunked = final("chunked", "rollout.sampler=keyed", "rollout.overlap_chunk=3")
    assert all(torch.allclose(whole[k], chunked[k], atol=1e-6) for k in whole)
    plain, plain_chunked = final("plain"), final("plain-chunked", "rollout.overlap_chunk=3")
    assert not all(torch.allclose(plain[k], plain_chunked[k], atol=1e-6) for k in plain)


def test_progress_bar_counts_steps_across_a_resume(tiny_lab, tiny_overrides, tmp_path: Path, capsys) -> None:
    import re

    part = fit(_cfg(tiny_overrides, tmp_path, "run.name=bar", "train.max_steps=2"), progress=True)
    first = capsys.readouterr().out
    assert re.search(r"step: 100%.*\b2/2\b", first) and "Epoch" not in first and "v_num" not in first
    saved = load_config(None, [Path(part["run_dir"]) / "config.yaml"], ["train.max_steps=4"])
    fit(saved, resume=Path(part["run_dir"]), progress=True)
    shown = [int(n) for n in re.findall(r"step:.*?\b(\d+)/4\b", capsys.readouterr().out)]
    # the resumed attempt starts at the step it left off, not at 0, and counts to max_steps
    assert shown and min(shown) >= 2 and max(shown) == 4
