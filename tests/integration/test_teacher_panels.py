"""Teachers beyond one per domain, end to end on the tiny lab: a panel of two teachers on one
domain, and a teacher whose tokenizer differs from the student's."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from mopdx.config import load_config
from mopdx.errors import MopdxError
from mopdx.run.fit import fit


def _last_row(run: Path) -> dict[str, str]:
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    return next(r for r in reversed(rows) if r.get("train/loss"))


def test_a_panel_of_two_teachers_trains_and_logs_each_teachers_kl_and_share(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    args = [*tiny_overrides, f"run.out_dir={tmp_path}", "run.name=panel", "train.max_steps=2", "train.eval_every=2",
            "model.teachers.add={}", "model.teachers.add.own=lab:teacher/add", "model.teachers.add.base=lab:stage1",
            "model.combine.add.rule=mixture", "model.combine.add.weights=[3,1]"]
    summary = fit(load_config("mopd", [], args), progress=False)
    row = _last_row(Path(summary["run_dir"]))
    shares = [float(row[f"teacher/add/{n}/share"]) for n in ("own", "base")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-4) and all(math.isfinite(float(row[f"teacher/add/{n}/kl"])) for n in ("own", "base"))
    assert "add" in summary["teacher"]  # the panel's best teacher is the normalised score's bar


def _other_tokenizer_teacher(tiny_lab: Path, out: Path) -> Path:
    """A tiny Qwen2 on a second BPE trained on the same text (another vocabulary)."""
    from mopdx.data import load_prompts
    from mopdx_lab.model_factory import TinyModelSpec, build_tiny_qwen2
    from mopdx_lab.tokenizer import build_tokenizer

    corpus = [f"{e.prompt} {e.answer}" for e in load_prompts(tiny_lab / "data" / "train.jsonl")]
    tok = build_tokenizer(corpus, vocab_size=280)
    model = build_tiny_qwen2(TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64), tok, seed=5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_a_teacher_with_another_tokenizer_is_refused_without_the_switch_and_trains_with_it(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    teacher = _other_tokenizer_teacher(tiny_lab, tmp_path / "other-tok")
    args = [*tiny_overrides, f"run.out_dir={tmp_path}", "train.max_steps=2", "train.eval_every=2", f"model.teachers.add={teacher}"]
    with pytest.raises(MopdxError, match="cross_tokenizer"):
        fit(load_config("mopd", [], [*args, "run.name=refused"]), progress=False)
    summary = fit(load_config("mopd", [], [*args, "run.name=cross", "model.cross_tokenizer=true"]), progress=False)
    row = _last_row(Path(summary["run_dir"]))
    assert math.isfinite(float(row["kl/add"])) and math.isfinite(float(row["train/loss"]))
    assert 0.0 <= summary["teacher"]["add"] <= 1.0  # scored with its own tokenizer
