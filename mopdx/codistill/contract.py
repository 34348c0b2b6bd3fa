"""The contract of a co-distillation strategy: which hooks the two-peer loop calls.

A co-distillation strategy (``loop = "codistill"``) is run by
``mopdx.codistill.module.CoDistillModule``.  Of the base ``Strategy`` hooks
the loop uses ``plan`` (the step's prompt pool), ``metrics``, ``state_dict``
and ``load_state_dict``; ``select`` is not called (every rollout of both peers
enters the loss).  On top, it calls the hooks below, which decide what the
privileged teacher context holds:

* ``gives_feedback(correct)`` -- may a peer give feedback on a prompt, given
  its own rollouts' verdicts there (cognizance gating)?
* ``clean_feedback(text, answer, verifier)`` -- the feedback to pass on and
  whether it leaked the answer (anchoring);
* ``uses_solution`` / ``uses_feedback`` -- which parts enter the context;
* ``teacher_context(prompt, solution, feedback)`` -- the teacher-side prompt
  (the plain prompt when the teacher is the other peer, one-way MOPD).

The loop's own settings (peers, divergence, teacher copy, templates) are the
``codistill`` node (:class:`mopdx.codistill.settings.CoDistillConfig`); a
strategy's ``Config`` holds only what the strategy decides.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from mopdx.codistill.privileged import teacher_context
from mopdx.codistill.settings import PLAIN_TEACHERS, check_codistill, templates_of
from mopdx.strategy import Strategy
from mopdx.verifiers import Verifier


class CoDistillStrategy(Strategy):
    """Base of co-distillation strategies: feedback always given and passed on as written."""

    loop = "codistill"
    uses_solution = True
    uses_feedback = True

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """The loop's own settings (the ``codistill`` node); a subclass checks its ``strategy`` fields after calling this."""
        check_codistill(cfg)

    def __init__(self, cfg: DictConfig, domains: list[str]) -> None:
        super().__init__(cfg, domains)
        self.templates = templates_of(cfg.codistill)

    def gives_feedback(self, correct: Sequence[bool]) -> bool:
        """Whether a peer whose rollouts on a prompt scored ``correct`` may give feedback on it."""
        return True

    def clean_feedback(self, text: str, answer: str, verifier: Verifier) -> tuple[str, bool]:
        """The feedback to pass on (empty: drop it) and whether it leaked the answer."""
        return text, False

    @property
    def reads_context(self) -> bool:
        """False for the one-way MOPD control: a frozen peer teaches on the plain prompt."""
        return self.cfg.codistill.teacher not in PLAIN_TEACHERS

    def teacher_context(self, prompt: str, solution: str | None, feedback: str | None) -> str:
        """The teacher-side prompt: the plain prompt plus whatever privileged parts exist."""
        if not self.reads_context:
            return prompt
        return teacher_context(prompt, solution if self.uses_solution else None, feedback if self.uses_feedback else None, self.templates)
