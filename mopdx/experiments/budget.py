"""Budget-limited scores of a run: how fast a group recovers, not only where it ends.

Why: given enough steps MOPD and CaMOPD both reach the general teacher, so a
final-accuracy table cannot tell them apart; the CaMOPD claim is about what a
fixed, small budget buys.  From a run's eval history (``eval.jsonl``, one
record per eval step) and its step-0 / teacher figures, per named group:

* the recovery curve: the group's recovered fraction of the student-teacher gap
  at each eval step (``mopdx.scores.group_metrics``, the same figure as the final table);
* ``auc``: the area under that curve over the run's steps, divided by the steps
  (trapezoids; 1 = fully recovered from step 0 on, 0 = no gain);
* ``steps_to``: the first eval step at which the recovered fraction reaches
  ``threshold`` (0.8 by default), NaN when it never does.  Resolution is
  ``train.eval_every``: compare runs evaluated on the same grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mopdx.scores import group_metrics


def recovery_curve(
    history: Sequence[Mapping[str, Any]], student0: Mapping[str, float], teacher: Mapping[str, float], domains: list[str],
) -> list[tuple[int, float]]:
    """(step, recovered fraction of ``domains``) at every eval step of ``history``, in step order."""
    curve = []
    for rec in sorted(history, key=lambda r: r["step"]):
        got = group_metrics(rec["acc"], student0, teacher, {"g": domains})["g"]["recovered"]
        curve.append((int(rec["step"]), got))
    return curve


def area_under(curve: Sequence[tuple[int, float]]) -> float:
    """Trapezoid area of ``curve`` divided by its step span (NaN for fewer than two points or a NaN value)."""
    if len(curve) < 2 or any(math.isnan(v) for _, v in curve):
        return math.nan
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(curve, curve[1:]))
    span = curve[-1][0] - curve[0][0]
    return area / span if span > 0 else math.nan


def steps_to(curve: Sequence[tuple[int, float]], threshold: float) -> float:
    """First step whose value reaches ``threshold``; NaN when none does."""
    return next((float(s) for s, v in curve if not math.isnan(v) and v >= threshold), math.nan)


def budget_metrics(
    history: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], groups: Mapping[str, list[str]], threshold: float = 0.8,
) -> dict[str, dict[str, float]]:
    """Per group: ``auc`` and ``steps_to`` (``threshold``) of its recovery curve, from one run's
    eval history and summary (its ``student0`` and ``teacher`` accuracies)."""
    out = {}
    for name, domains in groups.items():
        curve = recovery_curve(history, summary["student0"], summary["teacher"], domains)
        out[name] = {"auc": area_under(curve), "steps_to": steps_to(curve, threshold)}
    return out
