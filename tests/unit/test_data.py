"""Prompt files and the deterministic per-step sampler."""

from __future__ import annotations

from pathlib import Path

import pytest

from mopdx.data import Example, PromptPool, allocate, load_prompts, save_prompts
from mopdx.errors import DataError


def _examples() -> list[Example]:
    return [Example(d, f"{d} {i}", str(i)) for d in ("a", "b", "c") for i in range(20)]


def test_allocate_follows_ratios_and_sums_to_batch() -> None:
    counts = allocate(20, {"a": 0.35, "b": 0.35, "c": 0.30})
    assert counts == {"a": 7, "b": 7, "c": 6}
    assert allocate(8, {"a": 1.0, "b": 0.0}) == {"a": 8, "b": 0}
    with pytest.raises(DataError):
        allocate(4, {"a": 0.0})


def test_draw_is_a_function_of_step() -> None:
    pool = PromptPool(_examples(), seed=3)
    a = pool.draw(5, {"a": 1, "b": 1}, 8)
    b = PromptPool(_examples(), seed=3).draw(5, {"a": 1, "b": 1}, 8)
    assert a == b
    assert a != pool.draw(6, {"a": 1, "b": 1}, 8)
    assert {e.domain for e in a} == {"a", "b"}
    assert sum(e.domain == "a" for e in a) == 4


def test_draw_unknown_domain_fails_clearly() -> None:
    with pytest.raises(DataError, match="no training prompts for domain"):
        PromptPool(_examples()).draw(0, {"zzz": 1.0}, 4)


def test_prompt_file_roundtrip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    save_prompts(_examples(), path)
    assert load_prompts(path) == _examples()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        load_prompts(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        load_prompts(bad)
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "missing.jsonl")
