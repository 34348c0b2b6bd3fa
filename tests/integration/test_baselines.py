"""Baselines and the MOPD-paper comparison table on the tiny lab."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from mopdx.config import load_config
from mopdx.experiments.baselines import _merge
from mopdx_strategies.cascade import CascadeStrategy


def test_cascade_trains_domains_in_equal_consecutive_blocks() -> None:
    cfg = load_config("cascade", [], ["train.max_steps=6"])
    s = CascadeStrategy(cfg, ["add", "reverse", "sort"])
    assert [next(iter(s.plan(i).domain_ratios)) for i in range(6)] == ["add", "add", "reverse", "reverse", "sort", "sort"]


def test_merges_by_hand() -> None:
    student, a, b = (torch.nn.Linear(2, 1) for _ in range(3))
    with torch.no_grad():
        student.weight.fill_(1.0)
        a.weight.fill_(3.0)
        b.weight.fill_(5.0)
    avg = torch.nn.Linear(2, 1)
    avg.load_state_dict(student.state_dict())
    _merge(avg, [a, b], "merge_avg", 0.5)
    assert torch.allclose(avg.weight, torch.full((1, 2), 4.0))
    _merge(student, [a, b], "merge_task", 0.5)  # 1 + 0.5 * ((3 - 1) + (5 - 1))
    assert torch.allclose(student.weight, torch.full((1, 2), 4.0))


@pytest.mark.slow
def test_compare_scenario_mopd_runs_every_method(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    from mopdx.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--quiet", "--scenario", "mopd", "--seeds", "0", "--out", str(out), *tiny_overrides, "train.max_steps=2", "baseline.rl_group=2"]) == 0
    from mopdx.experiments.methods import scenario

    assert scenario("mopd")["methods"][-1] == "single_teacher:*"
    result = json.loads((out / "comparison.json").read_text())
    methods = [r["method"] for r in result["paper_rows"]]
    assert methods == [*scenario("mopd")["methods"][:-1], "single_teacher:sort"] and {"mix_rl", "cascade_rl", "baseline:merge_task:0.3"} <= set(methods)
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert len(rows) == len(methods) and "mean_norm" in rows[0] and "sort_norm" in rows[0] and "mean_norm_ci95" in rows[0]
    md = (out / "comparison.md").read_text()
    assert (out / "comparison_scores.png").is_file() and "95% CI" in md and "seqs/step" in md
    # equal budgets: the same optimiser steps and sequences per step for every method that trains
    by = {r["method"]: r for r in rows}
    for m in ("mopd", "mix_rl", "cascade_rl", "baseline:mixed_sft", "baseline:offpolicy_sft"):
        assert (by[m]["steps"], by[m]["sequences_per_step"]) == ("2", "8"), m
    mix = load_config(None, [out / "mix_rl-seed0" / "config.yaml"], [])
    assert (mix.loss.teacher_weight, mix.loss.reward_weight, mix.rollout.n, mix.data.batch_size) == (0.0, 1.0, 2, 4)
    cas = load_config(None, [out / "cascade_rl-seed0" / "config.yaml"], [])
    assert cas.strategy.name == "cascade" and cas.loss.reward_weight == 1.0 and cas.strategy.block_schedule
    # single-teacher distillation routed every domain to the sort teacher
    cfg = load_config(None, [out / "single_teacher_sort-seed0" / "config.yaml"], [])
    assert len(set(cfg.model.teachers.values())) == 1 and "sort" in next(iter(cfg.model.teachers.values()))
    assert json.loads((out / "baseline_merge_avg-seed0" / "summary.json").read_text())["steps"] == 0


@pytest.mark.slow
def test_compare_continues_a_killed_run_in_its_own_folder(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    """A comparison killed mid-run leaves a checkpoint and no summary; rerunning it continues that
    run from its checkpoint instead of training ``<name>-2`` beside it (and tabulating the wrong one)."""
    from mopdx.experiments.compare import run_comparison
    from mopdx.experiments.methods import interrupted_run
    from mopdx.run.fit import fit

    out = tmp_path / "cmp"
    args = [*tiny_overrides, "train.eval_every=0", "train.ckpt_every=1"]
    fit(load_config("mopd", [], [*args, "train.max_steps=2", "train.seed=0", f"run.out_dir={out}", "run.name=mopd-seed0"]), progress=False)
    run = out / "mopd-seed0"
    (run / "summary.json").unlink()  # as if killed after the step-2 checkpoint
    assert interrupted_run(run) == run and interrupted_run(out / "absent") is None
    result = run_comparison(["mopd"], [0], [], [*args, "train.max_steps=3"], out_dir=out, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["mopd-seed0"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and result["strategies"]["mopd"]["seeds"] == [0]


def test_both_comparison_tables_score_a_single_teacher_run_against_every_domains_teacher() -> None:
    from mopdx.experiments.compare import paper_table, summarise_comparison

    def run(final: dict[str, float], teacher: dict[str, float]) -> dict:
        summary = {"final": final, "student0": {"a": 0.4, "b": 0.4}, "teacher": teacher, "normalised": {"mean": 123.0}}
        return {"summary": summary, "history": [], "seed": 0}

    runs = {"mopd": [run({"a": 0.8, "b": 0.6}, {"a": 1.0, "b": 0.8})],
            # routed to b's teacher everywhere: its own "teacher" on a is b's (0.0 there)
            "single_teacher:b": [run({"a": 0.0, "b": 0.8}, {"a": 0.0, "b": 0.8})]}
    stats = summarise_comparison(runs)["strategies"]
    assert stats["mopd"]["normalised_mean"][0] == pytest.approx((0.4 / 0.6 + 0.2 / 0.4) / 2)
    assert stats["single_teacher:b"]["normalised_mean"][0] == pytest.approx((-0.4 / 0.6 + 1.0) / 2)  # not 1.0 (b alone)
    rows = {r["method"]: r for r in paper_table(runs)[1]}
    assert rows["single_teacher:b"]["mean_norm"] == pytest.approx(stats["single_teacher:b"]["normalised_mean"][0])


def test_a_co_distillation_comparison_states_its_budget_and_no_normalised_score() -> None:
    """Co-distillation peers have no teachers to normalise against: the paper table says n/a
    (not ``nan ± nan``) and shows the budget the runs recorded."""
    from mopdx.experiments.compare import paper_table

    budget = {"steps": 50, "sequences_per_step": 64, "sampled_tokens": 160_000, "rollout_tokens": 150_000, "feedback_tokens": 10_000}
    summary = {"final": {"A/x": 0.9, "B/x": 0.5}, "student0": {"A/x": 0.3, "B/x": 0.5}, "teacher": {}, "normalised": {"mean": float("nan")},
               "budget": budget}
    table, rows = paper_table({"opcod": [{"summary": summary, "history": [], "seed": s} for s in (0, 1)]})
    assert "nan" not in table and "n/a" in table
    assert rows[0]["steps"] == 50 and rows[0]["sequences_per_step"] == 64 and rows[0]["sampled_tokens"] == 160_000
    assert "160,000" in table


def test_a_run_without_a_recorded_budget_shows_n_a_not_zero() -> None:
    """Runs written before their strategy counted a budget must not read as costing nothing."""
    from mopdx.experiments.compare import paper_table

    summary = {"final": {"A/x": 0.9}, "student0": {"A/x": 0.3}, "teacher": {}, "normalised": {"mean": float("nan")}, "steps": 50}
    table, rows = paper_table({"old": [{"summary": summary, "history": [], "seed": 0}]})
    line = next(ln for ln in table.splitlines() if ln.startswith("| old"))
    assert line.count("n/a") >= 3 and "| 0 " not in line and math.isnan(rows[0]["sampled_tokens"])
