"""Reporting helpers: normalised score and per-domain tables.

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


def normalised_scores(
    acc: Mapping[str, float], student0: Mapping[str, float], teacher: Mapping[str, float]
) -> dict[str, float]:
    """Per-domain normalised scores plus their ``mean`` over defined domains."""
    out = {d: normalised_score(acc[d], student0[d], teacher[d]) for d in acc if d in student0 and d in teacher}
    defined = [v for v in out.values() if not math.isnan(v)]
    out["mean"] = sum(defined) / len(defined) if defined else math.nan
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return "nan" if math.isnan(v) else f"{v:.3f}"


def domain_table(columns: Mapping[str, Mapping[str, float]], domains: list[str], title: str = "domain") -> str:
    """A Markdown table, one row per domain (and ``mean`` when a column has it)."""
    names = list(columns)
    rows = list(domains) + (["mean"] if any("mean" in c for c in columns.values()) else [])
    lines = [f"| {title} | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(_fmt(columns[n].get(r)) for n in names) + " |")
    return "\n".join(lines)
