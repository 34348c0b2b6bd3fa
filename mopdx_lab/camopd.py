"""The CaMOPD lab scenario: a specialist whose domain format leaks onto a general task.

CaMOPD's claim needs recovery and preservation to pull the same weights in
opposite directions.  On lab v2 that is built from tasks over one alphabet:

* **general model** ``G``: Stage 1 sharpened on the recovery domains by RFT
  (its own verified samples, as the lab's teachers are made): the general
  teacher, same-origin and close, good at ``inc`` and ``rot``.  Cached in the
  lab folder under its own settings, so every scenario variant shares it.
* **specialist** ``S``: ``G`` fine-tuned on the review domain ``rotp`` (``rot``'s
  rule, blocks joined by ``|``: a domain *format*) with replay shares of the
  general domains (``lab.camopd.replay``): ``inc`` at 0.25 is kept, ``rot`` at
  0.01 is partly overwritten -- on some of ``rot``'s separators the specialist
  writes ``|``.  The two tasks differ only in one prompt token and the
  separator, so recovering ``rot``'s format and keeping ``rotp``'s pull the same
  separator weights in opposite directions.  (The first scenario, ``dec`` --
  the opposite rule -- left the two gradients orthogonal: the model kept the
  tasks apart by their tags; README, "CaMOPD".)  ``S`` is the starting student
  and, frozen, the domain teacher.
* **uneven correction demand**: recovery prompts are mostly ``inc`` (kept,
  nothing to correct) and a quarter ``rot``, of which a minority is wrong (much
  to correct), in the proportions of ``lab.camopd.mix`` -- which the scenario's
  runs also train with (``data.domain_ratios``), so MOPD and CaMOPD see the same data.
* **recovery prompts** (``lab.camopd.proxy``): by default ``all`` of each general
  domain's; or the paper's kind of proxy, another input distribution than ``G``'s --
  the easy part (``Domain.is_easy``) or the rest (``hard``) -- whose pre-flight did
  not pass (README, "CaMOPD"); and, with any of them, another *template*
  (``lab.camopd.proxy_template``, e.g. ``rot> 5281``).  Evaluation covers the whole
  domain in its own template: the general teacher's real distribution.

The build reports the specialist's per-token KL to the general teacher on each
recovery domain (``initial_kl``: the scenario's place in the papers' regime).
The **pre-flight check** (``mopdx_lab.camopd_preflight``) then runs mixed
MOPD updates on the scenario and measures the cosine between the recovery
and preservation gradients; the build reports it and says loudly when it is
not below ``lab.camopd.preflight_max_cos`` (the scenario is then not ready:
change the scenario, not the threshold).

Artifacts (``lab:camopd/general``, ``/specialist``, ``/train``, ``/eval``)
live under ``<lab>/camopd-<hash of lab.camopd>``, cached like the rest of the lab.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mopdx.data import Example, load_prompts, save_prompts
from mopdx_lab.artifacts import save_model_folder, settings_digest
from mopdx_lab.config import CAMOPD_ARTIFACTS, CAMOPD_PROXIES  # noqa: F401 - CAMOPD_ARTIFACTS re-exported; defined with the settings (light import)
from mopdx_lab.domains import domain_splits, get_domain
from mopdx_lab.rft import RFTSpec, rft
from mopdx.models import load_model, load_tokenizer
from mopdx.run.evaluation import evaluate_folder
from mopdx.sft import SFTSpec, train_sft


def review_splits(lab: DictConfig, train: list[Example], evals: list[Example]) -> tuple[list[Example], list[Example]]:
    """(train, eval) examples of the review domain (``domain_splits``: drawn here when the lab lacks it)."""
    return domain_splits(str(lab.camopd.review_domain), list(lab.domains), train, evals, int(lab.camopd.review_train), int(lab.n_eval), int(lab.seed))


def with_replay(domain_train: list[Example], general: list[Example], shares: dict[str, float], seed: int) -> list[Example]:
    """``domain_train`` plus, per general domain ``d``, examples of ``d`` making up ``shares[d]`` of the
    result (all of that domain's examples when there are fewer)."""
    rng, rest = random.Random(seed), 1.0 - sum(shares.values())
    out = list(domain_train)
    for d, share in sorted(shares.items()):
        pool = [e for e in general if e.domain == d]
        n = int(round(len(domain_train) * share / rest))
        out += rng.sample(pool, min(n, len(pool)))
    return out


def proxy_prompts(general: list[Example], proxy: str, template: str = "") -> list[Example]:
    """The recovery prompts: ``all`` of ``general``, its ``easy`` part (``Domain.is_easy``) or the rest
    (``hard``); each written in ``template`` (``{tag}``, ``{input}``: ``rot: 5281`` -> ``rot> 5281``)
    when one is given -- the same task in another template than the general teacher's."""
    if proxy not in CAMOPD_PROXIES:
        raise ValueError(f"proxy must be {', '.join(CAMOPD_PROXIES[:-1])} or {CAMOPD_PROXIES[-1]}, got {proxy!r}")
    chosen = [e for e in general if proxy == "all" or get_domain(e.domain).is_easy(e) == (proxy == "easy")]
    if not template:
        return chosen
    out = []
    for e in chosen:
        tag, sep, start = e.prompt.partition(": ")
        if not sep:
            raise ValueError(f"lab.camopd.proxy_template needs prompts written '<tag>: <input>', got {e.prompt!r}")
        out.append(Example(e.domain, template.format(tag=tag, input=start), e.answer))
    return out


LATER_KEYS = {"proxy_template": ""}  # added later: left out of the folder's key at these values


def scenario_dir(lab: DictConfig, root: Path) -> Path:
    """The scenario's folder inside the lab folder ``root``: keyed by its settings (``lab.camopd``),
    less those added later while at the value that builds what came before (recorded builds keep their folders)."""
    return root / f"camopd-{settings_digest(lab.camopd, later=LATER_KEYS, length=8)}"


def build_camopd(lab: DictConfig, root: Path, progress: bool = True) -> Path:
    """Build (or finish) the CaMOPD scenario inside the lab folder ``root``; every step is cached."""
    from mopdx_lab.build import build_scenario

    out = scenario_dir(lab, root)
    return build_scenario(lab, out, lambda: _build(lab, root, out, progress))


def _build(lab: DictConfig, root: Path, out: Path, progress: bool) -> None:
    from mopdx_lab.build import lab_eval

    c = lab.camopd
    out.mkdir(parents=True, exist_ok=True)
    train, lab_evals = load_prompts(root / "data" / "train.jsonl"), load_prompts(root / "data" / "eval.jsonl")
    review = get_domain(str(c.review_domain))
    # a general example the review domain could also have asked (same tag and inputs) would teach
    # the two teachers' contradicting answers to one prompt: left out of training and evaluation
    general_train = [e for e in train if e.domain in c.recovery_domains and not review.claims(e.prompt)]
    lab_evals = [e for e in lab_evals if e.domain not in c.recovery_domains or not review.claims(e.prompt)]
    review_train, review_eval = review_splits(lab, train, lab_evals)
    general_dir, specialist_dir = out / "general", out / "specialist"
    if not general_dir.is_dir():
        shutil.copytree(_general_model(lab, root, general_train), general_dir)
    if not specialist_dir.is_dir():
        shutil.copytree(_specialist_model(lab, root, general_dir, review_train, general_train), specialist_dir)
    proxy = proxy_prompts(general_train, str(c.proxy), str(c.get("proxy_template", "")))
    save_prompts(proxy + review_train, out / "train.jsonl")
    evals = [e for e in lab_evals if e.domain in c.recovery_domains] + review_eval
    save_prompts(evals, out / "eval.jsonl")
    accuracy = {name: evaluate_folder(str(folder), evals, lab_eval(lab)) for name, folder in (("general", general_dir), ("specialist", specialist_dir))}
    manifest = {"accuracy": accuracy, "recovery_domains": list(c.recovery_domains), "review_domain": c.review_domain,
                "mix": dict(c.mix), "proxy": c.proxy, "proxy_template": c.get("proxy_template", ""), "initial_kl": _recovery_kl(lab, general_dir, specialist_dir, evals)}
    if c.preflight_steps > 0:
        from mopdx_lab.camopd_preflight import preflight

        manifest["preflight"] = preflight(lab, out, progress=progress)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _recovery_kl(lab: DictConfig, general_dir: Path, specialist_dir: Path, evals: list[Example]) -> dict[str, float]:
    """Per-token KL student (the specialist) -> general teacher on each recovery domain, on the
    student's own samples of the eval prompts: the scenario's place in the papers' regime."""
    from mopdx_lab.regime import initial_kl

    tok, student, teacher = load_tokenizer(specialist_dir), load_model(specialist_dir), load_model(general_dir)
    return {d: round(initial_kl(student, teacher, tok, [e for e in evals if e.domain == d][:256], int(lab.max_new_tokens), seed=lab.seed), 4)
            for d in lab.camopd.recovery_domains}


GENERAL_KEYS = ("recovery_domains", "general_method", "general_steps", "general_lr", "general_prompts", "general_group")


def _general_model(lab: DictConfig, root: Path, general_train: list[Example]) -> Path:
    """The general model, cached in the lab folder under its own settings (``GENERAL_KEYS``): every
    scenario variant (review domain, replay shares, mix) starts from the same one, and a new
    variant costs a specialist, not another RFT run."""
    c = lab.camopd
    out = root / f"camopd_general-{settings_digest(OmegaConf.masked_copy(c, list(GENERAL_KEYS)), length=8)}"
    if out.is_dir():
        return out
    tok, model = load_tokenizer(root / "models" / "stage1"), load_model(root / "models" / "stage1")
    if c.general_method == "rft":
        spec = RFTSpec(rounds=1, prompts=c.general_prompts, group=c.general_group, steps=c.general_steps, lr=c.general_lr,
                       batch_size=lab.batch_size, max_new_tokens=int(lab.max_new_tokens), seed=lab.seed + 2)
        accepted = rft(model, tok, general_train, spec, desc="camopd general model (RFT)")
        info = {"method": "RFT (own verified samples)", "accepted": [round(a, 4) for a in accepted]}
    else:  # lab v1: SFT on the references of the recovery domains
        train_sft(model, tok, general_train, SFTSpec(steps=c.general_steps, batch_size=lab.batch_size, lr=c.general_lr, seed=lab.seed + 2),
                  desc="camopd general model (SFT)")
        info = {"method": "SFT (references)"}
    _save_whole(model, tok, out, {"scenario": "camopd", "role": "general", "init": "stage1", **info})
    return out


SPECIALIST_KEYS = (*GENERAL_KEYS, "review_domain", "review_train", "replay", "specialise_steps", "specialise_lr")


def _specialist_model(lab: DictConfig, root: Path, general_dir: Path, review_train: list[Example], general_train: list[Example]) -> Path:
    """The specialist, cached like the general model under the settings it depends on
    (``SPECIALIST_KEYS``): a variant that changes only the mix, the proxy or the pre-flight
    costs no training."""
    c = lab.camopd
    out = root / f"camopd_specialist-{settings_digest(OmegaConf.masked_copy(c, list(SPECIALIST_KEYS)), length=8)}"
    if out.is_dir():
        return out
    tok, model = load_tokenizer(general_dir), load_model(general_dir)
    data = with_replay(review_train, general_train, {d: float(v) for d, v in c.replay.items()}, seed=lab.seed + 3)
    spec = SFTSpec(steps=c.specialise_steps, batch_size=lab.batch_size, lr=c.specialise_lr, seed=lab.seed + 3)
    train_sft(model, tok, data, spec, desc=f"camopd {c.review_domain} specialist")
    _save_whole(model, tok, out, {"scenario": "camopd", "role": "specialist", "init": "camopd/general", "replay": dict(c.replay), "examples": len(data)})
    return out


def _save_whole(model: Any, tok: Any, out: Path, info: dict[str, Any]) -> None:
    """Save a model folder whole or not at all: an interrupted build trains it again."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_folder(model, tok, tmp, info)
    tmp.rename(out)


def camopd_path(scenario_dir: Path, name: str) -> Path:
    """Path of artifact ``name`` (``camopd/<x>``) inside the built scenario folder."""
    sub = name.split("/", 1)[1]
    return scenario_dir / (f"{sub}.jsonl" if sub in ("train", "eval") else sub)
