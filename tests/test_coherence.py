"""Gradient coherence: exact values on constructed gradients; per-sample gradients vs single-sample backward passes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mopdx.analysis.coherence import SampleBatch, coherence, coherence_gain, group_alignment, pairwise_cosines, per_sample_grads, sample_loss, select_params
from mopdx.backends.base import ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer, completion_logits
from mopdx.models import load_model, load_tokenizer
from mopdx.text import encode_prompt


def test_coherence_of_identical_gradients_is_one() -> None:
    g = torch.tensor([[1.0, 2.0, -3.0]]).repeat(5, 1)
    assert coherence(g) == pytest.approx(1.0)


@pytest.mark.parametrize("n", [2, 4, 9])
def test_coherence_of_orthogonal_equal_norm_gradients_is_one_over_sqrt_n(n: int) -> None:
    g = 3.0 * torch.eye(n)
    assert coherence(g) == pytest.approx(1 / math.sqrt(n))


def test_coherence_of_opposite_gradients_is_zero_and_selection_gain() -> None:
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert coherence(g[:2]) == pytest.approx(0.0)
    # all: ||(1, 1)|| / 4; the two aligned rows: 1
    assert coherence_gain(g, [0, 2]) == pytest.approx(1.0 / (math.sqrt(2) / 4))
    a = group_alignment(g, [0, 2], [1])
    assert a["cos"] == pytest.approx(-1.0) and a["dot"] == pytest.approx(-1.0)
    cos = pairwise_cosines(g)
    assert cos.numel() == 6 and sorted(cos.tolist())[0] == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def scored(tiny_lab: Path):
    tok = load_tokenizer(tiny_lab / "models" / "stage1")
    model = load_model(tiny_lab / "models" / "stage1")
    prompts = [encode_prompt(tok, p) for p in ["sort: 5281", "reverse: a b c", "add: 3 + 14", "sort: 90"]]
    r = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id).generate(prompts, ["sort", "reverse", "add", "sort"], max_new_tokens=6, seed=0)
    teacher = HFTeacherScorer(load_model(tiny_lab / "models" / "teacher" / "sort")).score(r, ScoreRequest(topk=8, full=True))
    return tok, model, r, teacher


@pytest.mark.parametrize("kind", ["topk", "pg", "full_reverse_kl"])
def test_per_sample_gradients_match_single_sample_backward(scored, kind: str) -> None:
    tok, model, r, teacher = scored
    params = select_params(model, last_layers=1)
    assert params and all(".layers." in n or n.startswith("lm_head") for n in params)
    batch = SampleBatch.from_rollouts(r, tok.pad_token_id)
    fast = per_sample_grads(model, batch, teacher, kind, params, method="vmap", chunk=3)
    loop = per_sample_grads(model, batch, teacher, kind, params, method="loop")
    assert torch.allclose(fast, loop, atol=1e-5, rtol=1e-4)
    # reference: the ordinary left-padded forward of one rollout, then backward
    named = dict(model.named_parameters())
    for i in range(len(r)):
        one = r.subset([i])
        model.zero_grad(set_to_none=True)
        logps = torch.log_softmax(completion_logits(model, one.input_ids, one.attention_mask, one.prompt_len), -1)[0]
        row = {k: getattr(teacher, k)[i] for k in ("logps", "topk_ids", "topk_logps", "full_logps")}
        sample_loss(logps, one.completion_ids[0], one.completion_mask[0], row, kind).backward()
        ref = torch.cat([named[n].grad.flatten() for n in params])
        assert torch.allclose(fast[i], ref, atol=1e-5, rtol=1e-4), i
    model.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_analyze_coherence_cli_on_a_run(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from mopdx.config import load_config
    from mopdx.fit import fit

    summary = fit(load_config("mopd", [], [*tiny_overrides, f"run.out_dir={tmp_path}", "train.keep_checkpoints=true", "train.ckpt_every=2", "eval.groups.general=[add,reverse]", "eval.groups.domain=[sort]"]), progress=False)
    run = Path(summary["run_dir"])
    proc = subprocess.run([sys.executable, "-m", "mopdx", "analyze", "coherence", "--run", str(run), "--prompts", "4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "analysis" / "coherence.json").read_text())
    assert [c["step"] for c in result["checkpoints"]] == [2, 4]
    assert all(0 <= c["coherence_all"] <= 1 and -1 <= c["alignment"]["cos"] <= 1 for c in result["checkpoints"])
    assert (run / "analysis" / "coherence.png").is_file()
