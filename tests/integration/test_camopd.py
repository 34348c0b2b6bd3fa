"""CaMOPD: alternating schedule, gap-based selection, ablations, resume."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mopdx.backends.base import Rollouts, TeacherOutput
from mopdx.config import load_config
from mopdx.errors import ConfigError
from mopdx.run.fit import fit
from mopdx_strategies.camopd import CaMOPDStrategy

DOMAINS = ["inc", "rot", "rotp"]


def _strategy(*overrides: str) -> CaMOPDStrategy:
    return CaMOPDStrategy(load_config("camopd", [], list(overrides)), DOMAINS)


def test_three_recovery_steps_then_one_review() -> None:
    s = _strategy()
    phases = [s.plan(step).phase for step in range(8)]
    assert phases == ["recovery"] * 3 + ["review"] + ["recovery"] * 3 + ["review"]
    assert set(s.plan(0).domain_ratios) == {"inc", "rot"}
    assert set(s.plan(3).domain_ratios) == {"rotp"}
    # within the recovery pool, the scenario's mix (lab.camopd.mix): rot a quarter
    assert s.plan(0).domain_ratios["rot"] == pytest.approx(0.25)
    assert _strategy("lab.camopd.mix.inc=1", "lab.camopd.mix.rot=1").plan(0).domain_ratios == {"inc": 0.5, "rot": 0.5}
    assert [p.phase for p in map(_strategy("strategy.n_g=1").plan, range(4))] == ["recovery", "review"] * 2


def test_no_alternation_mixes_in_the_same_proportion() -> None:
    plan = _strategy("strategy.alternate=false").plan(3)
    assert plan.phase == "mixed"
    r = plan.domain_ratios
    assert (r["inc"] + r["rot"]) / r["rotp"] == pytest.approx(3.0) and r["inc"] / r["rot"] == pytest.approx(3.0)


def _batch(domains: list[str], gaps: list[float]) -> tuple[Rollouts, TeacherOutput]:
    b, c = len(domains), 2
    student = torch.zeros(b, c)
    teacher = torch.tensor(gaps).view(-1, 1).repeat(1, c)  # lt - ls = gap on every token
    r = Rollouts(
        input_ids=torch.zeros(b, 3 + c, dtype=torch.long),
        attention_mask=torch.ones(b, 3 + c, dtype=torch.long),
        prompt_len=3,
        completion_mask=torch.ones(b, c),
        rollout_logps=student,
        domains=domains,
        prompt_index=torch.arange(b),
    )
    return r, TeacherOutput(logps=teacher)


def test_selection_keeps_top_rho_by_gap_per_branch() -> None:
    s = _strategy("strategy.rho=0.5")
    r, t = _batch(["inc", "rot", "inc", "rot"], [0.1, -2.0, 1.0, 0.5])
    # recovery uses |gap|: 2.0 and 1.0 are the top half
    assert s.select(0, s.plan(0), r, t).tolist() == [1, 2]
    assert s.metrics()["recovery_gap_selected"] == pytest.approx(1.5)
    r, t = _batch(["rotp"] * 4, [0.1, -2.0, 1.0, 0.5])
    # review uses max(gap, 0): 1.0 and 0.5
    assert s.select(3, s.plan(3), r, t).tolist() == [2, 3]


def test_rho_one_keeps_all_and_selection_off_keeps_all() -> None:
    r, t = _batch(["inc", "rot", "inc"], [0.3, 0.1, 0.2])
    assert _strategy("strategy.rho=1.0").select(0, _strategy().plan(0), r, t).tolist() == [0, 1, 2]
    assert _strategy("strategy.select=false").select(0, _strategy().plan(0), r, t).tolist() == [0, 1, 2]


def test_controls_keep_as_many_and_log_lengths() -> None:
    r, t = _batch(["inc", "rot", "inc", "rot"], [0.1, -2.0, 1.0, 0.5])
    r.completion_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    rand = _strategy("strategy.selector=random", "train.seed=3")
    first = rand.select(0, rand.plan(0), r, t).tolist()
    assert len(first) == 2 and first == _strategy("strategy.selector=random", "train.seed=3").select(0, rand.plan(0), r, t).tolist()
    gap = _strategy()
    assert gap.select(0, gap.plan(0), r, t).tolist() == [1, 2]  # |gap| 2.0 (length 1) and 1.0 (length 2)
    m = gap.metrics()
    assert (m["recovery_len_all"], m["recovery_len_selected"]) == (1.5, 1.5) and -1.0 <= m["recovery_gap_len_corr"] <= 1.0
    lm = _strategy("strategy.selector=length_matched")
    kept = lm.select(0, lm.plan(0), r, t)
    assert sorted(r.completion_mask[kept].sum(-1).tolist()) == [1.0, 2.0]


@pytest.mark.parametrize("bad", ["strategy.rho=0", "strategy.rho=1.5", "strategy.n_g=0", "strategy.review_domains=[poetry]", "strategy.recovery_gap=huge",
                                 "strategy.selector=oracle", "strategy.gap_length=median"])
def test_bad_settings_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        _strategy(bad)


def test_camopd_resume_continues_the_same_schedule(camopd_overrides, tmp_path: Path) -> None:
    args = [*camopd_overrides, f"run.out_dir={tmp_path}", "train.max_steps=5", "train.ckpt_every=1", "train.eval_every=0"]
    full = fit(load_config("camopd", [], [*args, "run.name=full"]), progress=False)
    part = fit(load_config("camopd", [], [*args, "run.name=part", "train.max_steps=2"]), progress=False)
    run = Path(part["run_dir"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["mopdx"]["strategy"] == {"n_g": 3}
    resumed = fit(load_config(None, [run / "config.yaml"], ["train.max_steps=5"]), resume=run, progress=False)
    a = load_file(str(Path(full["run_dir"]) / "final" / "model.safetensors"))
    b = load_file(str(Path(resumed["run_dir"]) / "final" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(ConfigError, match="n_g"):
        fit(load_config(None, [run / "config.yaml"], ["train.max_steps=6", "strategy.n_g=2"]), resume=run, progress=False)
    # the failed resume must not overwrite the good checkpoint
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5


def test_camopd_lab_scenario_and_fit(camopd_overrides, tmp_path: Path, caplog) -> None:
    import json as _json

    from mopdx.data import load_prompts
    from mopdx_lab.domains import get_domain
    from mopdx.plugins import resolve_ref

    args = [*camopd_overrides, f"run.out_dir={tmp_path}", "train.max_steps=4"]
    cfg = load_config("camopd", [], args)
    with caplog.at_level("INFO", logger="mopdx"):
        train = load_prompts(resolve_ref("lab:camopd/train", cfg))
    proxy = [e for e in train if e.domain in ("inc", "rot")]
    assert cfg.lab.camopd.proxy == "all" and proxy and {e.domain for e in proxy} == {"inc", "rot"}
    assert {True, False} <= {get_domain(e.domain).is_easy(e) for e in proxy}  # the whole input distribution
    assert {e.domain for e in train} == {"inc", "rot", "rotp"}  # rotp drawn by the scenario: not a lab domain
    evals = load_prompts(resolve_ref("lab:camopd/eval", cfg))
    assert {e.domain for e in evals} == {"inc", "rot", "rotp"} and not {e.prompt for e in evals} & {e.prompt for e in train}
    specialist = Path(resolve_ref("lab:camopd/specialist", cfg))
    manifest = _json.loads((specialist.parent / "manifest.json").read_text())
    assert set(manifest["accuracy"]) == {"general", "specialist"}
    # the scenario's place in the regime: the specialist's per-token KL to the general teacher
    assert set(manifest["initial_kl"]) == {"inc", "rot"} and all(math.isfinite(v) for v in manifest["initial_kl"].values())
    # the pre-flight check ran mixed MOPD on the scenario and says whether it is ready, loudly if not
    pre = manifest["preflight"]
    assert -1 <= pre["cos"] <= 1 and pre["ready"] == (pre["cos"] < -0.1) and [c["step"] for c in pre["curve"]] == [1, 2]
    assert pre["cos"] == pytest.approx(sum(c["cos"] for c in pre["curve"]) / 2)  # the mean over the checkpoints, not one reading
    # the verdict's estimator and the other one, both recorded; the separators' own cosine; who carries each mean
    assert pre["estimator"] == "expected" and list(pre["other_estimators"]) == ["sampled"]
    assert [c["step"] for c in pre["other_estimators"]["sampled"]["curve"]] == [1, 2]
    # effective rollouts: between 1 and the 2 prompts per group; NaN for a group with no gradient at all
    # (at step 1 the student can still be the domain teacher)
    assert all(-1 <= c["cos_separators"] <= 1 and all(math.isnan(n) or 1 - 1e-6 <= n <= 2 + 1e-6 for n in c["effective_n"]) for c in pre["curve"])
    assert not math.isnan(pre["curve"][0]["effective_n"][0])  # the recovery group has a gradient from the first step
    with caplog.at_level("INFO", logger="mopdx"):
        summary = fit(cfg, progress=False)
    # every teacher's initial KL is reported, including rotp's, first sampled at step 3
    for domain in ("inc", "rot", "rotp"):
        assert f"initial per-token KL to the {domain} teacher" in caplog.text
    history = [_json.loads(l) for l in (Path(summary["run_dir"]) / "eval.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 4
    header = (Path(summary["run_dir"]) / "logs" / "metrics.csv").read_text().splitlines()[0]
    for key in ("strategy/recovery_gap_selected", "strategy/kept_frac", "strategy/recovery_len_selected", "strategy/recovery_gap_len_corr"):
        assert key in header, key
    # the scenario's groups: general recovery and domain preservation per eval and in the summary
    assert set(history[-1]["groups"]) == {"general", "domain"}
    assert set(summary["groups"]["domain"]) == {"acc", "delta", "recovered"}
    assert "eval/domain_delta" in (Path(summary["run_dir"]) / "logs" / "metrics.csv").read_text()
    assert re.search(r"\|\s*general\s*\|\s*inc, rot\s*\|", (Path(summary["run_dir"]) / "report.md").read_text())


def test_group_metrics_by_hand() -> None:
    from mopdx.scores import group_metrics

    acc = {"add": 0.05, "reverse": 0.6, "sort": 0.97}
    start = {"add": 0.01, "reverse": 0.2, "sort": 1.0}
    teacher = {"add": 0.06, "reverse": 1.0, "sort": 1.0}
    m = group_metrics(acc, start, teacher, {"general": ["add", "reverse"], "domain": ["sort"]})
    assert m["general"]["acc"] == pytest.approx(0.325)
    assert m["general"]["delta"] == pytest.approx((0.04 + 0.4) / 2)
    # add's teacher is only 0.05 ahead of the start: left out of "recovered" (reverse: 0.4 / 0.8)
    assert m["general"]["recovered"] == pytest.approx(0.5)
    assert m["domain"]["delta"] == pytest.approx(-0.03)
    assert math.isnan(m["domain"]["recovered"])  # nothing to recover: teacher == start


def test_normalised_score_leaves_out_domains_with_nothing_to_recover() -> None:
    from mopdx.scores import normalised_scores

    # a kept domain (teacher 0.0025 ahead): one eval prompt lost would score -6 and sink the mean
    s = normalised_scores({"inc": 0.97, "rot": 0.6}, {"inc": 0.985, "rot": 0.4}, {"inc": 0.9875, "rot": 0.8})
    assert math.isnan(s["inc"]) and s["rot"] == pytest.approx(0.5) and s["mean"] == pytest.approx(0.5)
    assert normalised_scores({"inc": 0.97}, {"inc": 0.985}, {"inc": 0.9875}, min_gap=0.0)["inc"] == pytest.approx(-6.0)


def test_group_domains_must_exist(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    cfg = load_config("mopd", [], [*tiny_overrides, f"run.out_dir={tmp_path}", "eval.groups.general=[add,mathz]"])
    with pytest.raises(ConfigError, match="eval.groups"):
        fit(cfg, progress=False)


def test_specialist_replay_shares_by_hand() -> None:
    from mopdx.data import Example
    from mopdx_lab.camopd import with_replay

    domain = [Example("dec", f"dec: {i}", "") for i in range(70)]
    general = [Example(d, f"{d}: {i}", "") for d in ("inc", "rot") for i in range(100)]
    data = with_replay(domain, general, {"rot": 0.25, "inc": 0.05}, seed=0)
    count = {d: sum(e.domain == d for e in data) for d in ("dec", "rot", "inc")}
    assert count == {"dec": 70, "rot": 25, "inc": 5}  # 25 / 100 and 5 / 100 of the result
    assert with_replay(domain, general, {}, seed=0) == domain
    assert sum(e.domain == "rot" for e in with_replay(domain, general, {"rot": 0.9}, seed=0)) == 100  # all there are


@pytest.mark.slow
def test_lab_build_and_info_cover_the_scenario(camopd_overrides, capsys) -> None:
    from mopdx.cli import main

    assert main(["lab", "build", "--strategy", "camopd", "--quiet", *camopd_overrides]) == 0
    out = capsys.readouterr().out
    assert "lab:camopd/specialist: " in out and "lab:camopd/eval: " in out
    assert re.search(r"pre-flight cos\(recovery, preservation gradients\) under mixed MOPD \(expected estimator\): step 1: [+-]\d\.\d{3}, "
                     r"step 2: [+-]\d\.\d{3}; mean [+-]\d\.\d{3} -> (READY|NOT READY)", out)
    assert "on the separator tokens alone: step 1:" in out and "with the sampled estimator (not the verdict's): step 1:" in out
    assert main(["lab", "info", "--strategy", "camopd", *camopd_overrides]) == 0
    assert "CaMOPD scenario (" in capsys.readouterr().out


@pytest.mark.slow
def test_scenario_variants_share_their_models(camopd_overrides) -> None:
    """Another replay share costs a specialist, not another RFT run; another mix costs no training."""
    from mopdx.plugins import resolve_ref

    def models(*extra: str) -> tuple[Path, Path]:
        cfg = load_config("camopd", [], [*camopd_overrides, *extra, "lab.camopd.preflight_steps=0"])
        return Path(resolve_ref("lab:camopd/general", cfg)), Path(resolve_ref("lab:camopd/specialist", cfg))

    def same(a: Path, b: Path) -> bool:
        return all((a / f).read_bytes() == (b / f).read_bytes() for f in ("model.safetensors", "config.json"))

    general, specialist = models()
    replay_general, replay_specialist = models("lab.camopd.replay.rot=0.2")
    mix_general, mix_specialist = models("lab.camopd.mix.rot=2")
    assert len({general.parent, replay_general.parent, mix_general.parent}) == 3  # three scenario folders
    root = general.parent.parent
    assert len(list(root.glob("camopd_general-*"))) == 1 and not list(root.glob("camopd_*.tmp"))
    assert len(list(root.glob("camopd_specialist-*"))) == 2  # the default's and the replay variant's
    assert same(general, replay_general) and same(general, mix_general)
    assert same(specialist, mix_specialist) and not same(specialist, replay_specialist)


def test_preflight_verdict_is_the_mean_after_step_0_and_loud_when_not_ready(caplog) -> None:
    from mopdx_lab.camopd_preflight import verdict

    # one reading below the threshold does not make a scenario ready: the mean decides
    curve = [{"step": 0, "cos": 0.0}, {"step": 10, "cos": -0.03}, {"step": 20, "cos": 0.02}, {"step": 30, "cos": -0.20}]
    with caplog.at_level("INFO", logger="mopdx"):
        v = verdict(curve, -0.1)
    assert v["cos"] == pytest.approx(-0.07) and v["cos_last"] == -0.20 and not v["ready"]
    assert "SCENARIO NOT READY" in caplog.text and "-0.070" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="mopdx"):
        v = verdict([{"step": 10, "cos": -0.15}, {"step": 20, "cos": -0.12}], -0.1)
    assert v["ready"] and v["cos"] == pytest.approx(-0.135) and "NOT READY" not in caplog.text


def test_proxy_prompts_are_a_part_of_each_general_domain_or_all_of_it() -> None:
    from mopdx.data import Example
    from mopdx_lab.camopd import proxy_prompts

    general = [Example("rot", "rot: 1234", ""), Example("rot", "rot: 7234", ""), Example("inc", "inc: 1234", ""), Example("inc", "inc: 1934", "")]
    assert proxy_prompts(general, "all") == general
    assert [e.prompt for e in proxy_prompts(general, "easy")] == ["rot: 1234", "inc: 1234"]  # rot: no digit above 6; inc: no 9
    assert [e.prompt for e in proxy_prompts(general, "hard")] == ["rot: 7234", "inc: 1934"]
    with pytest.raises(ValueError, match="all, easy or hard"):
        proxy_prompts(general, "medium")


def test_a_proxy_template_rewrites_the_recovery_prompts_and_keeps_the_default_scenario_folder() -> None:
    """``lab.camopd.proxy_template``: the same task in another template (the paper's other kind of proxy);
    the answers and domains stay, and the setting at its default leaves recorded scenario folders theirs."""
    from mopdx.data import Example
    from mopdx_lab.camopd import proxy_prompts, scenario_dir

    general = [Example("rot", "rot: 1234", "2341 3412"), Example("inc", "inc: 1934", "2045 3156")]
    moved = proxy_prompts(general, "all", "{tag}> {input}")
    assert [(e.domain, e.prompt, e.answer) for e in moved] == [("rot", "rot> 1234", "2341 3412"), ("inc", "inc> 1934", "2045 3156")]
    assert [e.prompt for e in proxy_prompts(general, "hard", "{input} {tag}")] == ["1934 inc"]
    with pytest.raises(ValueError, match="'<tag>: <input>'"):
        proxy_prompts([Example("add", "add 1 + 2", "3")], "all", "{tag}> {input}")
    base = load_config("camopd", [], [])
    assert scenario_dir(base.lab, Path("/x")) == scenario_dir(load_config("camopd", [], ["lab.camopd.proxy_template=''"]).lab, Path("/x"))
    other = load_config("camopd", [], ["lab.camopd.proxy_template='{tag}> {input}'"])
    assert scenario_dir(other.lab, Path("/x")) != scenario_dir(base.lab, Path("/x"))
