"""Vanilla MOPD: mixed-domain batches, every sample kept, uniform averaging.

Run: ``python -m mopdx fit --strategy mopd``.  The per-batch domain shares
come from ``data.domain_ratios`` (uniform when empty), as in the paper's
fixed mixing ratio (e.g. 0.35/0.35/0.30).
"""

from __future__ import annotations

from mopdx.strategy import Strategy


class MOPDStrategy(Strategy):
    """The base behaviour is exactly vanilla MOPD; this class names it."""

    name = "mopd"
