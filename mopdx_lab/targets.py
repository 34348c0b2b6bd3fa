"""What a closed-loop lab stage measures, and the one line it stops with when a target is missed.

Why measured targets: a tiny model's Stage 1 escapes its loss plateau at a
step that is chaotic in float rounding, so a fixed step count or loss
threshold builds a lab inside the papers' regime on one CPU and outside it on
another (issue 37: 414 clean steps here, 691 on an AVX-512 Xeon, same hash).
What the methods need is a lab with the right *properties* -- a student that
errs at a known rate, teachers a real gap above it and close to it -- so each
stage trains until it measures them (``mopdx_lab.stage1``, ``mopdx_lab.stage2``)
on the held-out check prompts (``data/check.jsonl``), apart from both the
training prompts and the eval prompts the regime and every run are scored on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mopdx.backends.hf import HFRolloutBackend
from mopdx.config import EvalConfig
from mopdx.data import Example
from mopdx.errors import MopdxError
from mopdx.run.evaluation import accuracy_by_domain

log = logging.getLogger("mopdx")
FIX = "or set lab.allow_outside_regime=true to build on anyway"


class LabTargetMissed(MopdxError):
    """A closed-loop stage used its budget without reaching its target, or the built lab is outside
    the papers' regime: running a method on it would measure the lab, not the method."""


@dataclass(frozen=True)
class Check:
    """How a stage measures: ``prompts`` held-out prompts per domain, ``samples`` T = 1 samples each
    (greedy: one greedy completion), ``max_new_tokens`` the lab's answer length."""

    prompts: Sequence[Example]
    samples: int
    max_new_tokens: int
    seed: int = 0

    @classmethod
    def of(cls, lab: DictConfig, prompts: Sequence[Example]) -> Check:
        return cls(prompts, int(lab.targets.check_samples), int(lab.max_new_tokens), seed=int(lab.seed))

    def accuracy(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, greedy: bool = False,
                 domains: Sequence[str] | None = None, episodes: tuple[Callable[[Example], Any], Any] | None = None) -> dict[str, float]:
        """Per-domain verifier accuracy of ``model`` (sampled avg@``samples``, or greedy) on the check prompts;
        ``episodes`` (an environment factory and an ``EpisodeSpec``): the mean episode reward instead."""
        prompts = [e for e in self.prompts if domains is None or e.domain in domains]
        settings = EvalConfig(samples=1 if greedy else self.samples, greedy=greedy, max_new_tokens=self.max_new_tokens, seed=self.seed)
        backend = HFRolloutBackend(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
        was_training = model.training
        model.eval()
        try:
            return {d: round(a, 4) for d, a in accuracy_by_domain(backend, tokenizer, prompts, settings, episodes=episodes).items()}
        finally:
            model.train(was_training)


_WARNED: set[str] = set()


def missed(lab: DictConfig, line: str) -> None:
    """Stop the build with ``line`` (which names the target, the figure reached and what to change), or,
    under ``lab.allow_outside_regime``, warn and build on."""
    if lab.allow_outside_regime:
        if line not in _WARNED:  # every model a run resolves rechecks its artifact: say it once
            _WARNED.add(line)
            log.warning("LAB TARGET MISSED (lab.allow_outside_regime=true, building on): %s", line)
        return
    raise LabTargetMissed(f"lab target missed: {line}; {FIX}")


def recheck(lab: DictConfig, info: dict[str, Any]) -> None:
    """A finished artifact that missed its target when it was built (its ``lab_info.json``): stop again
    with the same line instead of training it again -- the artifact is kept, so
    ``lab.allow_outside_regime=true`` builds on from it."""
    line = (info.get("targets") or {}).get("missed")
    if line:
        missed(lab, line)


def figures(acc: dict[str, float]) -> str:
    """``inc 0.520, rot 0.710``: per-domain figures for a progress bar or a message."""
    return ", ".join(f"{d} {a:.3f}" for d, a in sorted(acc.items()))


def check_prompts(root: Path) -> list[Example]:
    """The held-out prompts a scenario's stage measures on: the lab's ``data/check.jsonl``.  An
    open-loop lab (``lab.targets.check_every=0``: the tests' tiny labs) has none; its scenarios
    measure on the eval prompts instead, which the closed-loop build keeps apart."""
    from mopdx.data import load_prompts

    path = root / "data" / "check.jsonl"
    return load_prompts(path if path.is_file() else root / "data" / "eval.jsonl")
