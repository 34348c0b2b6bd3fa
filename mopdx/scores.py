"""Scores of a run: the normalised score per domain and per named domain group.

Normalised score (DESIGN.md): ``(acc - acc_student0) / (acc_teacher - acc_student0)``;
1.0 means teacher level, 0 no gain.  It is undefined (NaN) when the teacher
is not better than the starting student on that domain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def normalised_score(acc: float, acc_student0: float, acc_teacher: float) -> float:
    gap = acc_teacher - acc_student0
    return (acc - acc_student0) / gap if gap > 1e-9 else math.nan


MIN_GAP = 0.1  # teacher ahead of the start by less: a ratio over a gap of a few eval prompts is noise


def normalised_scores(
    acc: Mapping[str, float], student0: Mapping[str, float], teacher: Mapping[str, float], min_gap: float = MIN_GAP
) -> dict[str, float]:
    """Per-domain normalised scores plus their ``mean`` over defined domains.  A domain whose
    teacher is less than ``min_gap`` ahead of the start gets NaN: on the CaMOPD scenario a kept
    domain (teacher 0.9875, start 0.985) scored -6 for one eval prompt lost, and the mean -8.4."""
    out = {d: normalised_score(acc[d], student0[d], teacher[d]) if teacher[d] - student0[d] >= min_gap else math.nan
           for d in acc if d in student0 and d in teacher}
    defined = [v for v in out.values() if not math.isnan(v)]
    out["mean"] = sum(defined) / len(defined) if defined else math.nan
    return out


def group_metrics(
    acc: Mapping[str, float],
    student0: Mapping[str, float],
    teacher: Mapping[str, float],
    groups: Mapping[str, list[str]],
    min_gap: float = MIN_GAP,
) -> dict[str, dict[str, float]]:
    """Per named group of domains: ``acc`` (mean accuracy), ``delta`` (change from step 0,
    in accuracy points: *preservation* when it is near 0) and ``recovered`` (mean
    normalised score over the group's domains with a defined score: *recovery*, the
    fraction of the student-teacher gap closed). Domains where the teacher is less than
    ``min_gap`` ahead of the start are left out of ``recovered``: a ratio over a gap of
    a few eval prompts is noise, and there is nothing to recover.

    CaMOPD's claim is about two such groups at once (general recovered, domain kept),
    so they are reported side by side instead of being read off per-domain columns.
    """
    out: dict[str, dict[str, float]] = {}
    for name, domains in groups.items():
        ds = [d for d in domains if d in acc]
        mean = lambda xs: sum(xs) / len(xs) if xs else math.nan
        scores = [normalised_score(acc[d], student0[d], teacher[d]) for d in ds if d in student0 and d in teacher and teacher[d] - student0[d] >= min_gap]
        out[name] = {
            "acc": mean([acc[d] for d in ds]),
            "delta": mean([acc[d] - student0[d] for d in ds if d in student0]),
            "recovered": mean([s for s in scores if not math.isnan(s)]),
        }
    return out
