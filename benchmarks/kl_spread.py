"""How far one sampled estimate of the initial per-token KL can be trusted: its spread over sampling seeds.

Why: the lab's regime check, a build's manifest and a run's first step each quote *one*
Monte-Carlo estimate of ``KL(student || teacher)`` per token, ``mean_t log p_s(y_t) - log p_t(y_t)``
over the student's own T = 1 samples (``mopdx_lab.regime.initial_kl``).  When a few
rollouts hold a token the teacher never writes (the CaMOPD specialist's ``|`` on ``rot``),
that mean is carried by those rollouts, and one estimate says little.  This script
draws the same prompts under ``--seeds`` sampling seeds and prints, per seed, the
estimate, the share of rollouts holding ``--marker``, and the KL of the rollouts with
and without it; then the mean and a 95% CI over seeds.

Usage (the CaMOPD scenario's specialist against its general teacher on ``rot``)::

    python benchmarks/kl_spread.py --student artifacts/lab/<hash>/camopd-<x>/specialist \
        --teacher artifacts/lab/<hash>/camopd-<x>/general --prompts artifacts/lab/<hash>/camopd-<x>/eval.jsonl \
        --domain rot --marker '|' --seeds 0 1 2 3 4 5 6 7 8 9

Prints one table and writes ``kl_spread.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from mopdx.data import load_prompts
from mopdx.experiments.compare import mean_ci  # Student-t 95% CI over seeds, as compare's tables
from mopdx_lab.regime import token_log_ratios
from mopdx.models import load_model, load_tokenizer


def one_seed(student, teacher, tok, prompts, max_new_tokens: int, seed: int, marker: str) -> dict:
    """One estimate (``initial_kl``'s, from the same per-token ratios), split by whether the rollout holds ``marker``."""
    rollouts, diff = token_log_ratios(student, teacher, tok, prompts, max_new_tokens, seed)
    mask = rollouts.completion_mask
    texts = tok.batch_decode(torch.where(mask.bool(), rollouts.completion_ids, tok.pad_token_id), skip_special_tokens=True)
    marked = torch.tensor([marker in t for t in texts]) if marker else torch.zeros(len(texts), dtype=torch.bool)

    def kl(rows: torch.Tensor) -> float:
        return float(diff[rows].sum() / mask[rows].sum().clamp(min=1.0)) if rows.any() else float("nan")

    per_rollout = diff.sum(1) / mask.sum(1).clamp(min=1.0)
    return {"seed": seed, "kl": kl(torch.ones_like(marked)), "marked_share": float(marked.float().mean()),
            "kl_marked": kl(marked), "kl_unmarked": kl(~marked), "median_rollout_kl": float(per_rollout.median()),
            "top5pct_share": float(per_rollout.sort(descending=True).values[: max(1, len(texts) // 20)].clamp(min=0).sum()
                                   / per_rollout.clamp(min=0).sum().clamp(min=1e-12))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", required=True, help="student model folder")
    p.add_argument("--teacher", required=True, help="teacher model folder")
    p.add_argument("--prompts", required=True, help="prompts (.jsonl, mopdx.data format)")
    p.add_argument("--domain", required=True, help="the domain whose prompts to sample")
    p.add_argument("--n", type=int, default=256, help="prompts (the first n of the domain; default 256, as the build)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--marker", default="", help="split rollouts by whether their text holds this string")
    p.add_argument("--max-new-tokens", type=int, default=56)
    p.add_argument("--out", default="benchmarks/results/kl_spread")
    args = p.parse_args(argv)
    prompts = [e for e in load_prompts(Path(args.prompts)) if e.domain == args.domain][: args.n]
    if not prompts:
        raise SystemExit(f"no {args.domain!r} prompts in {args.prompts}")
    tok, student, teacher = load_tokenizer(args.student), load_model(args.student), load_model(args.teacher)
    rows = [one_seed(student, teacher, tok, prompts, args.max_new_tokens, s, args.marker) for s in args.seeds]
    table = pd.DataFrame(rows).set_index("seed")
    summary = {k: mean_ci(table[k].dropna().tolist()) for k in table.columns}
    print(table.round(4).to_markdown())
    print("\nmean ± 95% CI over seeds: " + ", ".join(f"{k} {m:.4f} ± {h:.4f}" for k, (m, h) in summary.items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kl_spread.json").write_text(json.dumps({"args": vars(args), "per_seed": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
