"""Gradient coherence: exact values on constructed gradients; per-sample gradients vs single-sample
backward passes; and, for every loss kind and average, per-sample gradients that add up to the
gradient of the training loss (the analysis measures the loss that is trained)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mopdx.backends.base import Sampling, ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer, completion_logits
from mopdx.config import load_config
from mopdx.distill.module import DistillModule
from mopdx.distill.routing import subset_teacher
from mopdx.experiments.coherence import (
    SampleBatch,
    coherence,
    coherence_gain,
    concentration,
    group_alignment,
    pairwise_cosines,
    per_sample_grads,
    sample_loss,
    sampled_logps,
    select_params,
)
from mopdx.losses import BatchConstants, LossBatch, LossSpec, batch_constants
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
    assert a["half_a"] == pytest.approx(1.0) and math.isnan(a["half_b"])  # rows 0 and 2 agree; one row has no halves
    cos = pairwise_cosines(g)
    assert cos.numel() == 6 and sorted(cos.tolist())[0] == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def scored(tiny_lab: Path):
    tok = load_tokenizer(tiny_lab / "models" / "stage1")
    model = load_model(tiny_lab / "models" / "stage1")
    prompts = [encode_prompt(tok, p) for p in ["sort: 5281", "reverse: a b c", "add: 3 + 14", "sort: 90"]]
    r = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id).generate(prompts, ["sort", "reverse", "add", "sort"], Sampling(max_new_tokens=6, seed=0))
    teacher = HFTeacherScorer(load_model(tiny_lab / "models" / "teacher" / "sort")).score(r, ScoreRequest(topk=8, full=True))
    return tok, model, r, teacher


@pytest.mark.parametrize("kind", ["topk", "pg", "full_reverse_kl"])
def test_per_sample_gradients_match_single_sample_backward(scored, kind: str) -> None:
    tok, model, r, teacher = scored
    spec = LossSpec(kind, topk=8, topk_tail=True, adv_baseline="mean")
    params = select_params(model, last_layers=1)
    assert params and all(".layers." in n or n.startswith("lm_head") for n in params)
    batch = SampleBatch.from_rollouts(r, tok.pad_token_id)
    fast = per_sample_grads(model, batch, teacher, spec, params, method="vmap", chunk=3)
    loop = per_sample_grads(model, batch, teacher, spec, params, method="loop")
    assert torch.allclose(fast, loop, atol=1e-5, rtol=1e-4)
    # reference: the ordinary left-padded forward of one rollout, then backward of its contribution
    const = batch_constants(spec, sampled_logps(model, batch), batch.loss_batch(teacher))
    named = dict(model.named_parameters())
    for i in range(len(r)):
        one = r.subset([i])
        model.zero_grad(set_to_none=True)
        logps = torch.log_softmax(completion_logits(model, one.input_ids, one.attention_mask, one.prompt_len), -1)[0]
        row = LossBatch.of(one, subset_teacher(teacher, torch.tensor([i])))
        sample_loss(logps, row, BatchConstants({k: v[i : i + 1] for k, v in const.per_token.items()}, const.denominator), spec).backward()
        ref = torch.cat([named[n].grad.flatten() for n in params])
        assert torch.allclose(fast[i], ref, atol=1e-5, rtol=1e-4), i
    model.zero_grad(set_to_none=True)


# --------------------------------------------- per-sample gradients add up to the training gradient
LENGTHS = [6, 2, 4, 1, 5]  # completions ending early at different lengths, as EOS does

LOSS_CASES = {
    "pg": {},
    "pg_is_clip": {"kind": "pg", "is_clip": 1.2},
    "pg_mean_baseline": {"kind": "pg", "adv_baseline": "mean"},
    "pg_all_options": {"kind": "pg", "is_clip": 1.2, "adv_baseline": "mean", "adv_clip": 0.3},
    "topk": {"kind": "topk", "topk_tail": False},
    "topk_tail": {"kind": "topk", "topk_tail": True},
    "full_reverse_kl": {"kind": "full_reverse_kl"},
    "forward_kl": {"kind": "forward_kl"},
    "jsd": {"kind": "jsd", "jsd_beta": 0.3},
}


@pytest.fixture()
def tiny_scored(tiny_model_factory, tiny_tokenizer):
    """Rollouts of a tiny student (ragged lengths; rollout log-probs of a stale engine) and a tiny teacher's prefill."""
    tok = tiny_tokenizer
    student = tiny_model_factory(seed=0)
    prompts = [encode_prompt(tok, p) for p in ["sort: 5281", "reverse: a b c d", "add: 3 + 14", "sort: 90", "add: 7 + 2"]]
    r = HFRolloutBackend(student, tok.pad_token_id, tok.eos_token_id).generate(prompts, ["sort", "reverse", "add", "sort", "add"], Sampling(max_new_tokens=6, seed=0))
    keep = r.completion_mask * (torch.arange(r.completion_mask.shape[1])[None] < torch.tensor(LENGTHS)[:, None]).float()
    P = r.prompt_len
    ids = r.input_ids.clone()
    ids[:, P:] = torch.where(keep.bool(), ids[:, P:], torch.full_like(ids[:, P:], tok.pad_token_id))
    attn = r.attention_mask.clone()
    attn[:, P:] = keep.long()
    noise = 0.7 * torch.randn(keep.shape, generator=torch.Generator().manual_seed(3))
    r = replace(r, input_ids=ids, attention_mask=attn, completion_mask=keep, rollout_logps=(r.rollout_logps + noise) * keep)
    assert sorted(r.completion_mask.sum(-1).tolist()) == sorted(float(n) for n in LENGTHS)
    teacher = HFTeacherScorer(tiny_model_factory(seed=1)).score(r, ScoreRequest(topk=8, full=True))
    return tok, student, r, teacher


def _training_module(cfg_overrides: list[str], student, tok) -> DistillModule:
    """A ``DistillModule`` (no trainer) with the run's loss config: what ``training_step`` computes the loss with."""
    cfg = load_config("mopd", [], cfg_overrides)
    return DistillModule(cfg, student, tok, {}, strategy=None, prompts=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("average", ["sequence", "token"])
@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_per_sample_gradients_sum_to_the_training_gradient(tiny_scored, case: str, average: str) -> None:
    tok, student, r, teacher = tiny_scored
    options = {"kind": "pg", **LOSS_CASES[case], "average": average, "topk": 8}
    module = _training_module([f"loss.{k}={'null' if v is None else v}" for k, v in options.items()], student, tok)
    spec = module.loss_spec
    assert all(getattr(spec, k) == v for k, v in options.items())
    assert module.request == spec.request()
    params = select_params(student, last_layers=1)
    named = dict(student.named_parameters())

    # the training path: left-padded batch forward, DistillModule.student_loss (chunked), backward
    student.zero_grad(set_to_none=True)
    loss, stats = module.student_loss(r, teacher)
    train = torch.cat([g.flatten() for g in torch.autograd.grad(loss, [named[n] for n in params])])
    if spec.is_clip is not None:  # the stale rollouts make the truncated ratio bite
        assert stats["is_weight"].item() < 1.0

    batch = SampleBatch.from_rollouts(r, tok.pad_token_id)
    for method in ("vmap", "loop"):
        g = per_sample_grads(student, batch, teacher, spec, params, method=method, chunk=2)
        assert g.shape == (len(r), train.numel())
        err = ((g.sum(0) - train).abs().max() / train.abs().max()).item()
        assert err < 1e-5, (case, average, method, err)


def test_token_average_weighs_long_rollouts_more(tiny_scored) -> None:
    tok, student, r, teacher = tiny_scored
    params = select_params(student, last_layers=1)
    batch = SampleBatch.from_rollouts(r, tok.pad_token_id)
    norms = {avg: per_sample_grads(student, batch, teacher, LossSpec("full_reverse_kl", average=avg), params).norm(dim=1) for avg in ("sequence", "token")}
    ratio = norms["token"] / norms["sequence"]
    # token: each rollout weighs |y_i| / N; sequence: 1 / B -- the ratio is B |y_i| / N
    assert torch.allclose(ratio, len(LENGTHS) * torch.tensor(LENGTHS, dtype=torch.float) / sum(LENGTHS), rtol=1e-4)


@pytest.mark.slow
def test_analyze_coherence_cli_on_a_run(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from mopdx.config import load_config
    from mopdx.run.fit import fit

    summary = fit(load_config("mopd", [], [*tiny_overrides, f"run.out_dir={tmp_path}", "train.keep_checkpoints=true", "train.ckpt_every=2", "eval.groups.general=[add,reverse]", "eval.groups.domain=[sort]"]), progress=False)
    run = Path(summary["run_dir"])
    digits = list("0123456789")  # the split: the tiny lab's digit tokens (add and sort answers), against the rest
    proc = subprocess.run([sys.executable, "-m", "mopdx", "analyze", "coherence", "--run", str(run), "--prompts", "4", "--split-tokens", *digits],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "analysis" / "coherence.json").read_text())
    assert [c["step"] for c in result["checkpoints"]] == [2, 4]
    assert all(0 <= c["coherence_all"] <= 1 and -1 <= c["alignment"]["cos"] <= 1 for c in result["checkpoints"])
    assert (run / "analysis" / "coherence.png").is_file()
    c = result["checkpoints"][-1]
    assert result["gap_modes"] == {"general": "abs", "domain": "abs"} and result["rho"] == 0.5  # a MOPD run: no strategy gaps
    assert c["random_coherence"]["draws"] == 64 and 0 <= c["p_random_at_least_selected"] <= 1
    assert all(1.0 - 1e-6 <= v["effective_n"] <= v["n"] + 1e-6 for v in c["concentration_by_group"].values())
    split = c["alignment_by_tokens"]
    assert split["tokens"] == digits and 0 < split["token_share"] < 1 and -1 <= split["split"]["cos"] <= 1 and -1 <= split["rest"]["cos"] <= 1
    assert "effective rollouts" in proc.stdout and "[on '0' '1'" in proc.stdout


def test_analysis_selects_with_the_runs_own_gap_definitions() -> None:
    from mopdx.config import load_config
    from mopdx.experiments.run_coherence import group_gap_modes

    cfg = load_config("camopd", [], ["strategy.recovery_gap=signed", "strategy.review_gap=negative"])
    groups = {"general": ["inc", "rot"], "domain": ["rotp"], "mixed": ["inc", "rotp"]}
    assert group_gap_modes(cfg.strategy, groups) == {"general": "signed", "domain": "negative", "mixed": "abs"}
    assert group_gap_modes(load_config("mopd", [], []).strategy, groups) == {"general": "abs", "domain": "abs", "mixed": "abs"}


def test_split_half_cosine_tells_a_stable_mean_from_noise() -> None:
    from mopdx.experiments.coherence import split_half_cos

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(400, 500, generator=gen)
    signal = noise + 1.0 * torch.ones(500)  # a shared direction well above the noise of a 200-row mean
    assert split_half_cos(signal, range(400)) > 0.95
    assert abs(split_half_cos(noise, range(400))) < 0.3  # pure noise: the halves' means are unrelated
    assert split_half_cos(signal, range(400), seed=1) != split_half_cos(signal, range(400), seed=2)  # seeded halves


def test_random_subsets_match_the_selected_sizes_per_group() -> None:
    from mopdx.experiments.run_coherence import random_subset_coherence

    g = torch.eye(6)  # orthogonal unit gradients: any k of them have coherence 1/sqrt(k)
    got = random_subset_coherence(g, {"a": [0, 1, 2], "b": [3, 4, 5]}, {"a": 1, "b": 2}, draws=5, seed=0)
    assert got == pytest.approx([3 ** -0.5] * 5)


def test_groups_are_drawn_in_the_training_mix_not_in_file_order() -> None:
    from mopdx.data import Example
    from mopdx.experiments.run_coherence import group_prompts

    # a lab file lists one domain after another: the first 32 "general" prompts would all be inc
    ex = [Example(d, f"{d}: {i:04d}", "") for d in ("inc", "rot", "dec") for i in range(100)]
    groups = {"general": ["inc", "rot"], "domain": ["dec"]}
    got = group_prompts(ex, groups, {"inc": 0.75, "rot": 2.25, "dec": 1.0}, 32, seed=0)
    count = {g: {d: sum(e.domain == d for e in es) for d in ("inc", "rot", "dec")} for g, es in got.items()}
    assert count == {"general": {"inc": 8, "rot": 24, "dec": 0}, "domain": {"inc": 0, "rot": 0, "dec": 32}}
    assert len({e.prompt for e in got["general"]}) == 32  # without replacement
    uniform = group_prompts(ex, groups, {}, 32, seed=0)  # no domain_ratios: uniform, as training draws
    assert sum(e.domain == "inc" for e in uniform["general"]) == 16
    assert group_prompts(ex, groups, {}, 32, seed=1)["general"] != uniform["general"]  # seeded


def test_preflight_check_on_two_tasks_with_known_opposite_gradients(tiny_scored) -> None:
    """The pre-flight's measurement end to end through the real gradient code: two tasks on the
    same rollouts whose teachers pull every sampled token up (+1 nat) and down (-1 nat) have
    exactly opposite PG gradients (cos -1: ready); two tasks that both pull up agree (cos +1)."""
    from mopdx.backends.base import TeacherOutput
    from mopdx_lab.camopd_preflight import verdict

    tok, student, r, _ = tiny_scored
    spec, params = LossSpec("pg"), select_params(student, last_layers=2)
    batch = SampleBatch.from_rollouts(r, tok.pad_token_id)
    with torch.no_grad():
        own = sampled_logps(student, batch)

    def grads(shift: float) -> torch.Tensor:
        return per_sample_grads(student, batch, TeacherOutput(logps=(own + shift) * batch.mask), spec, params)

    n = len(r)
    up, down = grads(+1.0), grads(-1.0)
    opposite = group_alignment(torch.cat([up, down]), list(range(n)), list(range(n, 2 * n)))
    assert opposite["cos"] == pytest.approx(-1.0, abs=1e-5) and opposite["dot"] < 0
    assert verdict([{"step": 1, "cos": opposite["cos"]}], -0.1)["ready"]
    same = group_alignment(torch.cat([up, grads(+0.5)]), list(range(n)), list(range(n, 2 * n)))
    assert same["cos"] == pytest.approx(1.0, abs=1e-5)
    assert not verdict([{"step": 1, "cos": same["cos"]}], -0.1)["ready"]


def test_token_split_gradients_add_up_and_show_a_conflict_the_whole_cosine_hides(tiny_scored) -> None:
    """Two tasks on the same rollouts: on the marked positions one teacher pulls every sampled
    token up and the other down (a format conflict), on the rest both pull up (a shared rule).
    The split's gradients plus the rest's give the whole; the split's cosine is -1, the rest's +1."""
    from mopdx.backends.base import TeacherOutput
    from mopdx.experiments.run_coherence import split_alignment

    tok, student, r, _ = tiny_scored
    spec, params = LossSpec("pg"), select_params(student, last_layers=2)
    batch = SampleBatch.from_rollouts(r, tok.pad_token_id)
    with torch.no_grad():
        own = sampled_logps(student, batch)
    marks = torch.zeros_like(batch.mask, dtype=torch.float32)
    marks[:, ::3] = 1.0
    marks *= batch.mask

    def grads(shift: torch.Tensor, weight: torch.Tensor | None = None, method: str = "vmap") -> torch.Tensor:
        return per_sample_grads(student, batch, TeacherOutput(logps=(own + shift) * batch.mask), spec, params, method=method, token_weight=weight)

    conflict, shared = marks * -1.0 + (1 - marks) * 1.0, torch.ones_like(marks)
    for method in ("vmap", "loop"):
        whole, split = grads(conflict, method=method), grads(conflict, marks, method=method)
        rest = grads(conflict, 1 - marks, method=method)
        assert torch.allclose(split + rest, whole, atol=1e-6 * whole.abs().max().item())
    n = len(r)
    g = torch.cat([grads(shared), whole])
    g_split = torch.cat([grads(shared, marks), split])
    parts = split_alignment(g, g_split, list(range(n)), list(range(n, 2 * n)))
    assert parts["split"]["cos"] == pytest.approx(-1.0, abs=1e-5)
    assert parts["rest"]["cos"] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 + 1e-3 < group_alignment(g, list(range(n)), list(range(n, 2 * n)))["cos"] < 1.0 - 1e-3
    with pytest.raises(ValueError, match="token_weight has shape"):
        grads(shared, marks[:, :2])


def test_token_marks_pick_positions_by_decoded_token(tiny_scored) -> None:
    from mopdx.experiments.run_coherence import token_marks

    tok = tiny_scored[0]
    ids = torch.tensor([tok.encode("5281 15", add_special_tokens=False) + [tok.pad_token_id]])
    mask = torch.tensor([[1] * (ids.shape[1] - 1) + [0]])
    first = tok.decode([int(ids[0, 0])])
    marks = token_marks(tok, ids, mask, [first])
    assert marks.tolist() == [[float(tok.decode([int(i)]) == first) for i in ids[0, :-1]] + [0.0]]
    assert marks[0, 0] == 1 and marks.sum() < mask.sum()  # by token, not everything; the padded position never


def test_concentration_counts_the_rollouts_that_carry_a_group_gradient() -> None:
    equal = torch.eye(4) * 3.0
    c = concentration(equal)
    assert c["effective_n"] == pytest.approx(4.0) and c["top1_share"] == pytest.approx(0.25) and c["n"] == 4
    one = torch.zeros(6, 3)
    one[2] = torch.tensor([1.0, 2.0, 2.0])
    c = concentration(one)
    assert c["effective_n"] == pytest.approx(1.0) and c["top1_share"] == pytest.approx(1.0)
    # norms 3, 1, 1, 1: (6)^2 / (9 + 3) = 3; the largest holds half
    mixed = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, -1.0]])
    c = concentration(mixed)
    assert c["effective_n"] == pytest.approx(3.0) and c["top1_share"] == pytest.approx(0.5) and c["top5_share"] == pytest.approx(1.0)
    assert math.isnan(concentration(torch.zeros(3, 2))["effective_n"])


@pytest.mark.parametrize("average", ["sequence", "token"])
def test_expected_pg_estimator_is_the_per_token_reverse_kl_gradient(tiny_scored, average: str) -> None:
    """Without clipping, the expectation over each position's next token of the PG gradient
    ``-(lt - ls) grad ls`` is ``sum_v grad p (ls - lt)``: the full reverse KL's gradient, computed
    here by the other loss's own code."""
    tok, student, r, teacher = tiny_scored
    params = select_params(student, last_layers=1)
    batch = SampleBatch.from_rollouts(r, tok.pad_token_id)
    expected = per_sample_grads(student, batch, teacher, LossSpec("pg", adv_clip=1e9, average=average), params, estimator="expected")
    kl = per_sample_grads(student, batch, teacher, LossSpec("full_reverse_kl", average=average), params)
    assert torch.allclose(expected, kl, atol=1e-6 * kl.abs().max().item(), rtol=1e-4)
    clipped = per_sample_grads(student, batch, teacher, LossSpec("pg", adv_clip=0.5, average=average), params, estimator="expected")
    assert not torch.allclose(clipped, kl, atol=1e-3 * kl.abs().max().item())  # the run's clip is part of what is expected
    sampled = per_sample_grads(student, batch, teacher, LossSpec("pg", adv_clip=1e9, average=average), params)
    assert not torch.allclose(sampled, expected, atol=1e-3 * kl.abs().max().item())


def test_expected_estimator_refuses_what_it_does_not_estimate(tiny_scored) -> None:
    tok, student, r, teacher = tiny_scored
    params = select_params(student, last_layers=1)
    batch = SampleBatch.from_rollouts(r, tok.pad_token_id)
    with pytest.raises(ValueError, match="expected estimator is the teacher PG"):
        per_sample_grads(student, batch, teacher, LossSpec("full_reverse_kl"), params, estimator="expected")
    with pytest.raises(ValueError, match="estimator must be one of"):
        per_sample_grads(student, batch, teacher, LossSpec("pg"), params, estimator="greedy")
