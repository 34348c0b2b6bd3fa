"""Does a correct start of the answer pull a peer onto the right rule? Accuracy with the first j blocks forced.

Why (issue 17): OPCoD's teacher is the peer reading privileged context, and on lab v2 the
lab's feedback is the first blocks of the other peer's trace.  A peer can only profit from
it if, once those blocks are in its answer, it continues with the rule they show.  This
script measures that ceiling without any context format: per ``--blocks j`` it writes the
first ``j`` blocks of the reference into the answer (teacher-forced), samples the rest
(T = 1, ``--samples`` per prompt) and grades the whole answer.  ``j = 0`` is the plain
peer.  If even forced blocks do not lift a weak peer, no feedback made of them can, and
the scenario must change before any context training is worth doing.

Usage::

    python benchmarks/forced_prefix.py --model <scenario>/peer_inc --prompts <lab>/data/eval.jsonl \
        --domain rot --blocks 0 1 2 4 6 8 [--n 64 --samples 4]

Prints one table and writes ``forced_prefix.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from mopdx.backends.base import Sampling
from mopdx.backends.hf import HFRolloutBackend
from mopdx.data import Example, load_prompts
from mopdx.verifiers import grader
from mopdx.models import load_model, load_tokenizer
from mopdx.text import encode_prompt


def prefix_ids(tok, answer: str, blocks: int, sep: str = " ") -> list[int]:
    """The fewest answer tokens whose text holds the first ``blocks`` blocks (the answer's own
    tokenisation, so the forced part is spelled as the model would spell it)."""
    if blocks <= 0:
        return []
    want = sep.join(answer.split(sep)[:blocks])
    ids = tok.encode(answer, add_special_tokens=False)
    for t in range(1, len(ids) + 1):
        if tok.decode(ids[:t]).startswith(want):
            return ids[:t]
    return ids


@torch.no_grad()
def forced_texts(model, tok, examples: list[Example], blocks: int, samples: int, max_new_tokens: int, seed: int, sep: str = " ") -> list[tuple[Example, str]]:
    """``samples`` whole answers per example (T = 1), each starting with the reference's first ``blocks`` blocks."""
    backend = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id)
    forced = [prefix_ids(tok, e.answer, blocks, sep) for e in examples]
    out = backend.generate([encode_prompt(tok, e.prompt) + f for e, f in zip(examples, forced)], [e.domain for e in examples],
                           Sampling(n=samples, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed))
    return [(examples[p], tok.decode(forced[p] + ids, skip_special_tokens=True)) for p, ids in zip(out.prompt_index.tolist(), out.completion_ids.tolist())]


def forced_accuracy(model, tok, examples: list[Example], blocks: int, samples: int, max_new_tokens: int, seed: int, sep: str = " ") -> float:
    """avg@``samples`` of the whole answer with its first ``blocks`` blocks forced."""
    graded = [grader(e.domain).verify(e.answer, text) for e, text in forced_texts(model, tok, examples, blocks, samples, max_new_tokens, seed, sep)]
    return sum(graded) / len(graded)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="model folder, or name=folder (repeatable)")
    p.add_argument("--prompts", required=True, help="prompts (.jsonl, mopdx.data format)")
    p.add_argument("--domain", action="append", required=True, help="domain(s) to measure (repeatable)")
    p.add_argument("--blocks", type=int, nargs="+", default=[0, 1, 2, 4, 6, 8])
    p.add_argument("--n", type=int, default=64, help="prompts per domain")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=56)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/forced_prefix")
    args = p.parse_args(argv)
    data = load_prompts(Path(args.prompts))
    rows = []
    for spec in args.model:
        name, _, folder = spec.rpartition("=")
        tok, model = load_tokenizer(folder), load_model(folder)
        for d in args.domain:
            ex = [e for e in data if e.domain == d][: args.n]
            if not ex:
                raise SystemExit(f"no {d!r} prompts in {args.prompts}")
            for j in args.blocks:
                rows.append({"model": name or Path(folder).name, "domain": d, "blocks": j,
                             "acc": forced_accuracy(model, tok, ex, j, args.samples, args.max_new_tokens, args.seed)})
    table = pd.DataFrame(rows).pivot_table(index=["model", "domain"], columns="blocks", values="acc")
    print(table.round(3).to_markdown())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "forced_prefix.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
