"""Markdown tables of per-domain figures (reports, the CLI, comparisons), written by pandas.

One formatter for every table, so reports, ``eval`` and ``compare`` print
numbers alike: three decimals, ``-`` where a figure is missing or undefined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd


def markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """``df`` as a GitHub Markdown table; missing and NaN cells print as ``-``."""
    cells = df.astype(object).where(df.notna(), None)
    return cells.to_markdown(floatfmt=floatfmt, missingval="-")


def domain_table(columns: Mapping[str, Mapping[str, float]], domains: Sequence[str], title: str = "domain") -> str:
    """One row per domain (and ``mean`` when a column has it), one column per entry of ``columns``."""
    rows = list(domains) + (["mean"] if any("mean" in c for c in columns.values()) else [])
    df = pd.DataFrame({name: [col.get(r) for r in rows] for name, col in columns.items()}, index=pd.Index(rows, name=title), dtype=float)
    return markdown(df)


def records_table(rows: Sequence[Mapping[str, Any]], floatfmt: str = ".3f") -> str:
    """A table with one row per record (keys are the columns, in first-seen order)."""
    return markdown(pd.DataFrame(list(rows)).set_index(next(iter(rows[0]))), floatfmt)


def group_table(metrics: Mapping[str, Mapping[str, float]], groups: Mapping[str, list[str]]) -> str:
    """Per domain group: accuracy, change from step 0 (preservation), recovered fraction (recovery)."""
    rows = [{"group": g, "domains": ", ".join(groups[g]), "accuracy": m["acc"], "change from step 0": m["delta"], "recovered": m["recovered"]}
            for g, m in metrics.items()]
    return records_table(rows)
