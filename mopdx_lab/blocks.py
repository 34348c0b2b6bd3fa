"""The lab's multi-turn models: the student and each domain teacher, taught the ``lab_blocks`` episode format.

Why: the lab's models learned single-turn traces; put in a ``lab_blocks`` episode (one block
per turn, the oracle's ``next`` in between) they write the whole trace in the first turn and
the episode ends there.  A multi-turn run on them would measure how fast the student learns
a format, and its teachers would prefill episodes they cannot read.  So each model here is
its source taught the format, by SFT on single-turn traces (the format the single-turn arm
trains on, kept) and the same traces cut into the episode an always-``next`` oracle would
hold (one SFT example per turn, the earlier turns as chat context, under the episode's system
prompt: without it the first turn is the single-turn prompt itself, and the model learned a
mix of the two formats, 0.2-0.5 of its episodes well formed after 275 steps):

- ``blocks/student`` from Stage 1, on its **own** T = 1 samples, right and wrong (its
  distribution, not the verifier's: the format is taught, not the skill), stopped once it
  writes the format: ``lab.blocks.formed`` of its check episodes are ``BLOCKS`` well-formed
  turns (``BlockFormat``, whatever the digits).
- ``blocks/teacher_<d>`` from ``teacher/<d>``, on its own single-turn samples and the
  **reference** episodes of its domain (a teacher is the expert of the format too), stopped
  once its episode reward on the check prompts reaches ``lab.blocks.teacher_reward``.

Both are measured every ``lab.blocks.check_every`` steps on the check prompts, sampled as a
run evaluates (``lab_blocks``, T = 1); ``lab.blocks.steps`` is a ceiling.  Then the scenario
must be in the papers' regime by episode (``lab.regime``, as the lab is: the student's episode
reward at least ``min_student``, each teacher's ``min_gap`` above it, the student's initial
per-token KL to it on its own episodes inside ``[kl_min, kl_max]``), or the build stops with
one line.  The
manifest records, per model and domain, the source's accuracy on the same skill in one turn
(``BlockTrace``), the episode reward, and the single-turn accuracy before and after (what
the format cost the single-turn skill).

Artifacts (``lab:blocks/student``, ``lab:blocks/teacher_<d>``) live under
``<lab>/blocks-<hash of lab.blocks>``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from mopdx.backends.base import Sampling, ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.data import Example, load_prompts
from mopdx.envs.episodes import EpisodeSpec, run_episodes
from mopdx.models import load_model, load_tokenizer
from mopdx.sft import SFTLoop, SFTSpec
from mopdx_lab.artifacts import save_model_folder, settings_digest
from mopdx_lab.envs import BLOCKS, NEXT, SYSTEM, BlockFormat, BlockOracle, BlockTrace
from mopdx_lab.regime import DomainRegime, RegimeBounds
from mopdx_lab.samples import own_samples
from mopdx_lab.targets import Check, check_prompts


def blocks_dir(lab: DictConfig, root: Path) -> Path:
    return root / f"blocks-{settings_digest(lab.blocks, length=8)}"


def build_blocks(lab: DictConfig, root: Path, progress: bool = True) -> Path:
    """Build (or finish) the multi-turn student and one multi-turn teacher per lab domain inside ``root``."""
    from mopdx_lab.build import build_scenario

    out = blocks_dir(lab, root)
    return build_scenario(lab, out, lambda: _build(lab, root, out, progress))


def episode_spec(lab: DictConfig) -> EpisodeSpec:
    """The episode budgets the models are measured under; configs/experiment/blocks_lab.yaml's ``env`` node matches them."""
    return EpisodeSpec(max_turns=BLOCKS, max_tokens=int(lab.blocks.max_tokens))


def episode_examples(sample: Example) -> list[Example]:
    """``sample`` (a single-turn trace) as the SFT examples of the episode an always-``next`` oracle would hold:
    one per turn under the episode's system prompt, its block the answer, the earlier turns the context."""
    out: list[Example] = []
    context: tuple[tuple[str, str], ...] = ()
    prompt = sample.prompt
    for block in sample.answer.split()[:BLOCKS]:
        out.append(Example(sample.domain, prompt, block, system=SYSTEM, context=context))
        context = (*context, ("user", prompt), ("assistant", block))
        prompt = NEXT
    return out


def _build(lab: DictConfig, root: Path, out: Path, progress: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sources = {"student": ("stage1", list(lab.domains)), **{f"teacher_{d}": (f"teacher/{d}", [d]) for d in lab.domains}}
    manifest: dict[str, Any] = {"models": {}, "missed": []}
    for name, (source, domains) in sources.items():
        folder = out / name
        if not folder.is_dir():
            _teach_format(lab, root, source, domains, folder, progress, teacher=name != "student")
        info = json.loads((folder / "lab_info.json").read_text())
        if line := info["targets"]["missed"]:
            manifest["missed"].append(line)
        manifest["models"][name] = {k: info[k] for k in ("source", "steps", "one_turn", "episode", "formed", "single_turn")}
    student = manifest["models"]["student"]["episode"]
    bounds = RegimeBounds(**{k: float(v) for k, v in lab.regime.items()})
    manifest["regime"] = {}
    for d in lab.domains:
        regime = DomainRegime(d, episode_kl(lab, root, out / "student", out / f"teacher_{d}", d), student[d], manifest["models"][f"teacher_{d}"]["episode"][d])
        manifest["regime"][d] = {"kl": round(regime.kl, 4), "student": regime.student, "teacher": regime.teacher, "problems": regime.problems(bounds)}
        if regime.problems(bounds):
            manifest["missed"].append(f"blocks scenario outside the papers' regime on {d} (by episode, on the check prompts; lab.regime): "
                                      + "; ".join(regime.problems(bounds)))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


@torch.no_grad()
def episode_kl(lab: DictConfig, root: Path, student_dir: Path, teacher_dir: Path, domain: str) -> float:
    """The student's per-token KL(student || teacher) on its own T = 1 episodes of the domain's check prompts,
    over the student's tokens only: what a multi-turn run's first step logs as ``kl/<domain>``."""
    student, tok = load_model(student_dir), load_tokenizer(student_dir)
    prompts = [e for e in check_prompts(root) if e.domain == domain]
    rollouts, _, _ = run_episodes(HFRolloutBackend(student, tok.pad_token_id, tok.eos_token_id), tok, prompts, lambda e: BlockOracle(),
                                  Sampling(max_new_tokens=int(lab.max_new_tokens), seed=int(lab.seed)), episode_spec(lab))
    mine = HFTeacherScorer(student).score(rollouts, ScoreRequest()).logps
    theirs = HFTeacherScorer(load_model(teacher_dir)).score(rollouts, ScoreRequest()).logps
    mask = rollouts.completion_mask
    return float(((mine - theirs) * mask).sum() / mask.sum().clamp(min=1.0))


def _teach_format(lab: DictConfig, root: Path, source: str, domains: list[str], out: Path, progress: bool, teacher: bool) -> None:
    b = lab.blocks
    model, tok = load_model(root / "models" / source), load_tokenizer(root / "models" / source)
    check = Check.of(lab, [e for e in check_prompts(root) if e.domain in domains])
    spec = episode_spec(lab)
    one_turn = check.accuracy(model, tok, episodes=(lambda e: BlockTrace(), EpisodeSpec(max_turns=1, max_tokens=int(lab.max_new_tokens))))
    single_before = check.accuracy(model, tok)
    prompts = [e for e in load_prompts(root / "data" / "train.jsonl") if e.domain in domains]
    prompts = random.Random(int(lab.seed)).sample(prompts, min(int(b.prompts), len(prompts)))
    samples = own_samples(model, tok, prompts, int(b.group), int(lab.max_new_tokens), seed=int(lab.seed) + 13)
    episodes = prompts if teacher else samples  # the reference's episodes for a teacher, its own for the student
    data = [*samples, *(x for s in episodes for x in episode_examples(s))]
    loop = SFTLoop(model, tok, SFTSpec(steps=int(b.steps), batch_size=int(lab.batch_size), lr=float(b.lr), warmup=10, seed=int(lab.seed) + 13))
    target = float(b.teacher_reward if teacher else b.formed)
    what = "episode reward" if teacher else "well-formed episodes"
    checks: list[dict[str, Any]] = []
    bar = tqdm(total=int(b.steps), desc=f"blocks {out.name} ({what} >= {target:g})", leave=False, dynamic_ncols=True, disable=not progress)
    reached: dict[str, float] = {}
    while len(loop.losses) < int(b.steps):
        for _ in range(min(int(b.check_every), int(b.steps) - len(loop.losses))):
            loop.step(data)
            bar.update()
        formed = check.accuracy(model, tok, episodes=(lambda e: BlockFormat(), spec))
        episode = check.accuracy(model, tok, episodes=(lambda e: BlockOracle(), spec))
        reached = episode if teacher else formed
        checks.append({"step": len(loop.losses), "loss": round(sum(loop.losses[-20:]) / len(loop.losses[-20:]), 4), "formed": formed, "episode": episode})
        bar.set_postfix_str(" ".join(f"{d} {reached[d]:.3f}" for d in domains))
        if all(reached[d] >= target for d in domains):
            break
    bar.close()
    short = [d for d in domains if reached.get(d, 0.0) < target]
    key = "lab.blocks.teacher_reward" if teacher else "lab.blocks.formed"
    line = None if not short else (
        f"blocks/{out.name} after lab.blocks.steps={b.steps} SFT steps: {what} "
        + ", ".join(f"{d} {reached.get(d, 0.0):.3f}" for d in short) + f" < {key}={target:g} on the check prompts; raise lab.blocks.steps or change lab.blocks.lr")
    last = checks[-1] if checks else {"formed": {}, "episode": {}}
    info = {"scenario": "blocks", "source": source, "init": source, "domains": domains,
            "method": "SFT on the source's T = 1 samples, single-turn and cut into lab_blocks episodes" if not teacher else
                      "SFT on the source's T = 1 samples (single-turn) and the reference's lab_blocks episodes",
            "samples": len(samples), "steps": len(loop.losses), "checks": checks, "one_turn": one_turn,
            "episode": last["episode"], "formed": last["formed"],
            "single_turn": {"source": single_before, "after": check.accuracy(model, tok)},
            "targets": {"target": target, "missed": line}}
    save_model_folder(model, tok, out, info)
