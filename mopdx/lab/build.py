"""The lab pipeline: data -> tokenizer -> Stage 1 -> Stage 2 -> manifest.

Stage 1 is general SFT on a mixture of all domains (kept short on purpose,
so the generalist is clearly weaker than specialists); Stage 2 trains one
specialist per domain from the Stage-1 checkpoint -- the "same-origin"
teachers MOPD expects.  Every artifact is written to a temporary folder and
renamed when complete, so an interrupted build resumes at the first missing
artifact.  The lab folder is keyed by a hash of the lab config: changing a
lab setting builds a new lab instead of reusing a stale one.

Run: ``python -m mopdx lab build`` (``--help`` for options).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mopdx.config import EvalConfig
from mopdx.data import Example, load_prompts, save_prompts
from mopdx.lab.artifacts import atomic_dir, commit_dir, save_model_folder, settings_digest
from mopdx.lab.domains import get_domain, make_split
from mopdx.lab.model_factory import TinyModelSpec, build_tiny_qwen2
from mopdx.lab.tokenizer import build_tokenizer, save_tokenizer
from mopdx.models import load_model, load_tokenizer
from mopdx.run.evaluation import evaluate_folder
from mopdx.sft import SFTSpec, train_sft


def lab_dir(lab: DictConfig) -> Path:
    """``<root>/<hash of the lab settings>``: one folder per distinct lab
    (scenarios are keyed separately: mopdx/lab/camopd.py, opcod.py)."""
    return Path(lab.root) / settings_digest(lab, drop=("root", "camopd", "opcod"))


def _build_data(lab: DictConfig, out: Path) -> None:
    train: list[Example] = []
    evals: list[Example] = []
    for name in lab.domains:
        dom = get_domain(name)
        held_out = make_split(dom, lab.n_eval, seed=lab.seed + 10_000)
        evals += held_out
        train += make_split(dom, lab.n_train, seed=lab.seed, exclude={e.prompt for e in held_out})
    tmp = atomic_dir(out)
    save_prompts(train, tmp / "train.jsonl")
    save_prompts(evals, tmp / "eval.jsonl")
    commit_dir(tmp, out)


def _spec(lab: DictConfig) -> TinyModelSpec:
    return TinyModelSpec(**OmegaConf.to_container(lab.model, resolve=True))  # type: ignore[arg-type]


def build_lab(lab: DictConfig, force: bool = False, progress: bool = True) -> Path:
    """Build (or finish building) the lab described by ``lab``; returns its folder."""
    for name in lab.domains:
        get_domain(name)  # fail early on an unknown domain name
    root = lab_dir(lab)
    if force:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "lab_config.yaml").write_text(OmegaConf.to_yaml(lab))
    if (root / "manifest.json").is_file():
        return root
    stages = ["data", "tokenizer", "stage1", *[f"teacher/{d}" for d in lab.domains], "evaluate"]
    bar = tqdm(stages, desc="lab", dynamic_ncols=True, **({} if progress else {"disable": True}))
    timings: dict[str, float] = {}
    for stage in bar:
        bar.set_postfix_str(stage)
        t0 = time.perf_counter()
        _run_stage(stage, lab, root)
        timings[stage] = round(time.perf_counter() - t0, 2)
    manifest = json.loads((root / "accuracy.json").read_text())
    manifest["timings_s"] = timings
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def _run_stage(stage: str, lab: DictConfig, root: Path) -> None:
    data, tok_dir, models = root / "data", root / "tokenizer", root / "models"
    if stage == "data":
        if not data.is_dir():
            _build_data(lab, data)
    elif stage == "tokenizer":
        if not tok_dir.is_dir():
            corpus = [f"{e.prompt} {e.answer}" for e in load_prompts(data / "train.jsonl")]
            tmp = atomic_dir(tok_dir)
            save_tokenizer(build_tokenizer(corpus, lab.vocab_size), tmp)
            commit_dir(tmp, tok_dir)
    elif stage == "stage1":
        out = models / "stage1"
        if not out.is_dir():
            tok = _load_bare_tokenizer(tok_dir)
            model = build_tiny_qwen2(_spec(lab), tok, seed=lab.seed)
            train = load_prompts(data / "train.jsonl")
            if lab.stage1_easy_only:
                train = [e for e in train if get_domain(e.domain).is_easy(e)]
            spec = SFTSpec(steps=lab.stage1_steps, batch_size=lab.batch_size, lr=lab.stage1_lr, seed=lab.seed)
            train_sft(model, tok, train, spec, desc="stage1 general SFT")
            save_model_folder(model, tok, out, {"stage": 1, "domains": list(lab.domains), "steps": lab.stage1_steps})
    elif stage.startswith("teacher/"):
        domain = stage.split("/", 1)[1]
        out = models / "teacher" / domain
        if not out.is_dir():
            tok = load_tokenizer(models / "stage1")
            model = load_model(models / "stage1")
            train = [e for e in load_prompts(data / "train.jsonl") if e.domain == domain]
            spec = SFTSpec(steps=lab.stage2_steps, batch_size=lab.batch_size, lr=lab.stage2_lr, seed=lab.seed + 1)
            train_sft(model, tok, train, spec, desc=f"stage2 {domain} specialist")
            save_model_folder(model, tok, out, {"stage": 2, "domain": domain, "init": "stage1", "steps": lab.stage2_steps})
    elif stage == "evaluate":  # reached only while the manifest is missing, so always re-run
        evals = load_prompts(data / "eval.jsonl")
        accuracy: dict[str, dict[str, float]] = {}
        for name in ["stage1", *[f"teacher/{d}" for d in lab.domains]]:
            accuracy[name] = evaluate_folder(str(models / name), evals, EvalConfig())
        artifacts = {name: str(models / name) for name in accuracy}
        (root / "accuracy.json").write_text(json.dumps({"artifacts": artifacts, "accuracy": accuracy}, indent=2))


def _load_bare_tokenizer(path: Path) -> Any:
    """A tokenizer folder without a model config (the lab's shared tokenizer)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return tok


def read_manifest(lab: DictConfig) -> dict[str, Any]:
    path = lab_dir(lab) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}
