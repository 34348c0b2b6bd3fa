"""How often an OPCoD scenario's givers leak the answer, and what the reader makes of a leaked hint.

    python benchmarks/opcod_leaks.py --config benchmarks/results/opcod_v2_leaky/config.yaml \\
        --feedback-tokens 56 --out benchmarks/results/opcod_v2_leaky

The anchoring-off control can only act where a giver's hint holds the answer.  The build's
pre-flight writes hints of 16 tokens (a lab v2 answer has 49), so it cannot see such a leak.  This
runs the same check (``mopdx_lab.opcod.measure_preflight``: same prompts, samples, gate and seed) with hints
as long as ``--feedback-tokens``, twice: anchored, as OPCoD reads them, and as written, as the
anchoring-off control reads them.  Per peer and domain it prints the gated hints' leak share and the
reader's accuracy with the hint against plain on the same prompts, and writes ``leaks.json``.
It builds nothing: the scenario must be built (``python -m mopdx lab build --strategy opcod``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from mopdx.config import load_config
from mopdx_lab.build import lab_dir
from mopdx_lab.opcod import measure_preflight, scenario_dir
from mopdx.tables import records_table


def leak_rows(config: str, feedback_tokens: int, overrides: Sequence[str] = ()) -> list[dict[str, object]]:
    """One row per (anchoring, peer, domain): the gated hints' leak share and the reader's accuracy with them."""
    lab = load_config("opcod", [config], list(overrides)).lab
    out = scenario_dir(lab, lab_dir(lab))
    if not (out / "manifest.json").is_file():
        raise SystemExit(f"{out}: the scenario is not built; run: python -m mopdx lab build --strategy opcod --config {config}")
    rows = []
    for anchoring in (True, False):
        for r in measure_preflight(lab, out, feedback_tokens=feedback_tokens, anchoring=anchoring)["rows"]:
            rows.append({"hints": "anchored" if anchoring else "as written", "reader": r["peer"], "domain": r["domain"], "role": r["role"],
                         "plain": r["plain"], "hints given": r["n_feedback"], "leaked": r["feedback_leaked"],
                         "with hint": r["feedback"], "plain, same prompts": r["feedback_plain"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the OPCoD scenario's config (a built lab v2 scenario)")
    p.add_argument("--feedback-tokens", type=int, default=56, help="hint length cap (the run's codistill.feedback_max_tokens)")
    p.add_argument("--out", type=Path, required=True, help="folder for leaks.json")
    p.add_argument("overrides", nargs="*", help="config overrides (key=value), as the run's")
    args = p.parse_args(argv)
    rows = leak_rows(args.config, args.feedback_tokens, args.overrides)
    print(records_table(rows))
    print("(the reader is the peer named; the hints are the other peer's, gated on its own rollouts; leaked: share of the gated hints "
          "holding the whole answer, before anchoring; accuracy avg@samples at T=1)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "leaks.json").write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
