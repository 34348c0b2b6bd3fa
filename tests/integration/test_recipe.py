"""The real-task recipe (configs/recipes/mopd_math_qa_code.yaml) end to end on a tiny random model.

Why forced completions: a tiny random model answers nothing right, so accuracy 0
would prove nothing about grading.  ``forced`` is the tiny model fine-tuned to
write one fixed, well-formed completion per domain (a boxed ``7``, ``Answer: B``,
a fenced program defining ``add`` and ``length``); the recipe's data holds items
those completions answer right and items they answer wrong, so every verifier
must say 1 for some samples and 0 for others, through fit, eval, compare and OPCoD.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "recipes" / "mopd_math_qa_code.yaml"
FORCED = {
    "math": "Adding the steps gives 7. The answer is \\boxed{7}.",
    "qa": "The correct option is B.\nAnswer: B",
    "code": "```python\ndef add(a, b):\n    return a + b\n\n\ndef length(s):\n    return len(s)\n```",
}

pytestmark = pytest.mark.slow


def recipe_examples(split: str) -> list:
    from mopdx.data_sources import load_examples

    cfg = OmegaConf.load(RECIPE)
    return load_examples(OmegaConf.to_container(cfg.data[split]), cfg.data, f"data.{split}", lambda p: str(ROOT / p))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``student`` (random) and ``forced`` (the same init taught the fixed completions), one tokenizer."""
    import torch

    from mopdx.data import Example
    from mopdx_lab.model_factory import TinyModelSpec, build_tiny_qwen2
    from mopdx_lab.tokenizer import build_tokenizer
    from mopdx.sft import SFTLoop, SFTSpec

    root = tmp_path_factory.mktemp("recipe_models")
    examples = recipe_examples("train") + recipe_examples("eval")
    corpus = [f"{e.system} {e.prompt} {e.answer}" for e in examples] + list(FORCED.values())
    tok = build_tokenizer(corpus, vocab_size=400)
    torch.manual_seed(0)
    spec = TinyModelSpec(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, max_position_embeddings=256)
    student = build_tiny_qwen2(spec, tok, seed=0)
    student.save_pretrained(root / "student")
    tok.save_pretrained(root / "student")
    loop = SFTLoop(student, tok, SFTSpec(steps=150, batch_size=32, lr=3e-3, warmup=10))
    forced = [Example(e.domain, e.prompt, FORCED[e.domain], e.system, e.context) for e in examples]
    for _ in range(150):
        loop.step(forced)
    student.save_pretrained(root / "forced")
    tok.save_pretrained(root / "forced")
    return {"student": root / "student", "forced": root / "forced"}


def overrides(models: dict[str, Path], out: Path, student: str = "forced") -> list[str]:
    """The recipe as written, with the tiny models and CI-sized budgets."""
    m = models
    return [
        f"model.student={m[student]}", f"model.teachers.math={m['forced']}", f"model.teachers.qa={m['forced']}", f"model.teachers.code={m['forced']}",
        "model.dtype=float32", "train.precision=32-true", f"run.out_dir={out}", "lab.root=" + str(out / "nolab"),
        "rollout.max_new_tokens=64", "eval.max_new_tokens=64", "eval.greedy=true", "eval.samples=1", "data.batch_size=6",
        "data.eval_per_domain=12", "train.max_steps=2", "train.eval_every=0", "train.ckpt_every=2", "train.log_every=1", "optim.lr=1e-5",
        "data.verifiers.code.timeout_s=2",
    ]


@pytest.fixture()
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the recipe's data paths are relative to the repository root


def test_forced_completions_grade_right_and_wrong(models: dict[str, Path], in_repo: None) -> None:
    """Rewards are 1 exactly for the samples the domain's verifier accepts, and both occur in every domain."""
    from mopdx.backends.base import Sampling
    from mopdx.backends.hf import HFRolloutBackend
    from mopdx.config import load_config
    from mopdx.distill.rewards import verifier_rewards
    from mopdx.models import load_model, load_tokenizer
    from mopdx.run.assembly import install_run_format
    from mopdx.text import encode_prompt
    from mopdx.verifiers import grader

    cfg = load_config("mopd", [RECIPE], overrides(models, Path("/tmp/unused")))
    install_run_format(cfg)
    tok, model = load_tokenizer(models["forced"]), load_model(str(models["forced"]))
    examples = recipe_examples("train") + recipe_examples("eval")
    rollouts = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id).generate(
        [encode_prompt(tok, e) for e in examples], [e.domain for e in examples], Sampling(max_new_tokens=64, greedy=True))
    rewards = verifier_rewards(tok, rollouts, examples).tolist()
    texts = tok.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
    off = [(e.domain, t) for t, e in zip(texts, examples) if t.strip() != FORCED[e.domain]]
    assert len(off) <= 0.1 * len(examples), off[:3]  # the fixed completions were learnt
    for domain in FORCED:
        got = [r for r, e in zip(rewards, examples) if e.domain == domain]
        expect = [float(grader(domain).verify(e.answer, t)) for t, e in zip(texts, examples) if e.domain == domain]
        assert got == expect and 0 < sum(got) < len(got), (domain, got)


def test_recipe_fit_and_eval_print_accuracy(models: dict[str, Path], in_repo: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mopdx.cli import main

    assert main(["fit", "--config", str(RECIPE), "--quiet", *overrides(models, tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    # math: 2 of 12 eval answers are 7; qa: 2 of 8 are B; code: 1 of 6 tasks is length()
    assert summary["student0"] == pytest.approx({"math": 2 / 12, "qa": 2 / 8, "code": 1 / 6})
    assert "math" in out and "0.167" in out
    assert main(["eval", "--config", str(RECIPE), "--quiet", "--model", str(models["forced"]), *overrides(models, tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "0.250" in table and "0.167" in table


def test_recipe_compare_with_mix_rl(models: dict[str, Path], in_repo: None, tmp_path: Path) -> None:
    from mopdx.cli import main

    args = ["compare", "--strategies", "mopd", "mix_rl", "--seeds", "0", "--out", str(tmp_path / "cmp"), "--config", str(RECIPE), "--quiet",
            *overrides(models, tmp_path), "baseline.rl_group=2"]
    assert main(args) == 0
    import pandas as pd

    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert comparison  # the table compare prints, as JSON
    rewards = pd.read_csv(tmp_path / "cmp" / "mix_rl-seed0" / "logs" / "metrics.csv")["train/reward"].dropna()
    # Mix-RL's GRPO rewards come from the recipe's verifiers: right samples 1, wrong 0, so a batch mean strictly between
    assert len(rewards) and ((rewards > 0) & (rewards < 1)).any(), rewards.tolist()
    for method in ("mopd", "mix_rl"):
        summary = json.loads((tmp_path / "cmp" / f"{method}-seed0" / "summary.json").read_text())
        assert min(summary["student0"].values()) > 0, summary["student0"]


def test_recipe_opcod_gate_opens_on_the_correct_peer(models: dict[str, Path], in_repo: None, tmp_path: Path) -> None:
    """OPCoD on math + qa: peer A (forced) is right on some prompts, so its feedback passes the gate."""
    import pandas as pd

    from mopdx.cli import main

    train = OmegaConf.to_container(OmegaConf.load(RECIPE).data.train)[:2]  # math and qa
    args = ["fit", "--strategy", "opcod", "--config", str(RECIPE), "--quiet", *overrides(models, tmp_path),
            "data.train=" + json.dumps(train), "data.domain_ratios.code=0",
            f"codistill.peers={{A: {models['forced']}, B: {models['student']}}}", "codistill.strong_domain={A: qa, B: math}",
            "rollout.n=2", "strategy.gate_min_pass=0.5", "data.batch_size=8", "train.max_steps=3"]
    assert main(args) == 0
    metrics = pd.read_csv(next(tmp_path.glob("*/logs/**/metrics.csv")))
    gated = metrics.filter(like="feedback_gated").dropna(how="all")
    assert not gated.empty and gated.filter(like="A/").max().max() > 0  # the forced peer's feedback got through
