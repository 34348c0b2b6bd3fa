"""OPCoD: on-policy co-distillation of two peers through gated, anchored peer feedback.

Run: ``python -m mopdx fit --strategy opcod`` (the lab's two-peer scenario,
``mopdx_lab/opcod.py``, is built on first use).

Two trainable peers, each stronger in a different domain, train on prompts of
both domains.  Each peer self-distils: its teacher is itself reading a
privileged context (its own correct rollout when it has one, plus the other
peer's feedback), its student is itself on the plain prompt.  The loop
(``mopdx.codistill.module``) samples, grades and trains; this strategy decides
the context through the co-distillation hooks (``mopdx.codistill.contract``):
feedback is given only when the giver's own rollouts on the prompt pass the
verifier (cognizance gating), and is stripped of the final answer (anchoring).
Every step mixes both domains (``data.domain_ratios``).

Controls (``compare --scenario opcod``): ``strategy.feedback=false`` (plain
self-distillation with the own solution, the OPSD / SDPO setting),
``codistill.feedback_source=self`` (the peer's own feedback) or ``=shuffled``
(the other's, moved to other prompts), ``strategy.gating=false``,
``strategy.anchoring=false``, ``codistill.teacher=peer`` (one-way MOPD from the
other peer's initial weights); domain-routed MOPD (each domain taught by the initial
peer strong at it) is a plain MOPD run (``compare --scenario opcod_routed``).
Teacher weights (``compare --scenario opcod_teachers``):
``codistill.teacher=current|ema|refreshed`` with ``codistill.ema_decay`` /
``codistill.refresh_every``.  Also ``strategy.use_solution=false`` and
``codistill.divergence=jsd codistill.jsd_alpha=0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from mopdx.codistill.contract import CoDistillStrategy
from mopdx.codistill.privileged import anchor_feedback, gate
from mopdx.rules import BOOL, number, setting
from mopdx.strategy import StrategyConfig
from mopdx.verifiers import Verifier


@dataclass
class OPCoDConfig(StrategyConfig):
    """What OPCoD decides; the loop's settings (peers, teacher copy, divergence) are ``codistill.*``."""

    name: str = "opcod"
    use_solution: bool = setting(True, BOOL)  # own correct rollout in the teacher context
    feedback: bool = setting(True, BOOL)  # peer feedback in the teacher context
    gating: bool = setting(True, BOOL)  # cognizance gating of feedback
    gate_min_pass: float = setting(0.5, number(0, 1, note="share of the giver's rollouts that must pass"))  # share of the giver's rollouts on the prompt that must pass
    anchoring: bool = setting(True, BOOL)  # strip the final answer from feedback


class OPCoDStrategy(CoDistillStrategy):
    """Two peers co-distilling; mixed-domain prompt batches."""

    name = "opcod"
    Config = OPCoDConfig

    def __init__(self, cfg: DictConfig, domains: list[str]) -> None:
        super().__init__(cfg, domains)
        self.uses_solution = bool(cfg.strategy.use_solution)
        self.uses_feedback = bool(cfg.strategy.feedback)

    def gives_feedback(self, correct: Sequence[bool]) -> bool:
        s = self.cfg.strategy
        return not s.gating or gate(correct, s.gate_min_pass)

    def clean_feedback(self, text: str, answer: str, verifier: Verifier) -> tuple[str, bool]:
        """Anchored feedback and whether it leaked.  With anchoring off the text passes as written,
        and the leak is still *measured*: the leak rate is how that control shows its shortcut, so
        reporting 0 there (as before session 17) hid exactly what the control is for."""
        if not self.cfg.strategy.anchoring:
            return text, verifier.leaks(text, answer)
        return anchor_feedback(text, answer, verifier.leaks)
