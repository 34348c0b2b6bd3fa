"""The lab pipeline writes real HF folders and a manifest, caches, and resumes."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoModelForCausalLM

from mopdx.config import load_config
from mopdx_lab.build import build_lab, lab_dir
from mopdx_lab.refs import resolve_ref


def test_lab_layout_and_manifest(tiny_lab, tiny_overrides) -> None:
    manifest = json.loads((tiny_lab / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == {"stage1", "teacher/add", "teacher/reverse", "teacher/sort"}
    from importlib.metadata import version

    assert manifest["versions"]["torch"] == version("torch") and manifest["versions"]["transformers"] == version("transformers")
    assert set(manifest["accuracy"]["stage1"]) == {"add", "reverse", "sort"}
    for name in manifest["artifacts"]:
        folder = tiny_lab / "models" / name
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(tiny_lab / "models" / "teacher" / "sort")
    assert model.config.model_type == "qwen2"
    info = json.loads((tiny_lab / "models" / "teacher" / "sort" / "lab_info.json").read_text())
    assert info["init"] == "stage1" and info["domain"] == "sort"
    assert manifest["eval"]["samples"] == 8 and not manifest["eval"]["greedy"]  # scored like a run: avg@8


def test_lab_is_cached_and_resumes_missing_stages(tiny_lab, tiny_overrides) -> None:
    cfg = load_config("mopd", [], tiny_overrides)
    assert lab_dir(cfg.lab) == tiny_lab
    stage1 = tiny_lab / "models" / "stage1" / "model.safetensors"
    before = stage1.stat().st_mtime_ns
    # simulate an interrupted build: a teacher and the manifest are missing
    shutil.rmtree(tiny_lab / "models" / "teacher" / "reverse")
    (tiny_lab / "manifest.json").unlink()
    assert build_lab(cfg.lab, progress=False) == tiny_lab
    assert (tiny_lab / "models" / "teacher" / "reverse" / "model.safetensors").is_file()
    assert (tiny_lab / "manifest.json").is_file()
    assert stage1.stat().st_mtime_ns == before  # finished stages are not redone
    assert resolve_ref("lab:teacher/add", cfg.lab) == str(tiny_lab / "models" / "teacher" / "add")
    assert resolve_ref("/some/folder", cfg.lab) == "/some/folder"


def test_changing_a_lab_setting_gives_a_new_folder(tiny_overrides) -> None:
    a = load_config("mopd", [], tiny_overrides)
    b = load_config("mopd", [], [*tiny_overrides, "lab.stage1_steps=16"])
    assert lab_dir(a.lab) != lab_dir(b.lab)


def test_a_build_that_differs_only_in_threads_names_the_built_lab(tiny_lab, tiny_overrides) -> None:
    """``lab.threads`` is in the key, so asking for fewer threads starts a new lab from Stage 1;
    the build says so, naming the lab already built, before it trains anything."""
    from mopdx_lab.build import threads_note

    built = load_config("mopd", [], tiny_overrides).lab
    other = load_config("mopd", [], [*tiny_overrides, f"lab.threads={int(built.threads) + 1}"]).lab
    note = threads_note(other)
    assert note is not None and tiny_lab.name in note and f"lab.threads={built.threads}" in note
    assert threads_note(built) is None  # the built lab itself: nothing to say
    (lab_dir(other) / "models" / "stage1").mkdir(parents=True)  # its own build resumed past Stage 1: chosen already
    try:
        assert threads_note(other) is None
    finally:
        shutil.rmtree(lab_dir(other))
    assert threads_note(load_config("mopd", [], [*tiny_overrides, "lab.stage1_steps=17"]).lab) is None  # really another lab


@pytest.mark.slow
def test_default_lab_builds_step_trace_teachers_by_rft_and_records_the_regime(tiny_overrides, tmp_path) -> None:
    """Lab v2 end to end on a tiny budget: the default step-trace domains, RFT specialists, the regime check."""
    over = [o for o in tiny_overrides if not o.startswith(("lab.domains=", "lab.stage2_method=", "lab.max_new_tokens=", "lab.stage1_noise", "rollout.max_new_tokens=", "eval.max_new_tokens="))]
    cfg = load_config("mopd", [], [*over, f"lab.root={tmp_path}", "lab.stage1_noise_steps=5", "lab.rft.rounds=2", "lab.rft.prompts=8", "lab.rft.group=2", "lab.rft.steps=2"])
    assert list(cfg.lab.domains) == ["inc", "rot"] and cfg.lab.stage2_method == "rft" and cfg.lab.stage1_noise == 0.5
    assert dict(cfg.model.teachers) == {d: f"lab:teacher/{d}" for d in ("inc", "rot")}  # the "*" entry of base.yaml
    assert cfg.rollout.max_new_tokens == cfg.eval.max_new_tokens == cfg.lab.max_new_tokens == 56
    lab = build_lab(cfg.lab, progress=False)
    info = json.loads((lab / "models" / "teacher" / "rot" / "lab_info.json").read_text())
    assert info["method"].startswith("RFT") and info["init"] == "stage1" and 1 <= len(info["accepted"]) <= 2
    regime = json.loads((lab / "manifest.json").read_text())["regime"]
    assert set(regime["domains"]) == {"inc", "rot"} and isinstance(regime["in_regime"], bool)


@pytest.mark.slow
def test_teachers_are_made_by_rl_from_stage1_and_the_regime_is_recorded(tiny_overrides, tmp_path) -> None:
    """Stage 2 by GRPO from Stage 1 through ``fit``, then the regime check (a tiny budget)."""
    cfg = load_config("mopd", [], [*tiny_overrides, f"lab.root={tmp_path}", "lab.stage2_method=rl", "lab.stage2_steps=3", "lab.stage2_lr=3e-4"])
    lab = build_lab(cfg.lab, progress=False)
    info = json.loads((lab / "models" / "teacher" / "sort" / "lab_info.json").read_text())
    assert info["method"].startswith("GRPO") and info["init"] == "stage1"
    run = json.loads((lab / "rl" / "sort" / "summary.json").read_text())  # an ordinary fit run, kept
    assert run["budget"]["sequences_per_step"] == 4 * 2 and run["steps"] == 3 and set(run["final"]) == {"sort"}
    regime = json.loads((lab / "manifest.json").read_text())["regime"]
    assert set(regime["domains"]) == {"add", "reverse", "sort"} and isinstance(regime["in_regime"], bool)
    for row in regime["domains"].values():
        assert row["kl"] >= -1e-6 or row["problems"]  # a Monte-Carlo estimate; problems name what is off
        assert row["gap"] == row["teacher"] - row["student"]


def test_regime_check_fails_loudly_on_a_far_teacher(tiny_lab, caplog) -> None:
    import logging

    from mopdx.data import load_prompts
    from mopdx_lab.model_factory import TinyModelSpec, build_tiny_qwen2
    from mopdx_lab.regime import DomainRegime, RegimeBounds, initial_kl, report
    from mopdx.models import load_model, load_tokenizer

    student = load_model(tiny_lab / "models" / "stage1")
    tok = load_tokenizer(tiny_lab / "models" / "stage1")
    cfg = student.config
    far = build_tiny_qwen2(TinyModelSpec(hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
                                         num_kv_heads=cfg.num_key_value_heads, intermediate_size=cfg.intermediate_size, lm_head_std=1.0), tok, seed=7)
    prompts = [e for e in load_prompts(tiny_lab / "data" / "eval.jsonl") if e.domain == "sort"]
    near = initial_kl(student, student, tok, prompts, 8)
    kl = initial_kl(student, far, tok, prompts, 8)
    assert abs(near) < 1e-5 and kl > 1.0  # itself: zero; a random model: nats away
    with caplog.at_level(logging.WARNING, logger="mopdx"):
        out = report([DomainRegime("sort", kl, student=0.3, teacher=0.9), DomainRegime("add", 0.05, student=0.3, teacher=0.6)], RegimeBounds())
    assert out["in_regime"] is False
    assert out["domains"]["add"]["problems"] == []
    assert any("initial per-token KL" in p for p in out["domains"]["sort"]["problems"])
    assert "LAB OUTSIDE THE PAPERS' REGIME for 'sort'" in caplog.text and "'add'" not in caplog.text
    low = report([DomainRegime("add", 0.05, student=0.1, teacher=0.2)], RegimeBounds())["domains"]["add"]["problems"]
    assert len(low) == 2  # gap 0.1 < 0.15 and student 0.1 < 0.2
