"""One-off probe (docs/experiments/opcod.md), from the repository root:
python benchmarks/probes/opcod_first_block.py artifacts/lab/<hash>/opcod-0e3f4cee runs/opcod_v2_tutor_table

Which first step does peer A write on `rot` prompts, before training and after each arm?  A is
the `uprot` specialist: `uprot` applies `inc`'s rule to the first block, `rot`'s after it, so A's
error on `rot` is writing `inc`'s first block.  On 64 eval prompts of `rot` (4 samples, T = 1),
each sample's first block is classed as `rot`'s rule (right), `inc`'s rule (A's habit), or
other.  Writes benchmarks/results/opcod_v2_tutor_controls/probe_first_block.json."""
import json
import sys
from pathlib import Path

import torch

from mopdx.data import load_prompts
from mopdx_lab.domains import get_domain
from mopdx_lab.opcod_preflight import _Peer
from mopdx.models import load_model, load_tokenizer

folder, runs = Path(sys.argv[1]), Path(sys.argv[2])
ARMS = {"OPCoD, both ingredients": "opcod_strategy.use_solution=true", "feedback off": "opcod_strategy.feedback=false_strategy.use_solution=true",
        "shuffled, own solution": "opcod_strategy.use_solution=true_strategy.feedback_source=shuffled"}
rot, inc = get_domain("rot"), get_domain("inc")
ev = [e for e in load_prompts(str(folder / "eval.jsonl")) if e.domain == "rot"][:64]


def classes(model_dir: Path) -> dict[str, float]:
    p = _Peer(load_model(str(model_dir)), load_tokenizer(str(model_dir)), 56, 4, 0)
    with torch.no_grad():
        graded = p.graded([e.prompt for e in ev], ev)
    count = {"rot rule": 0, "inc rule": 0, "other": 0, "right answer": 0}
    for e, g in zip(ev, graded):
        start = e.prompt.split(": ")[1]
        for text, ok in g:
            first = (text.split() or [""])[0]
            count["rot rule" if first == rot.step(start) else "inc rule" if first == inc.step(start) else "other"] += 1
            count["right answer"] += int(ok)
    n = sum(len(g) for g in graded)
    return {k: round(v / n, 3) for k, v in count.items()}


out = {"before (peer A at step 0)": classes(folder / "peer_uprot")}
print("before", out["before (peer A at step 0)"], flush=True)
for arm, prefix in ARMS.items():
    out[arm] = {f"seed{s}": classes(runs / f"{prefix}-seed{s}" / "final" / "A") for s in range(5)}
    print(arm, out[arm], flush=True)
(Path(__file__).resolve().parents[1] / "results" / "opcod_v2_tutor_controls" / "probe_first_block.json").write_text(json.dumps(out, indent=2) + "\n")
