"""Lab scenarios beyond the MOPD pipeline, built on demand from its artifacts.

**CaMOPD** ("counteraction"): a *general* model (Stage 1 continued on the whole
mixture) is specialised on one domain until it visibly forgets the others.
The specialised model is both the starting student and, frozen, the domain
teacher; the general model is the general teacher.  The general prompts used
for recovery are *proxy* prompts: only the easy part of each general domain
(short inputs, small operands), i.e. another length distribution than the
general model was trained on, while evaluation covers the whole domain.

Artifacts (``lab:camopd/general``, ``lab:camopd/specialist``,
``lab:camopd/train``) live under ``<lab>/camopd-<hash of its settings>`` and are cached and resumed
like the rest of the lab.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from mopdx.config import EvalConfig
from mopdx.data import load_prompts, save_prompts
from mopdx.lab.artifacts import save_model_folder, settings_digest
from mopdx.lab.config import CAMOPD_ARTIFACTS  # noqa: F401 - re-exported; defined with the settings (light import)
from mopdx.lab.domains import get_domain
from mopdx.models import load_model, load_tokenizer
from mopdx.run.evaluation import evaluate_folder
from mopdx.sft import SFTSpec, train_sft


def build_camopd(lab: DictConfig, root: Path) -> Path:
    """Build (or finish) the CaMOPD scenario inside the lab folder ``root``."""
    c = lab.camopd
    digest = settings_digest(c, length=8)
    out = root / f"camopd-{digest}"
    if (out / "manifest.json").is_file():
        return out
    train = load_prompts(root / "data" / "train.jsonl")
    general_dir, specialist_dir = out / "general", out / "specialist"
    if not general_dir.is_dir():
        tok, model = load_tokenizer(root / "models" / "stage1"), load_model(root / "models" / "stage1")
        train_sft(model, tok, train, SFTSpec(steps=c.general_steps, batch_size=lab.batch_size, lr=c.general_lr, seed=lab.seed + 2), desc="camopd general model")
        save_model_folder(model, tok, general_dir, {"scenario": "camopd", "role": "general", "init": "stage1"})
    if not specialist_dir.is_dir():
        tok, model = load_tokenizer(general_dir), load_model(general_dir)
        domain = [e for e in train if e.domain == c.review_domain]
        spec = SFTSpec(steps=c.specialise_steps, batch_size=lab.batch_size, lr=c.specialise_lr, seed=lab.seed + 3)
        train_sft(model, tok, domain, spec, desc=f"camopd {c.review_domain} specialist")
        save_model_folder(model, tok, specialist_dir, {"scenario": "camopd", "role": "specialist", "init": "camopd/general"})
    proxy = [e for e in train if e.domain in c.recovery_domains and get_domain(e.domain).is_easy(e)]
    save_prompts(proxy + [e for e in train if e.domain == c.review_domain], out / "train.jsonl")
    evals = load_prompts(root / "data" / "eval.jsonl")
    accuracy = {name: evaluate_folder(str(folder), evals, EvalConfig()) for name, folder in (("general", general_dir), ("specialist", specialist_dir))}
    (out / "manifest.json").write_text(json.dumps({"accuracy": accuracy, "recovery_domains": list(c.recovery_domains), "review_domain": c.review_domain}, indent=2))
    return out


def camopd_path(scenario_dir: Path, name: str) -> Path:
    """Path of artifact ``name`` (``camopd/<x>``) inside the built scenario folder."""
    sub = name.split("/", 1)[1]
    return scenario_dir / ("train.jsonl" if sub == "train" else sub)
