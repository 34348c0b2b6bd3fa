"""The lab pipeline: data -> tokenizer -> Stage 1 -> Stage 2 -> evaluate -> regime -> manifest.

Stage 1 is general SFT on a mixture of all domains: a clean phase until the
step rules are learned, then a phase on answers with slips in them, so the
generalist still errs when it samples (``mopdx_lab.stage1`` says why and how the
build stops on measured targets, ``mopdx_lab.targets``).  Stage 2 makes one specialist
per domain the way the papers make their teachers: Stage 1 trained with its
domain's verifier rewards.  The default (``lab.stage2_method=rft``) is
rejection-sampling fine-tuning on Stage 1's own verified samples (``lab.rft``;
``mopdx_lab.rft`` says why it, and not GRPO, is the default on a CPU);
``rl`` runs GRPO through the framework's own ``fit`` (the PG loss with
``loss.teacher_weight=0``).  Either way the specialist sharpens what Stage 1
can already do rather than learning something new, so each teacher stays
close to the student (same origin) -- the regime the build then checks
(``mopdx_lab.regime``).  ``sft`` (lab v1: SFT on the references) is kept for
comparison; it put teachers 4-7 nats from the student.

Every artifact is written to a temporary folder and renamed when complete,
so an interrupted build resumes at the first missing artifact.  The lab
folder is keyed by a hash of the lab config.  The build pins torch's thread
count (``lab.threads``), so one machine builds one lab per config whatever its
core count.  Another CPU still rounds otherwise, and a tiny model's training
amplifies that (issue 37), which is why the stages stop on measured targets
rather than step counts: another machine builds another lab, with the same
properties.

Run: ``python -m mopdx lab build`` (``--help`` for options).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from mopdx.config import EvalConfig
from mopdx.data import Example, load_prompts, save_prompts
from mopdx_lab.artifacts import atomic_dir, commit_dir, save_model_folder, settings_digest
from mopdx_lab.domains import get_domain, make_split
from mopdx_lab.model_factory import TinyModelSpec, build_tiny_qwen2
from mopdx_lab.regime import DomainRegime, RegimeBounds, initial_kl, report
from mopdx_lab.stage1 import train_stage1
from mopdx_lab.stage2 import rft_specialist
from mopdx_lab.targets import Check, missed, recheck
from mopdx_lab.tokenizer import build_tokenizer, save_tokenizer
from mopdx.models import load_model, load_tokenizer
from mopdx.run.evaluation import evaluate_folder
from mopdx.sft import SFTSpec, train_sft

# where labs live, the scenarios (keyed by their own folders), and whether a lab outside the regime may be used
NOT_IN_KEY = ("root", "camopd", "opcod", "panel", "xtok", "blocks", "allow_outside_regime")


def _key_drop(lab: DictConfig) -> tuple[str, ...]:
    """The open-loop build keys its folder without ``targets`` (which it does not read), so the labs built
    before issue 37 keep their folders under ``lab.targets.check_every=0``."""
    return NOT_IN_KEY if closed_loop(lab) else (*NOT_IN_KEY, "targets")


def lab_dir(lab: DictConfig) -> Path:
    """``<root>/<hash of the lab settings>``: one folder per distinct lab
    (scenarios are keyed separately: mopdx_lab/camopd.py, opcod.py)."""
    return Path(lab.root) / settings_digest(lab, drop=_key_drop(lab))


def threads_note(lab: DictConfig) -> str | None:
    """One line when a lab that differs from this one only in ``lab.threads`` is already built.

    Why: the thread count is part of the lab's key (it changes the floats), so ``lab.threads=1``
    on a command line starts a whole new lab from Stage 1 -- tens of minutes a user asking for
    fewer threads does not expect.  The note names the built lab and the setting to drop."""
    root = lab_dir(lab)
    if (root / "models" / "stage1").exists():
        return None  # resuming this lab's own build past Stage 1: the user has chosen it already
    drop = (*_key_drop(lab), "threads")
    want = settings_digest(lab, drop=drop)
    for other in sorted(Path(lab.root).glob("*/lab_config.yaml")):
        if other.parent == root or not (other.parent / "manifest.json").is_file():
            continue
        built = OmegaConf.load(other)
        if settings_digest(built, drop=drop) == want:
            return (f"note: lab {other.parent.name} is built with the same settings but lab.threads={built.get('threads')}; "
                    f"lab.threads={lab.threads} is part of the lab's key, so this builds a new lab from Stage 1. "
                    f"Leave lab.threads out to use {other.parent.name} (Ctrl-C loses nothing).")
    return None


def closed_loop(lab: DictConfig) -> bool:
    """True for the closed-loop build (``lab.targets``); False for the open-loop one of before issue 37."""
    return int(lab.targets.check_every) > 0


def _build_data(lab: DictConfig, out: Path) -> None:
    """Per domain: the eval split, then (closed loop) the check split the stages measure on, then the
    training split -- each excluding the ones before, so no check or eval prompt is trained on, and
    the build never stops on the prompts the regime and the runs are scored on."""
    train: list[Example] = []
    evals: list[Example] = []
    checks: list[Example] = []
    for name in lab.domains:
        dom = get_domain(name)
        held_out = make_split(dom, lab.n_eval, seed=lab.seed + 10_000)
        evals += held_out
        seen = {e.prompt for e in held_out}
        if closed_loop(lab):
            check = make_split(dom, int(lab.targets.check_prompts), seed=lab.seed + 20_000, exclude=seen)
            checks += check
            seen |= {e.prompt for e in check}
        train += make_split(dom, lab.n_train, seed=lab.seed, exclude=seen)
    tmp = atomic_dir(out)
    save_prompts(train, tmp / "train.jsonl")
    save_prompts(evals, tmp / "eval.jsonl")
    if checks:
        save_prompts(checks, tmp / "check.jsonl")
    commit_dir(tmp, out)


def _check(lab: DictConfig, root: Path) -> Check | None:
    return Check.of(lab, load_prompts(root / "data" / "check.jsonl")) if closed_loop(lab) else None


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
        check_built(lab, json.loads((root / "manifest.json").read_text()))
        return root
    if note := threads_note(lab):
        print(note, flush=True)
    stages = ["data", "tokenizer", "stage1", *[f"teacher/{d}" for d in lab.domains], "evaluate", "regime"]
    bar = tqdm(stages, desc="lab", dynamic_ncols=True, **({} if progress else {"disable": True}))
    timings: dict[str, float] = {}
    with pinned_threads(lab):
        for stage in bar:
            bar.set_postfix_str(stage)
            t0 = time.perf_counter()
            _run_stage(stage, lab, root, progress)
            timings[stage] = round(time.perf_counter() - t0, 2)
    manifest = json.loads((root / "accuracy.json").read_text())
    manifest["regime"] = json.loads((root / "regime.json").read_text())
    manifest["timings_s"] = timings
    manifest["versions"] = package_versions()
    manifest["targets"] = {name: _targets_of(root / "models" / name) for name in manifest["artifacts"]}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    check_built(lab, manifest)
    return root


def _targets_of(folder: Path) -> dict[str, Any] | None:
    """What an artifact's stage measured when it stopped (its ``lab_info.json`` without the check history)."""
    path = folder / "lab_info.json"
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    keep = ("steps", "noisy_steps", "greedy", "sampled", "noise", "rounds", "targets")
    out = {k: info[k] for k in keep if k in info}
    if isinstance(out.get("targets"), dict):
        out["targets"] = {k: v for k, v in out["targets"].items() if k != "rounds"} | {"checks": out["targets"].get("rounds")}
    return out


def check_built(lab: DictConfig, manifest: dict[str, Any]) -> None:
    """A finished lab outside the papers' regime stops here, every time it is asked for, with one line
    (``lab info`` still shows it; ``lab.allow_outside_regime=true`` uses it anyway)."""
    regime = manifest.get("regime") or {}
    if regime.get("in_regime", True):
        return
    problems = "; ".join(f"{d}: {', '.join(r['problems'])}" for d, r in regime["domains"].items() if r["problems"])
    missed(lab, f"the built lab is outside the papers' regime ({problems}; `mopdx lab info` shows the table); "
                "rebuild it with other lab settings")


def package_versions() -> dict[str, str]:
    """The versions that shape a build's floats, recorded in the manifest (not in the hash).

    Why: the lab's hash covers its settings, not the libraries pip resolves.  Two fresh
    clones of the same commit on one day build the same lab to the last digit, but the
    README's lab of an earlier day, with the same hash and unchanged build code, scored
    otherwise (issue 16's rot KL 0.091 vs 0.434 was likely the same drift).  With the
    versions on record, such a difference can be traced.  They are the finishing
    process's: a build resumed under other versions records the last ones."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


@contextmanager
def pinned_threads(lab: DictConfig) -> Iterator[None]:
    """torch's thread count set to ``lab.threads`` while a lab artifact is built (``LabConfig.threads``
    says why: one lab per config on every machine), restored after."""
    threads = torch.get_num_threads()
    if lab.threads:
        torch.set_num_threads(int(lab.threads))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def lab_eval(lab: DictConfig) -> EvalConfig:
    """How the build scores its models: the framework's default sampled evaluation (avg@k at
    T = 1), long enough for the lab's answers -- what configs/base.yaml runs with."""
    return EvalConfig(max_new_tokens=int(lab.max_new_tokens))


def _run_stage(stage: str, lab: DictConfig, root: Path, progress: bool = True) -> None:
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
            info = train_stage1(lab, model, tok, train, _check(lab, root))
            _keep(lab, model, tok, out, info)
        recheck(lab, json.loads((out / "lab_info.json").read_text()))
    elif stage.startswith("teacher/"):
        domain = stage.split("/", 1)[1]
        out = models / "teacher" / domain
        if not out.is_dir():
            if lab.stage2_method == "rl":
                _rl_specialist(lab, root, domain, out, progress)
            elif lab.stage2_method == "rft":
                model, tok, info = rft_specialist(lab, root, domain, _check(lab, root))
                _keep(lab, model, tok, out, info)
            else:  # "sft": lab v1's specialists, SFT on the domain's reference answers (far from Stage 1)
                tok = load_tokenizer(models / "stage1")
                model = load_model(models / "stage1")
                train = [e for e in load_prompts(data / "train.jsonl") if e.domain == domain]
                spec = SFTSpec(steps=lab.stage2_steps, batch_size=lab.batch_size, lr=lab.stage2_lr, seed=lab.seed + 1)
                train_sft(model, tok, train, spec, desc=f"stage2 {domain} specialist (SFT)")
                save_model_folder(model, tok, out, {"stage": 2, "domain": domain, "init": "stage1", "method": "SFT (references)", "steps": lab.stage2_steps})
        recheck(lab, json.loads((out / "lab_info.json").read_text()))
    elif stage == "evaluate":  # reached only while the manifest is missing, so always re-run
        evals = load_prompts(data / "eval.jsonl")
        accuracy: dict[str, dict[str, float]] = {}
        for name in ["stage1", *[f"teacher/{d}" for d in lab.domains]]:
            accuracy[name] = evaluate_folder(str(models / name), evals, lab_eval(lab))
        artifacts = {name: str(models / name) for name in accuracy}
        (root / "accuracy.json").write_text(json.dumps({"artifacts": artifacts, "accuracy": accuracy, "eval": asdict(lab_eval(lab))}, indent=2))
    elif stage == "regime":
        (root / "regime.json").write_text(json.dumps(check_lab_regime(lab, root), indent=2))


def _keep(lab: DictConfig, model: Any, tok: Any, out: Path, info: dict[str, Any]) -> None:
    """Write a trained artifact -- under its own name when it reached its target (or the build may go
    on regardless), else as ``<name>.missed`` for inspection, so a rerun trains it again rather than
    building on a model that missed; ``recheck`` then stops the build with the missed line."""
    missed_line = info["targets"]["missed"]
    if missed_line and not lab.allow_outside_regime:
        save_model_folder(model, tok, out.with_name(out.name + ".missed"), info)
        missed(lab, missed_line)
    save_model_folder(model, tok, out, info)


def _rl_specialist(lab: DictConfig, root: Path, domain: str, out: Path, progress: bool) -> None:
    """Stage 2 for ``domain``: GRPO from Stage 1 on the domain's prompts, an ordinary ``fit``
    run under ``<lab>/rl/<domain>`` (kept for inspection), whose final model becomes the teacher."""
    from mopdx.config import load_config
    from mopdx.run.fit import fit

    work = root / "rl"
    work.mkdir(exist_ok=True)
    for split in ("train", "eval"):
        subset = [e for e in load_prompts(root / "data" / f"{split}.jsonl") if e.domain == domain]
        save_prompts(subset, work / f"{domain}_{split}.jsonl")
    shutil.rmtree(work / domain, ignore_errors=True)  # an interrupted RL run starts over (minutes)
    cfg = load_config("mopd", overrides=[
        f"model.student={root / 'models' / 'stage1'}", f"data.train={work / f'{domain}_train.jsonl'}", f"data.eval={work / f'{domain}_eval.jsonl'}",
        "loss.kind=pg", "loss.teacher_weight=0", "loss.reward_weight=1", f"rollout.n={lab.stage2_group}", f"data.batch_size={lab.stage2_prompts}",
        f"rollout.max_new_tokens={lab.max_new_tokens}", f"eval.max_new_tokens={lab.max_new_tokens}", "eval.samples=2",
        f"train.max_steps={lab.stage2_steps}", "train.eval_every=0", "train.ckpt_every=0", f"optim.lr={lab.stage2_lr}",
        "optim.schedule=constant", "optim.warmup_steps=10", f"train.seed={lab.seed + 1}", f"run.out_dir={work}", f"run.name={domain}",
    ])
    with open_dict(cfg):
        cfg.model.teachers = {}  # pure RL: no teacher is read (the lab's own teachers do not exist yet)
        cfg.data.domain_ratios = {}
    summary = fit(cfg, progress=progress)
    tmp = atomic_dir(out)
    shutil.copytree(Path(summary["run_dir"]) / "final", tmp, dirs_exist_ok=True)
    info = {"stage": 2, "domain": domain, "init": "stage1", "method": "GRPO (verifier rewards)", "steps": lab.stage2_steps,
            "train_accuracy": summary["final"]}
    (tmp / "lab_info.json").write_text(json.dumps(info, indent=2))
    commit_dir(tmp, out)


def check_lab_regime(lab: DictConfig, root: Path) -> dict[str, Any]:
    """Initial KL, gaps and student accuracy per domain against ``lab.regime`` (loud when outside)."""
    accuracy = json.loads((root / "accuracy.json").read_text())["accuracy"]
    evals = load_prompts(root / "data" / "eval.jsonl")
    student = load_model(root / "models" / "stage1")
    tok = load_tokenizer(root / "models" / "stage1")
    rows = []
    for d in lab.domains:
        teacher = load_model(root / "models" / "teacher" / d)
        kl = initial_kl(student, teacher, tok, [e for e in evals if e.domain == d], int(lab.max_new_tokens), seed=lab.seed)
        rows.append(DomainRegime(d, kl, accuracy["stage1"][d], accuracy[f"teacher/{d}"][d]))
    return report(rows, RegimeBounds(**OmegaConf.to_container(lab.regime, resolve=True)))  # type: ignore[arg-type]


def _load_bare_tokenizer(path: Path) -> Any:
    """A tokenizer folder without a model config (the lab's shared tokenizer)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return tok


def read_manifest(lab: DictConfig) -> dict[str, Any]:
    path = lab_dir(lab) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def build_scenario(lab: DictConfig, out: Path, make: Callable[[], None]) -> Path:
    """A scenario folder ``out`` inside a lab folder, made by ``make()`` (threads pinned) unless its
    ``manifest.json`` is there; a target the manifest records as missed stops here with its line
    (``lab.allow_outside_regime=true``: a warning) whether it was just built or read back."""
    if not (out / "manifest.json").is_file():
        with pinned_threads(lab):
            make()
    for line in json.loads((out / "manifest.json").read_text()).get("missed", []):
        missed(lab, line)
    return out
