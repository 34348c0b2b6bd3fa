"""Training and evaluating through transformers' continuous batching (rollout.backend=hf_cb)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from mopdx.config import load_config
from mopdx.run.fit import fit


def test_fit_with_continuous_batching_trains_evaluates_and_resumes(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    args = [*tiny_overrides, f"run.out_dir={tmp_path}", "rollout.backend=hf_cb", "train.max_steps=3", "optim.warmup_steps=0", "rollout.n=2"]
    full = fit(load_config("mopd", [], [*args, "run.name=cb"]), progress=False)
    run = Path(full["run_dir"])
    start = load_file(str(tiny_lab / "models" / "stage1" / "model.safetensors"))
    end = load_file(str(run / "final" / "model.safetensors"))
    assert any(not torch.equal(start[k], end[k]) for k in start)
    assert set(full["final"]) and all(0.0 <= v <= 1.0 for v in full["final"].values())  # evaluated through the same engine
    part = fit(load_config("mopd", [], [*args, "run.name=p", "train.max_steps=1"]), progress=False)
    resumed = fit(load_config(None, [Path(part["run_dir"]) / "config.yaml"], ["train.max_steps=3"]), resume=Path(part["run_dir"]), progress=False)
    again = load_file(str(Path(resumed["run_dir"]) / "final" / "model.safetensors"))
    assert all(torch.allclose(end[k], again[k], atol=1e-6) for k in end)
