"""One-off probe (docs/experiments/opcod.md), run from the repository root:
python benchmarks/probes/opcod_decoy_context.py <scenario folder> <peer> <domain>

Does a peer *copy* its context or compute its rule?  On 64 eval prompts of <domain>
(avg@4, T = 1), the peer reads: nothing; the prompt's own solution; another prompt's
solution (a decoy); the prompt's worked steps; another prompt's worked steps; both of
the prompt's own.  A peer that computes ignores a decoy; one that copies follows it."""
import sys

import torch
from omegaconf import OmegaConf

from mopdx.codistill.privileged import teacher_context
from mopdx.data import load_prompts
from mopdx_lab.config import LabConfig
from mopdx_lab.opcod import anchored_steps, lab_templates
from mopdx_lab.opcod_preflight import _Peer
from mopdx.models import load_model, load_tokenizer

folder, peer, domain = sys.argv[1:4]
c = OmegaConf.merge(OmegaConf.structured(LabConfig).opcod, OmegaConf.load("configs/experiment/opcod_v2.yaml").lab.opcod)
T = lab_templates(c)
ev = [e for e in load_prompts(f"{folder}/eval.jsonl") if e.domain == domain][:64]
other = [ev[(i + 7) % len(ev)] for i in range(len(ev))]
p = _Peer(load_model(f"{folder}/{peer}"), load_tokenizer(f"{folder}/{peer}"), 56, 4, 0)
contexts = {
    "plain": [e.prompt for e in ev],
    "own solution": [teacher_context(e.prompt, e.answer, None, T) for e in ev],
    "decoy solution": [teacher_context(e.prompt, o.answer, None, T) for e, o in zip(ev, other)],
    "own steps": [teacher_context(e.prompt, None, anchored_steps(e), T) for e in ev],
    "decoy steps": [teacher_context(e.prompt, None, anchored_steps(o), T) for e, o in zip(ev, other)],
    "own solution + steps": [teacher_context(e.prompt, e.answer, anchored_steps(e), T) for e in ev],
}
with torch.no_grad():
    for name, prompts in contexts.items():
        graded = p.graded(prompts, ev)
        print(f"{name:22s} {sum(ok for g in graded for _, ok in g) / sum(len(g) for g in graded):.3f}")
