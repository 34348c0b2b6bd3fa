"""Probe: can the CaMOPD scenario's general teacher answer the recovery prompts in another template or
length (the paper's kind of proxy), and how often does the specialist leak `|` on `rot` there?

    python benchmarks/probes/camopd_proxy_templates.py artifacts/lab/<lab>/camopd-<hash>

100 eval prompts per domain, avg@4 at T = 1; the leak is the share of one sampled answer per `rot` prompt
holding a `|`.  Prints one line per (model, variant) and writes benchmarks/results/camopd_v2/proxy_template/probe_templates.json.
A proxy is usable only where the general teacher still answers it: its prefill is the recovery signal."""
import json
import random
import sys
from pathlib import Path

import torch

from mopdx.backends.base import Sampling
from mopdx.backends.hf import HFRolloutBackend
from mopdx.config import EvalConfig
from mopdx.data import Example, load_prompts
from mopdx_lab.domains import Increment, Rotate
from mopdx.models import load_model, load_tokenizer
from mopdx.run.evaluation import accuracy_by_domain
from mopdx.text import encode_prompt

torch.set_num_threads(1)
scen = Path(sys.argv[1])
evals = [e for e in load_prompts(scen / "eval.jsonl") if e.domain in ("inc", "rot")]
evals = [e for d in ("inc", "rot") for e in [x for x in evals if x.domain == d][:100]]
rules = {"inc": Increment(), "rot": Rotate()}

def width_variant(e, w, rng):
    dom = rules[e.domain]
    start = "".join(rng.choice("0123456789") for _ in range(w))
    type(dom).width = w
    ans = dom.trace(start)
    type(dom).width = 4
    return Example(e.domain, f"{e.domain}: {start}", ans)

variants = {
    "orig": lambda e, rng: e,
    "nocolon": lambda e, rng: Example(e.domain, e.prompt.replace(": ", " "), e.answer),
    "gt": lambda e, rng: Example(e.domain, e.prompt.replace(": ", "> "), e.answer),
    "spaced": lambda e, rng: Example(e.domain, e.prompt.split(": ")[0] + ": " + " ".join(e.prompt.split(": ")[1]), e.answer),
    "width3": lambda e, rng: width_variant(e, 3, rng),
    "width5": lambda e, rng: width_variant(e, 5, rng),
}
settings = EvalConfig(max_new_tokens=72, samples=4)
out = {}
for name in ("general", "specialist"):
    tok = load_tokenizer(scen / name)
    backend = HFRolloutBackend(load_model(scen / name), tok.pad_token_id, tok.eos_token_id)
    for v, f in variants.items():
        rng = random.Random(0)
        ex = [f(e, rng) for e in evals]
        acc = accuracy_by_domain(backend, tok, ex, settings)
        # leak: share of sampled rot answers with a '|'
        rot = [e for e in ex if e.domain == "rot"]
        gen = backend.generate([encode_prompt(tok, e.prompt) for e in rot], ["rot"] * len(rot), Sampling(max_new_tokens=72, temperature=1.0, seed=1))
        texts = tok.batch_decode(gen.completion_ids, skip_special_tokens=True)
        leak = sum("|" in t for t in texts) / len(texts)
        out[f"{name}/{v}"] = {**{d: round(a, 3) for d, a in acc.items()}, "leak_rot": round(leak, 3)}
        print(name, v, out[f"{name}/{v}"], flush=True)
json.dump(out, open(Path(__file__).resolve().parents[1] / "results" / "camopd_v2" / "proxy_template" / "probe_templates.json", "w"), indent=1)
