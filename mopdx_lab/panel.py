"""The lab's second teacher per domain, for panels of teachers: a *broad* specialist beside the sharp one.

Why: a panel (``model.teachers.<d>: {name: folder, ...}``, ``mopdx.backends.panel``) is
worth studying only where its teachers differ in a way the combination rules can tell
apart.  The lab's teacher of a domain (``teacher/<d>``) is *sharp*: RFT from Stage 1 until
its sampled accuracy reaches ``lab.targets.specialist`` (0.95).  The broad one is made the
same way -- Stage 1 trained by RFT on its own verified samples of the domain -- but stopped
once its sampled accuracy on the check prompts reaches ``lab.panel.broad_accuracy`` (checked
every ``lab.panel.check_every`` SFT steps, at a lower learning rate so the stop lands near
it): the same origin and the same kind of teacher, less far from the student.  Per token the
two disagree where the sharp one has committed and the broad one still spreads its mass,
so "closest to the student" and "most confident" pick differently.

The manifest records each broad teacher's accuracy on the eval prompts and the student's
initial per-token KL to the broad and to the sharp teacher (the regime's estimator).
Artifacts (``lab:panel/broad_<d>``) live under ``<lab>/panel-<hash of lab.panel>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mopdx.data import load_prompts
from mopdx.models import load_model, load_tokenizer
from mopdx.run.evaluation import evaluate_folder
from mopdx_lab.artifacts import save_model_folder, settings_digest
from mopdx_lab.regime import initial_kl
from mopdx_lab.rft import RFTSpec, rft
from mopdx_lab.targets import Check, check_prompts


def panel_dir(lab: DictConfig, root: Path) -> Path:
    return root / f"panel-{settings_digest(lab.panel, length=8)}"


def build_panel(lab: DictConfig, root: Path, progress: bool = True) -> Path:
    """Build (or finish) one broad teacher per lab domain inside the lab folder ``root``."""
    from mopdx_lab.build import build_scenario

    out = panel_dir(lab, root)
    return build_scenario(lab, out, lambda: _build(lab, root, out))


def _build(lab: DictConfig, root: Path, out: Path) -> None:
    from mopdx_lab.build import lab_eval

    out.mkdir(parents=True, exist_ok=True)
    evals = load_prompts(root / "data" / "eval.jsonl")
    student_dir = root / "models" / "stage1"
    tok, student = load_tokenizer(student_dir), load_model(student_dir)
    manifest: dict[str, Any] = {"teachers": {}, "missed": []}
    for d in lab.domains:
        folder = out / f"broad_{d}"
        if not folder.is_dir():
            _broad(lab, root, d, folder)
        info = json.loads((folder / "lab_info.json").read_text())
        if line := info["targets"]["missed"]:
            manifest["missed"].append(line)
        mine = [e for e in evals if e.domain == d]
        sharp = root / "models" / "teacher" / d
        kl = {name: round(initial_kl(student, load_model(f), tok, mine[:256], int(lab.max_new_tokens), seed=int(lab.seed)), 4)
              for name, f in (("broad", folder), ("sharp", sharp))}
        manifest["teachers"][d] = {"steps": info["steps"], "initial_kl": kl,
                                   "accuracy": {name: evaluate_folder(str(f), mine, lab_eval(lab))[d] for name, f in (("broad", folder), ("sharp", sharp))}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _broad(lab: DictConfig, root: Path, domain: str, out: Path) -> None:
    p = lab.panel
    student_dir = root / "models" / "stage1"
    tok, model = load_tokenizer(student_dir), load_model(student_dir)
    check = Check.of(lab, [e for e in check_prompts(root) if e.domain == domain])
    train = [e for e in load_prompts(root / "data" / "train.jsonl") if e.domain == domain]
    target = float(p.broad_accuracy)
    checks: list[dict[str, Any]] = []

    def within_round(step: int) -> bool:
        acc = check.accuracy(model, tok)[domain]
        checks.append({"step": step, "sampled": acc})
        return acc >= target

    spec = RFTSpec(rounds=1, prompts=int(p.prompts), group=int(p.group), steps=int(p.steps), lr=float(p.lr), batch_size=int(lab.batch_size),
                   max_new_tokens=int(lab.max_new_tokens), seed=int(lab.seed) + 5)
    rft(model, tok, train, spec, desc=f"panel broad_{domain} (RFT to sampled accuracy >= {target:g})", within_round=within_round, check_every=int(p.check_every))
    if not checks:  # no verified sample to train on (a Stage 1 that never answers right): measured as it is
        within_round(0)
    reached = checks[-1]["sampled"] >= target
    line = None if reached else (
        f"panel/broad_{domain} after {checks[-1]['step']} RFT steps (lab.panel.steps={p.steps}): sampled accuracy {checks[-1]['sampled']:.3f} "
        f"< lab.panel.broad_accuracy={target:g} on the check prompts; raise lab.panel.steps or lab.panel.lr")
    save_model_folder(model, tok, out, {"scenario": "panel", "role": "broad", "domain": domain, "init": "stage1",
                                        "method": "RFT (own verified samples), stopped on accuracy", "steps": checks[-1]["step"],
                                        "checks": checks, "targets": {"target": target, "missed": line}})
