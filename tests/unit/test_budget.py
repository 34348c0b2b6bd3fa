"""Budget-limited scores (recovery AUC, steps to 80%) and compare's method variants."""

from __future__ import annotations

import math

import pytest

from mopdx.errors import ConfigError
from mopdx.experiments.budget import area_under, budget_metrics, recovery_curve, steps_to
from mopdx.experiments.methods import check_methods, run_dirname, scenario, scenario_configs, split_variant

S0, TEACHER = {"a": 0.2, "b": 0.4, "d": 0.9}, {"a": 1.0, "b": 0.8, "d": 0.9}


def _history(*accs: tuple[float, float]) -> list[dict]:
    return [{"step": 10 * i, "acc": {"a": a, "b": b, "d": 0.9}} for i, (a, b) in enumerate(accs)]


def test_recovery_curve_and_auc_by_hand() -> None:
    h = _history((0.2, 0.4), (0.6, 0.6), (1.0, 0.8))  # recovered: 0, (0.5 + 0.5)/2, 1
    curve = recovery_curve(h, S0, TEACHER, ["a", "b"])
    assert curve == [(0, 0.0), (10, pytest.approx(0.5)), (20, pytest.approx(1.0))]
    assert area_under(curve) == pytest.approx((10 * 0.25 + 10 * 0.75) / 20)
    assert steps_to(curve, 0.8) == 20.0 and steps_to(curve, 0.45) == 10.0 and math.isnan(steps_to(curve, 1.5))
    assert math.isnan(area_under(curve[:1]))


def test_faster_recovery_has_larger_auc_at_the_same_end() -> None:
    fast = _history((0.2, 0.4), (0.9, 0.7), (1.0, 0.8))
    slow = _history((0.2, 0.4), (0.3, 0.5), (1.0, 0.8))
    m_fast = budget_metrics(fast, {"student0": S0, "teacher": TEACHER}, {"general": ["a", "b"]})["general"]
    m_slow = budget_metrics(slow, {"student0": S0, "teacher": TEACHER}, {"general": ["a", "b"]})["general"]
    assert m_fast["auc"] > m_slow["auc"] and m_fast["steps_to"] == 10.0 and m_slow["steps_to"] == 20.0
    # a domain with no teacher-student gap has nothing to recover: NaN, not a division by zero
    assert math.isnan(budget_metrics(fast, {"student0": S0, "teacher": TEACHER}, {"domain": ["d"]})["domain"]["auc"])


def test_method_variants() -> None:
    assert split_variant("mopd") == ("mopd", [])
    assert split_variant("camopd[strategy.rho=0.25, strategy.n_g=7]") == ("camopd", ["strategy.rho=0.25", "strategy.n_g=7"])
    assert run_dirname("camopd[strategy.rho=0.25]") == "camopd_strategy.rho=0.25"
    assert run_dirname("baseline:merge_task:0.3") == "baseline_merge_task_0.3"
    for bad in ("camopd[]", "camopd[rho]", "camopd[strategy.rho=1", "camopd[a=1]x"):
        with pytest.raises(ConfigError, match="variant"):
            split_variant(bad)


def test_every_scenario_arm_loads_and_a_bad_arm_fails_first() -> None:
    from mopdx.cli import build_parser
    from mopdx.paths import scenario_names

    assert scenario_names() == ["blocks", "camopd", "mopd", "opcod", "opcod_routed", "opcod_teachers", "panels", "xtok"]  # one YAML each, the CLI's choices
    assert build_parser().parse_args(["compare", "--scenario", "opcod_teachers"]).scenario == "opcod_teachers"
    for name in ("blocks", "camopd", "opcod", "opcod_routed", "opcod_teachers", "panels", "xtok"):
        check_methods(scenario(name)["methods"], scenario_configs(name), [])
    with pytest.raises(ConfigError, match="unknown scenario 'nope'; known: blocks, camopd, mopd, opcod, opcod_routed, opcod_teachers, panels, xtok"):
        scenario("nope")
    with pytest.raises(ConfigError, match="rho"):
        check_methods(["mopd", "camopd[strategy.rho=3]"], [], [])
    with pytest.raises(ConfigError):
        check_methods(["camopd[strategy.rhoo=0.3]"], [], [])


def test_paired_differences_by_seed_by_hand() -> None:
    """Each arm minus the first, seed by seed: AUC and recovered of the first group, delta of the
    second; a seed only one arm has is left out."""
    from mopdx.experiments.compare import T975, paired_differences

    def row(auc: float, rec: float, delta: float) -> dict:
        return {("general", "auc"): auc, ("general", "recovered"): rec, ("domain", "delta"): delta,
                ("general", "delta"): 0.0, ("domain", "recovered"): math.nan, ("general", "steps_to"): 10.0, ("domain", "auc"): math.nan,
                ("domain", "steps_to"): math.nan}

    by_seed = {"mopd": {0: row(0.5, 0.8, -0.01), 1: row(0.6, 0.9, -0.02), 2: row(0.7, 0.9, 0.0)},
               "camopd": {0: row(0.6, 0.8, -0.03), 1: row(0.8, 0.8, -0.02), 7: row(0.0, 0.0, 0.0)}}
    out, md = paired_differences(by_seed, ["general", "domain"])
    c = out["camopd"]
    assert c["seeds"] == [0, 1]
    assert c["general auc"]["mean"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2
    assert c["general auc"]["ci95"] == pytest.approx(T975[0] * math.sqrt(0.005) / math.sqrt(2))  # sd of (0.1, 0.2)
    assert c["general recovered"]["mean"] == pytest.approx(-0.05) and c["domain delta"]["mean"] == pytest.approx(-0.01)
    assert "minus mopd" in md and "+0.150" in md
