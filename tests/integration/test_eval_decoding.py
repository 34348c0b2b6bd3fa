"""Sampled evaluation: avg@k by default, and one decoding for every model a run scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mopdx.backends.base import Rollouts, Sampling
from mopdx.config import EvalConfig, load_config
from mopdx.data import Example
from mopdx.run import evaluation
from mopdx.run.evaluation import accuracy_by_domain, eval_sampling


class Scripted:
    """A backend that answers prompt ``p``'s ``j``-th sample from a script and records its sampling."""

    def __init__(self, answers: dict[str, list[str]], tok) -> None:
        self.answers, self.tok, self.calls = answers, tok, []

    def generate(self, prompt_ids: list[list[int]], domains: list[str], sampling: Sampling) -> Rollouts:
        self.calls.append(sampling)
        texts = []
        for ids in prompt_ids:
            prompt = next(p for p in self.answers if self.tok.encode(p) == ids[-len(self.tok.encode(p)) - 3 : -3] or p in self.tok.decode(ids))
            texts += self.answers[prompt][: sampling.per_prompt]
        rows = [self.tok.encode(t) + [self.tok.eos_token_id] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [self.tok.pad_token_id] * (width - len(r)) for r in rows])
        k = sampling.per_prompt
        return Rollouts(ids, torch.ones_like(ids), 0, torch.ones(ids.shape, dtype=torch.float32), torch.zeros(ids.shape),
                        [domains[i // k] for i in range(len(rows))], torch.arange(len(prompt_ids)).repeat_interleave(k))


def test_avg_at_k_averages_every_sample(tiny_tokenizer) -> None:
    examples = [Example("sort", "sort: 321", "123"), Example("sort", "sort: 21", "12")]
    backend = Scripted({"sort: 321": ["123", "132", "123", "321"], "sort: 21": ["12", "12", "21", "12"]}, tiny_tokenizer)
    settings = EvalConfig(samples=4, batch_size=4)  # one prompt per generate call
    acc = accuracy_by_domain(backend, tiny_tokenizer, examples, settings)
    assert acc == {"sort": pytest.approx(5 / 8)}
    assert [c.n for c in backend.calls] == [4, 4] and not any(c.greedy for c in backend.calls)
    assert all(c.temperature == 1.0 and c.top_p == 1.0 and c.top_k == 0 for c in backend.calls)  # pure T = 1 sampling
    greedy = Scripted({"sort: 321": ["123"], "sort: 21": ["21"]}, tiny_tokenizer)
    assert accuracy_by_domain(greedy, tiny_tokenizer, examples, EvalConfig(greedy=True)) == {"sort": 0.5}
    assert greedy.calls[0].per_prompt == 1


def test_defaults_are_the_papers_sampled_evaluation() -> None:
    s = eval_sampling(load_config("mopd", [], []).eval)
    assert (s.greedy, s.n, s.temperature, s.top_p, s.top_k) == (False, 8, 1.0, 1.0, 0)


@pytest.mark.slow
@pytest.mark.parametrize("greedy", [False, True])
def test_student_teachers_and_baselines_are_decoded_alike(tiny_lab, tiny_overrides, tmp_path: Path, monkeypatch, greedy: bool) -> None:
    """Every accuracy a run reports -- the student's at each eval, each teacher's, a baseline's --
    goes through one decoding: the run's ``eval`` settings (the old bug: teachers and baselines
    were always greedy while the student followed ``eval.greedy``)."""
    from mopdx.experiments.baselines import run_baseline
    from mopdx.run.fit import fit

    seen: list[tuple] = []
    real = evaluation.eval_sampling

    def spy(settings: EvalConfig) -> Sampling:
        s = real(settings)
        seen.append((s.greedy, s.per_prompt, s.temperature, s.top_p, s.top_k, s.max_new_tokens))
        return s

    monkeypatch.setattr(evaluation, "eval_sampling", spy)
    over = [*tiny_overrides, f"eval.greedy={str(greedy).lower()}", "eval.samples=3", f"run.out_dir={tmp_path}"]
    fit(load_config("mopd", [], [*over, "run.name=fit"]), progress=False)
    cfg = load_config("mopd", [], [*over, "run.name=sft"])
    run_baseline("mixed_sft", cfg, tmp_path / "sft")
    assert len(seen) >= 3 + 3 + 2  # student at 3 evals, 3 teachers (cached for the baseline), baseline before/after
    assert set(seen) == {(greedy, 1 if greedy else 3, 1.0, 1.0, 0, 8)}
