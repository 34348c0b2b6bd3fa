"""One-off probe (docs/experiments/opcod.md), from the repository root:
python benchmarks/probes/opcod_shuffled_hint.py artifacts/lab/<hash>/opcod-0e3f4cee

Why did shuffled hints (with the own solution) lift peer A on `rot` by 0.24?  Hypothesis: in this
lab a hint also says *which first-step rule applies*, and a hint moved from another `rot` prompt
still says it.  On 64 eval prompts of each weak domain (avg@4, T = 1), each weak peer reads:
nothing; the prompt's own hint (its first two blocks); the hint of another prompt of the same
domain (same rule, other start); the hint of a prompt of the other domain (other rule).
If the hypothesis holds, a same-domain decoy lifts the peer above plain and an other-domain one
does not.  Writes benchmarks/results/opcod_v2_tutor_controls/probe_shuffled_hint.json."""
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mopdx.codistill.privileged import teacher_context
from mopdx.data import load_prompts
from mopdx_lab.config import LabConfig
from mopdx_lab.opcod import anchored_steps, lab_templates
from mopdx_lab.opcod_preflight import _Peer
from mopdx.models import load_model, load_tokenizer

folder = Path(sys.argv[1])
results = Path(__file__).resolve().parents[1] / "results"
cfg = OmegaConf.load(results / "opcod_v2_preflight" / "uprot_tutorhint_config.yaml")
T = lab_templates(OmegaConf.merge(OmegaConf.structured(LabConfig).opcod, cfg.lab.opcod))
evals = load_prompts(str(folder / "eval.jsonl"))
out = {}
for peer, weak, strong in (("peer_uprot", "rot", "uprot"), ("peer_rot", "uprot", "rot")):
    ev = [e for e in evals if e.domain == weak][:64]
    same = [ev[(i + 7) % len(ev)] for i in range(len(ev))]
    other = [e for e in evals if e.domain == strong][:64]
    p = _Peer(load_model(str(folder / peer)), load_tokenizer(str(folder / peer)), 56, 4, 0)
    contexts = {
        "plain": [e.prompt for e in ev],
        "own hint": [teacher_context(e.prompt, None, anchored_steps(e), T) for e in ev],
        "hint of another prompt, same domain": [teacher_context(e.prompt, None, anchored_steps(o), T) for e, o in zip(ev, same)],
        "hint of a prompt of the other domain": [teacher_context(e.prompt, None, anchored_steps(o), T) for e, o in zip(ev, other)],
    }
    out[f"{peer} on {weak}"] = {}
    with torch.no_grad():
        for name, prompts in contexts.items():
            graded = p.graded(prompts, ev)
            acc = sum(ok for g in graded for _, ok in g) / sum(len(g) for g in graded)
            out[f"{peer} on {weak}"][name] = round(acc, 3)
            print(f"{peer} on {weak:6s} {name:38s} {acc:.3f}", flush=True)
(results / "opcod_v2_tutor_controls" / "probe_shuffled_hint.json").write_text(json.dumps(out, indent=2) + "\n")
