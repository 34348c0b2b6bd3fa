"""The OPCoD lab scenario: two peers, each specialised on one domain.

OPCoD needs three abilities that real LLMs bring and a 1M-parameter model
does not, so the lab teaches them explicitly, in the formats of
``lab.opcod.*_template`` (which ``mopdx_lab/configs/strategy/opcod.yaml`` hands to the
codistill loop):

* **using a privileged context** -- ``{prompt}`` + a solution and/or worked
  steps -> the answer (the teacher side of self-distillation);
* **writing feedback** -- ``hint {prompt}`` -> worked steps that stop
  short of the answer (``Domain.worked_steps``, anchored);
* the tasks themselves.

``base``: Stage 1 continued on the plain *easy* tasks, the context format on
all tasks, and feedback on easy tasks. ``peer_<d>``: ``base`` specialised on
domain ``d`` (plain, context and feedback on all of ``d``), so it is strong on
``d``, and weaker on the other domain. Artifacts: ``lab:opcod/peer_<d>``,
``lab:opcod/base``, ``lab:opcod/train``, ``lab:opcod/eval`` under ``<lab>/opcod-<hash>``, cached
like the rest of the lab.  The build ends with the pre-flight check
(``mopdx_lab.opcod_preflight``: does reading the own solution / the peer's
feedback make each peer more accurate?), recorded in the manifest.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mopdx.codistill.privileged import Templates, anchor_feedback, feedback_prompt, teacher_context
from mopdx.data import Example, load_prompts, save_prompts
from mopdx.errors import ConfigError
from mopdx_lab.artifacts import save_model_folder, settings_digest
from mopdx_lab.build import lab_eval
from mopdx_lab.domains import domain_splits, get_domain
from mopdx.models import load_model, load_tokenizer
from mopdx.run.evaluation import evaluate_folder
from mopdx.sft import SFTSpec, train_sft

log = logging.getLogger("mopdx")


def anchored_steps(example: Example) -> str:
    """The domain's worked steps with any answer leak removed (what a good peer writes)."""
    domain = get_domain(example.domain)
    return anchor_feedback(domain.worked_steps(example), example.answer, domain.leaks)[0]


def context_example(example: Example, rng: random.Random, templates: Templates) -> Example:
    """``example`` rewritten with a privileged context: solution, feedback, or both (1/3 each).

    Never neither: with the lab's suffix-free template that would be the plain
    prompt, i.e. training the full task, and the base would not stay weak on hard cases.
    """
    case = rng.randrange(3)
    with_solution, with_feedback = case != 1, case != 0
    prompt = teacher_context(example.prompt, example.answer if with_solution else None, anchored_steps(example) if with_feedback else None, templates)
    return Example(example.domain, prompt, example.answer)


def feedback_example(example: Example, templates: Templates) -> Example:
    """``feedback {prompt}`` -> anchored worked steps (with the answer as ``{solution}`` where the template asks for it)."""
    return Example(example.domain, feedback_prompt(example.prompt, templates, example.answer), anchored_steps(example) or "none")


def lab_templates(c: DictConfig) -> Templates:
    """The scenario's context / feedback formats (``lab.opcod.*_template``)."""
    return Templates(c.teacher_template, c.solution_template, c.feedback_template, c.feedback_prompt_template)


def scenario_mix(examples: list[Example], templates: Templates, plain_easy_only: bool, feedback_easy_only: bool, seed: int) -> list[Example]:
    """Plain, context and feedback examples in equal parts."""
    rng = random.Random(seed)
    easy = [e for e in examples if get_domain(e.domain).is_easy(e)]
    plain = easy if plain_easy_only else examples
    fb = easy if feedback_easy_only else examples
    return [*plain, *(context_example(e, rng, templates) for e in examples), *(feedback_example(e, templates) for e in fb)]


def build_opcod(lab: DictConfig, root: Path) -> Path:
    """Build (or finish) the OPCoD scenario inside the lab folder ``root``."""
    c = lab.opcod
    if len(c.domains) != 2 or len(set(c.domains)) != 2:
        raise ConfigError(f"lab.opcod.domains must name two different domains; got {list(c.domains)}")
    out = scenario_dir(lab, root)
    if (out / "manifest.json").is_file():
        manifest = json.loads((out / "manifest.json").read_text())
        if not (out / "eval.jsonl").is_file():  # built before lab:opcod/eval existed
            save_prompts(scenario_splits(lab, root)[1], out / "eval.jsonl")
        if c.preflight_prompts > 0 and not preflight_current(manifest.get("preflight"), c):
            manifest["preflight"] = run_preflight(lab, root, out)
            (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return out
    train, evals = scenario_splits(lab, root)
    base_dir = out / "base"
    if not base_dir.is_dir():
        shutil.copytree(_base_model(lab, root, train), base_dir)
    for i, domain in enumerate(c.domains):
        seed = lab.seed + 5 + i + 1000 * int(c.specialise_seed)
        peer_dir = out / f"peer_{domain}"
        if not peer_dir.is_dir():
            tok, model = load_tokenizer(base_dir), load_model(base_dir)
            own = [e for e in train if e.domain == domain]
            others = [e for e in train if e.domain != domain]
            other = next(d for d in c.domains if d != domain)
            mix = scenario_mix(own, lab_templates(c), plain_easy_only=False, feedback_easy_only=False, seed=seed)
            mix += replay_examples(others, len(mix), float(c.specialise_replay), seed=seed)
            mix += read_other_examples(others, len(mix), float(c.specialise_read_other), lab_templates(c), seed=seed)
            mix += wrong_hint_examples(own, other, len(mix), float(c.specialise_wrong_hints), lab_templates(c), seed=seed)
            mix += write_other_examples(others, len(mix), float(c.specialise_write_other), lab_templates(c), seed=seed)
            mix += leaky_hint_examples(own, len(mix), float(c.specialise_leaky_hints), lab_templates(c), seed=seed)
            spec = SFTSpec(steps=c.specialise_steps, batch_size=lab.batch_size, lr=c.specialise_lr, seed=seed)
            train_sft(model, tok, mix, spec, desc=f"opcod {domain} peer")
            save_model_folder(model, tok, peer_dir, {"scenario": "opcod", "role": "peer", "strong_domain": domain, "init": "opcod/base"})
    save_prompts(train, out / "train.jsonl")
    save_prompts(evals, out / "eval.jsonl")
    # the lab's own decoding and answer length (EvalConfig()'s 32 tokens cut lab v2's 49-token traces: every model read 0)
    accuracy = {name: evaluate_folder(str(out / name), evals, lab_eval(lab)) for name in ["base", *(f"peer_{d}" for d in c.domains)]}
    manifest = {"accuracy": accuracy, "domains": list(c.domains)}
    if c.preflight_prompts > 0:
        manifest["preflight"] = run_preflight(lab, root, out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def scenario_splits(lab: DictConfig, root: Path) -> tuple[list[Example], list[Example]]:
    """(train, eval) examples of the two domains.  Two lab domains: the lab's splits, in the lab's
    order (the data every lab v1 scenario was built from).  A domain the lab lacks is drawn here
    (``domain_splits``), and the two are then listed domain after domain, in ``lab.opcod.domains``'
    order (the data the lab v2 scenario's recorded builds used)."""
    domains = list(lab.opcod.domains)
    train, evals = load_prompts(root / "data" / "train.jsonl"), load_prompts(root / "data" / "eval.jsonl")
    if all(d in lab.domains for d in domains):
        return [e for e in train if e.domain in domains], [e for e in evals if e.domain in domains]
    parts = [domain_splits(d, list(lab.domains), train, evals, int(lab.n_train), int(lab.n_eval), int(lab.seed)) for d in domains]
    return [e for t, _ in parts for e in t], [e for _, v in parts for e in v]


def replay_examples(others: list[Example], own: int, share: float, seed: int) -> list[Example]:
    """Plain examples of the other domains, so many that they are ``share`` of a mix with
    ``own`` examples of the peer's own (fewer if there are not enough)."""
    if share <= 0 or not others:
        return []
    n = min(len(others), round(own * share / (1 - share)))
    return random.Random(seed).sample(others, n)


def read_other_examples(others: list[Example], own: int, share: float, templates: Templates, seed: int) -> list[Example]:
    """Context examples (solution, feedback or both) of the other domain, ``share`` of the mix.

    Why: a peer specialised on its own domain only ever read contexts that agree with
    what it would write anyway, so it learns to ignore them, and on its weak domain
    it wrote its own rule over the other peer's feedback (lab v2, ``incrot`` / ``rot``:
    0.11 with feedback against 0.01 plain).  OPCoD presumes peers that read a hint
    where they need one; these examples teach exactly that, and no plain example of
    the other domain, so the plain peer stays weak there."""
    if share <= 0 or not others:
        return []
    rng = random.Random(seed + 1)
    picked = replay_examples(others, own, share, seed + 1)
    return [context_example(e, rng, templates) for e in picked]


def write_other_examples(others: list[Example], count: int, share: float, templates: Templates, seed: int) -> list[Example]:
    """Hint-writing examples of the other domain (``feedback_example``), ``share`` of a mix with ``count``.

    Why: the pre-flight's ``fb_right`` showed a peer's gated hint on its weak domain wrong
    in up to half the prompts where *all* its rollouts passed: hints were taught on its
    own domain only, so the hint followed its own rule while its answers did not.  The
    gate trusts a hint because the rollouts pass; this keeps the two in step."""
    return [feedback_example(e, templates) for e in replay_examples(others, count, share, seed + 3)]


def leaky_hint_examples(own: list[Example], count: int, share: float, templates: Templates, seed: int) -> list[Example]:
    """Hint-writing examples of the peer's own domain whose hint is the *whole answer*, ``share`` of
    a mix with ``count`` examples.

    Why: every other hint the lab teaches is anchored, so its givers never leak (leak rate 0.000
    in all 15 runs on the ready build), and the anchoring-off control had nothing to act on.  A
    giver taught this writes the answer as its hint on some prompts, as a careless tutor does; the
    run then needs ``codistill.feedback_max_tokens`` long enough for a whole answer."""
    return [Example(e.domain, feedback_prompt(e.prompt, templates, e.answer), e.answer) for e in replay_examples(own, count, share, seed + 4)]


def wrong_hint(example: Example, other: str) -> str:
    """The hint a peer of domain ``other`` gets wrong on ``example``: ``other``'s worked steps on
    the same start, anchored against ``example``'s answer ("" when the two rules agree there)."""
    steps = get_domain(other).worked_steps(example)  # a step trace's steps read only the start of the prompt
    wrong = anchor_feedback(steps, example.answer, get_domain(example.domain).leaks)[0]
    return "" if wrong.split() == anchored_steps(example).split() else wrong


def wrong_hint_examples(own: list[Example], other: str, count: int, share: float, templates: Templates, seed: int) -> list[Example]:
    """The peer's own domain read with a wrong hint (``wrong_hint``) and answered by its own rule,
    ``share`` of a mix with ``count`` examples.

    Why: the pre-flight split the other peer's gated feedback on a peer's strong domain into
    right and wrong.  The peers mostly followed a wrong hint (lab v2, ``incrot`` / ``rot``, 3
    builds: 0.00-0.25 with it against 0.50-1.00 plain on those prompts in 4 of 6 peers), since
    every hint they had read was right.  A peer that knows a domain judges a hint against what it knows; this teaches that
    on the strong domain only -- on the weak one the hint is still what it lacks."""
    if share <= 0 or not own:
        return []
    out = []
    for e in replay_examples(own, count, share, seed + 2):
        hint = wrong_hint(e, other)
        if hint:
            out.append(Example(e.domain, teacher_context(e.prompt, None, hint, templates), e.answer))
    return out


BASE_KEYS = ("domains", "base_steps", "base_lr", "teacher_template", "solution_template", "feedback_template", "feedback_prompt_template")


def base_cache_dir(lab: DictConfig, root: Path) -> Path:
    """Where the base of these settings is cached (``BASE_KEYS`` only)."""
    return root / f"opcod_base-{settings_digest(OmegaConf.masked_copy(lab.opcod, list(BASE_KEYS)), length=8)}"


def _base_model(lab: DictConfig, root: Path, train: list[Example]) -> Path:
    """The base (Stage 1 taught the formats), cached in the lab folder under its own settings
    (``BASE_KEYS``): a variant that changes only how the peers specialise costs no base run."""
    c = lab.opcod
    cached = base_cache_dir(lab, root)
    if not cached.is_dir():
        tok, model = load_tokenizer(root / "models" / "stage1"), load_model(root / "models" / "stage1")
        mix = scenario_mix(train, lab_templates(c), plain_easy_only=True, feedback_easy_only=True, seed=lab.seed + 4)
        train_sft(model, tok, mix, SFTSpec(steps=c.base_steps, batch_size=lab.batch_size, lr=c.base_lr, seed=lab.seed + 4), desc="opcod base (context + feedback)")
        save_model_folder(model, tok, cached, {"scenario": "opcod", "role": "base", "init": "stage1"})
    return cached


PREFLIGHT_KEYS = ("preflight_prompts", "preflight_samples", "gate_min_pass")  # measure, build nothing
LATER_KEYS = {"specialise_wrong_hints": 0.0, "specialise_seed": 0, "specialise_write_other": 0.0, "specialise_leaky_hints": 0.0}  # added later: left out of the key at these values


def scenario_dir(lab: DictConfig, root: Path) -> Path:
    """The scenario's folder: keyed by its settings, less the pre-flight's (which builds nothing), and
    less the settings added later while they are at the value that builds what came before (so
    the folders of recorded builds stay theirs)."""
    return root / f"opcod-{settings_digest(lab.opcod, drop=PREFLIGHT_KEYS, later=LATER_KEYS, length=8)}"


def preflight_current(recorded: dict | None, c: DictConfig) -> bool:
    """Whether a manifest's recorded pre-flight was measured as ``lab.opcod`` now asks: with the
    feedback diagnostics, the same gate, and as many prompts and samples.  Why: these settings
    build nothing, so changing one re-measures the same models (seconds), and a verdict read at
    another sample size must not stand in for this one's."""
    if not recorded or "feedback_right" not in (recorded.get("rows") or [{}])[0]:
        return False  # built before the check, or before its feedback diagnostics
    asked = recorded.get("prompts_asked", recorded.get("prompts_per_domain"))  # a domain may hold fewer than asked
    return (recorded.get("gate_min_pass", 0.5) == c.gate_min_pass and recorded.get("samples") == int(c.preflight_samples)
            and asked == int(c.preflight_prompts))


SHOWN: set[Path] = set()  # scenario folders whose pre-flight table this process has printed (``lab build`` prints it once)


def measure_preflight(lab: DictConfig, out: Path, **options: Any) -> dict:
    """The pre-flight's measurement on the peers built in ``out``, as ``lab.opcod`` asks for it;
    ``options`` (``feedback_tokens``, ``anchoring``) go to ``opcod_preflight`` as they are, so a
    probe with longer or unanchored hints (``benchmarks/opcod_leaks.py``) measures the same way."""
    from mopdx_lab.opcod_preflight import opcod_preflight

    c = lab.opcod
    evals = load_prompts(out / "eval.jsonl")  # written by build_opcod before it runs the check, on either path
    examples = [e for d in c.domains for e in [x for x in evals if x.domain == d][: int(c.preflight_prompts)]]
    peers = {f"peer_{d}": (load_model(out / f"peer_{d}"), load_tokenizer(out / f"peer_{d}")) for d in c.domains}
    result = opcod_preflight(peers, {f"peer_{d}": d for d in c.domains}, examples, lab_templates(c), samples=int(c.preflight_samples),
                             max_new_tokens=int(lab.max_new_tokens), seed=int(lab.seed), gate_min_pass=float(c.gate_min_pass),
                             reference=anchored_steps, **options)
    result["prompts_asked"] = int(c.preflight_prompts)
    return result


def run_preflight(lab: DictConfig, root: Path, out: Path) -> dict:
    """The pre-flight check on the built peers (``mopdx_lab.opcod_preflight``), warned about when not ready."""
    from mopdx_lab.opcod_preflight import preflight_table

    result = measure_preflight(lab, out)
    table = preflight_table(result)
    print(f"\nOPCoD scenario pre-flight ({out}):\n{table}")
    SHOWN.add(out.resolve())
    if not result["ready"]:
        log.warning("the OPCoD scenario is NOT READY: its privileged contexts do not make the peers' teachers better (see the table above); "
                    "a table run on it measures the lab, not OPCoD")
    return result


def opcod_path(scenario_dir: Path, name: str) -> Path:
    """Path of artifact ``name`` (``opcod/<x>``) inside the built scenario folder."""
    sub = name.split("/", 1)[1]
    return scenario_dir / (f"{sub}.jsonl" if sub in ("train", "eval") else sub)
