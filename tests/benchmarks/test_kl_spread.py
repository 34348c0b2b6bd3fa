"""benchmarks/kl_spread.py: one KL estimate per sampling seed, split by a marker the teacher never writes."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from mopdx.data import load_prompts
from mopdx.models import load_model, load_tokenizer

_spec = importlib.util.spec_from_file_location("kl_spread", Path(__file__).parents[2] / "benchmarks" / "kl_spread.py")
kl_spread = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kl_spread)


def test_split_is_a_token_weighted_mix_and_zero_against_itself(tiny_lab: Path) -> None:
    stage1 = tiny_lab / "models" / "stage1"
    teacher = tiny_lab / "models" / "teacher" / "add"
    tok, student, other = load_tokenizer(stage1), load_model(stage1), load_model(teacher)
    prompts = load_prompts(tiny_lab / "data" / "eval.jsonl")[:16]
    same = kl_spread.one_seed(student, student, tok, prompts, 8, seed=0, marker="")
    assert same["kl"] == 0.0 and same["marked_share"] == 0.0 and math.isnan(same["kl_marked"])
    # a marker held by some rollouts and not others: the whole estimate lies between its two parts
    row = next(r for m in "abcdefghijkl0123456789" if 0 < (r := kl_spread.one_seed(student, other, tok, prompts, 8, seed=0, marker=m))["marked_share"] < 1)
    lo, hi = sorted([row["kl_marked"], row["kl_unmarked"]])
    assert lo - 1e-6 <= row["kl"] <= hi + 1e-6
    assert kl_spread.one_seed(student, other, tok, prompts, 8, seed=0, marker="")["kl"] == row["kl"]  # keyed sampling: the seed fixes the draw
