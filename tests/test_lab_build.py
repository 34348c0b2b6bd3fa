"""The lab pipeline writes real HF folders and a manifest, caches, and resumes."""

from __future__ import annotations

import json
import shutil

from transformers import AutoModelForCausalLM

from mopdx.config import load_config
from mopdx.lab.build import build_lab, lab_dir
from mopdx.lab.refs import resolve_ref


def test_lab_layout_and_manifest(tiny_lab, tiny_overrides) -> None:
    manifest = json.loads((tiny_lab / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == {"stage1", "teacher/add", "teacher/reverse", "teacher/sort"}
    assert set(manifest["accuracy"]["stage1"]) == {"add", "reverse", "sort"}
    for name in manifest["artifacts"]:
        folder = tiny_lab / "models" / name
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(tiny_lab / "models" / "teacher" / "sort")
    assert model.config.model_type == "qwen2"
    info = json.loads((tiny_lab / "models" / "teacher" / "sort" / "lab_info.json").read_text())
    assert info["init"] == "stage1" and info["domain"] == "sort"


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
